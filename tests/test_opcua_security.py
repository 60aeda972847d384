"""OPC-UA security: Basic256Sha256 Sign/SignAndEncrypt, certificate kept, server trust list."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.connections.config import OpcuaEndpointConfig
from appliance.connections.opcua import CLIENT_CERT_FILE
from appliance.connectors.opcua.config import OpcuaInputConfig, OpcuaNode
from appliance.connectors.opcua.connector import OpcuaConnector
from asyncua.crypto import cert_gen
from tests.support.fakes import MemorySink
from tests.support.plc import PASSWORD, USER, PlcSim
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration  # PLC simulators with security on

NODES = (OpcuaNode(node="ns=2;s=Pump1.Current", asset="pump1", sensor="Current"),
         OpcuaNode(node="ns=2;s=Pump1.Accelerometer1RMS", asset="pump1", sensor="Accelerometer1RMS"))


def secure_cfg(plc: PlcSim, mode: str, trusted) -> tuple[OpcuaInputConfig, OpcuaEndpointConfig]:
    return (OpcuaInputConfig(enabled=True, sampling_interval_ms=100, publishing_interval_ms=100, watchdog_s=3.0,
                             nodes=NODES),
            OpcuaEndpointConfig(endpoint=plc.endpoint, username=USER, password=PASSWORD,
                                security_policy="Basic256Sha256", security_mode=mode,
                                trusted_server_certs=tuple(str(t) for t in trusted)))


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
        conn = OpcuaConnector(*secure_cfg(secure_plc, mode, [secure_plc.server_cert]), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_until_async(lambda: len(sink.of("Current")) >= 3, what=f"readings over {mode}")
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
        conn = OpcuaConnector(*secure_cfg(secure_plc, "SignAndEncrypt", [other]), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_until_async(lambda: conn.status()["counters"].get("untrusted_server_cert", 0) >= 2,
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
        conn = OpcuaConnector(*secure_cfg(plc, "SignAndEncrypt", [plc.server_cert]), base_dir=tmp_path)
        await conn.start(sink)
        try:
            if expect_data:
                await wait_until_async(lambda: sink.count() >= 3, what="readings once trusted")
            else:
                await wait_until_async(lambda: conn.status()["counters"].get("connect_failures", 0) >= 1,
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
