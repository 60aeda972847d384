"""OPC-UA security: Basic256Sha256 Sign/SignAndEncrypt, certificate kept, server trust list."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config import OpcuaInputConfig, OpcuaNode
from appliance.connectors.opcua import (CLIENT_CERT_FILE, OpcuaConnector, UntrustedServerCertificate,
                                        check_server_certificate, ensure_client_certificate)
from asyncua.crypto import cert_gen
from tests.support.plc import PASSWORD, USER, PlcSim, wait_for
from tests.test_opcua_connector import MemorySink

NODES = (OpcuaNode(node="ns=2;s=Pump1.Current", asset="pump1", sensor="Current"),
         OpcuaNode(node="ns=2;s=Pump1.Accelerometer1RMS", asset="pump1", sensor="Accelerometer1RMS"))


def secure_cfg(plc: PlcSim, mode: str, trusted) -> OpcuaInputConfig:
    return OpcuaInputConfig(enabled=True, endpoint=plc.endpoint, username=USER, password=PASSWORD,
                            security_policy="Basic256Sha256", security_mode=mode,
                            trusted_server_certs=tuple(str(t) for t in trusted),
                            sampling_interval_ms=100, publishing_interval_ms=100, watchdog_s=3.0, nodes=NODES)


def self_signed(tmp_path, name: str, uri: str = "urn:impostor"):
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH])
    path = tmp_path / f"{name}.der"
    path.write_bytes(cert.public_bytes(Encoding.DER))
    return key, cert, path


@pytest.fixture(scope="module")
def secure_plc(tmp_path_factory):
    sim = PlcSim(tmp_path_factory.mktemp("plc"), security="sign,signandencrypt").start()
    yield sim
    sim.stop()


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
def test_secure_connection_works_and_client_certificate_is_kept(secure_plc, tmp_path, mode):
    cert_file = tmp_path / "pki" / "client" / CLIENT_CERT_FILE

    async def one_run():
        sink = MemorySink()
        conn = OpcuaConnector(secure_cfg(secure_plc, mode, [secure_plc.server_cert]), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_for(lambda: len(sink.of("Current")) >= 3, what=f"readings over {mode}")
            assert conn.status()["security"] == f"Basic256Sha256/{mode}"
        finally:
            await conn.stop()

    asyncio.run(one_run())
    first = cert_file.read_bytes()
    mtime = cert_file.stat().st_mtime_ns
    assert (tmp_path / "pki" / "client" / "client_key.pem").stat().st_mode & 0o077 == 0
    # A second start (the appliance restarting) reuses the same certificate the PLC may have pinned.
    asyncio.run(one_run())
    assert cert_file.read_bytes() == first and cert_file.stat().st_mtime_ns == mtime


def test_untrusted_server_certificate_is_refused(secure_plc, tmp_path):
    _, _, other = self_signed(tmp_path, "some-other-plc")
    sink = MemorySink()

    async def run():
        conn = OpcuaConnector(secure_cfg(secure_plc, "SignAndEncrypt", [other]), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_for(lambda: conn.status()["counters"].get("untrusted_server_cert", 0) >= 2,
                           what="refusals")
            st = conn.status()
            assert not st["connected"] and "not trusted" in st["last_error"]
            assert st["counters"].get("sessions_opened", 0) == 0
            assert await secure_plc.session_count() == 0
        finally:
            await conn.stop()

    asyncio.run(run())
    assert sink.count() == 0


def test_plc_that_trusts_only_known_clients(tmp_path):
    """The simulator's client trust list: refused until the appliance's certificate is installed."""
    trusted_dir = tmp_path / "trusted-clients"
    trusted_dir.mkdir()
    plc = PlcSim(tmp_path / "plc", security="signandencrypt",
                 extra_args=("--trusted-clients", str(trusted_dir))).start()
    sink = MemorySink()

    async def run(expect_data: bool):
        conn = OpcuaConnector(secure_cfg(plc, "SignAndEncrypt", [plc.server_cert]), base_dir=tmp_path)
        await conn.start(sink)
        try:
            if expect_data:
                await wait_for(lambda: sink.count() >= 3, what="readings once trusted")
            else:
                await wait_for(lambda: conn.status()["counters"].get("connect_failures", 0) >= 1,
                               what="refusal by the PLC")
                assert "BadCertificateUntrusted" in conn.status()["last_error"]
        finally:
            await conn.stop()

    try:
        asyncio.run(run(False))
        assert sink.count() == 0
        shutil.copy(tmp_path / "pki" / "client" / CLIENT_CERT_FILE, trusted_dir / "appliance.der")
        plc.restart(0.1, hard=False)
        asyncio.run(run(True))
    finally:
        plc.stop()


def test_trust_by_ca_validity_and_identity():
    ca_key = cert_gen.generate_private_key()
    ca = cert_gen.generate_self_signed_app_certificate(ca_key, "plant-ca", {}, [], extended=[])
    srv_key = cert_gen.generate_private_key()
    now = dt.datetime.now(dt.timezone.utc)

    def issued(not_before, not_after, issuer_key=ca_key, issuer=ca):
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plc")]))
                .issuer_name(issuer.subject).public_key(srv_key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(not_before)
                .not_valid_after(not_after).sign(issuer_key, hashes.SHA256()))

    good = issued(now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    der = good.public_bytes(Encoding.DER)
    assert check_server_certificate(der, [ca]) == good          # issued by a trusted CA
    assert check_server_certificate(der, [good]) == good        # pinned directly
    other_key = cert_gen.generate_private_key()
    other_ca = cert_gen.generate_self_signed_app_certificate(other_key, "plant-ca", {}, [], extended=[])
    with pytest.raises(UntrustedServerCertificate, match="not trusted"):
        check_server_certificate(der, [other_ca])               # same CA name, different key
    expired = issued(now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    with pytest.raises(UntrustedServerCertificate, match="validity"):
        check_server_certificate(expired.public_bytes(Encoding.DER), [ca])
    with pytest.raises(UntrustedServerCertificate):
        check_server_certificate(None, [ca])


def test_client_certificate_generated_once(tmp_path):
    async def run():
        c1, k1 = await ensure_client_certificate(tmp_path, "urn:a")
        b1 = c1.read_bytes()
        c2, _ = await ensure_client_certificate(tmp_path, "urn:a")
        assert c2.read_bytes() == b1
        # A different application URI makes the old certificate invalid for this client: new one.
        c3, _ = await ensure_client_certificate(tmp_path, "urn:b")
        assert c3.read_bytes() != b1
        assert "urn:b" in x509.load_der_x509_certificate(c3.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)

    asyncio.run(run())
