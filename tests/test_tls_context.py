"""The one client TLS context (appliance/connections/tls.py) and how its users name a file it cannot load."""

from __future__ import annotations

import ssl

import pytest

from appliance.connections.config import MqttBroker
from appliance.connections.mqtt import build_tls_context
from appliance.connections.tls import TlsFileError, client_context
from appliance.settings import TlsConfig
from appliance.sync.config import SyncConfig
from appliance.sync.uplink import SyncError, build
from tests.support.cloud import plugin_env


def test_a_context_verifies_the_chain_and_the_host_name_over_tls_1_2_at_least():
    ctx = client_context()
    assert (ctx.verify_mode, ctx.check_hostname, ctx.minimum_version) == (ssl.CERT_REQUIRED, True,
                                                                        ssl.TLSVersion.TLSv1_2)


def test_only_a_brokers_insecure_skip_verify_switches_verification_off():
    assert build_tls_context(TlsConfig(enabled=True)).verify_mode == ssl.CERT_REQUIRED
    insecure = build_tls_context(TlsConfig(enabled=True, insecure_skip_verify=True))
    assert (insecure.verify_mode, insecure.check_hostname) == (ssl.CERT_NONE, False)


@pytest.mark.parametrize("files, key", [({"ca_file": "missing-ca.pem"}, "ca_file"),
                                        ({"cert_file": "missing.pem", "key_file": "missing.key"},
                                         "cert_file/key_file"),
                                        ({"key_file": "client.key"}, "cert_file")])
def test_a_file_that_cannot_be_loaded_is_one_line_naming_the_key(tmp_path, files, key):
    files = {k: str(tmp_path / v) for k, v in files.items()}
    with pytest.raises(TlsFileError) as e:
        build_tls_context(MqttBroker(tls=TlsConfig(enabled=True, **files)).tls)
    assert str(e.value).startswith(f"broker.tls.{key}: ") and "\n" not in str(e.value)


def test_the_model_repositorys_ca_file_is_named_as_the_sync_section_key(tmp_path):
    section = SyncConfig.model_validate({"enabled": True, "updates": {
        "enabled": True, "source": "https://repo.example/models", "ca_file": str(tmp_path / "missing-ca.pem")}})
    with pytest.raises(SyncError, match=r"^outputs\.sync\.updates\.ca_file: cannot load .*missing-ca\.pem"):
        build(section, plugin_env(tmp_path / "store.db", tmp_path))
