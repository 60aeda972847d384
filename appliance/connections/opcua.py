"""OPC-UA sessions shared by the OPC-UA input and PLC mitigation.

Both the input (subscriptions) and the mitigation output (guarded writes) talk to
the same PLC with the same endpoint, security and certificates; this module is
where that knowledge lives, so that neither plugin imports the other.

Security (Basic256Sha256, Sign or SignAndEncrypt): the client key and certificate
are generated once into ``client_cert_dir`` and reused; the server certificate
must be in ``trusted_server_certs`` (or be issued by a CA listed there), else the
connection is refused before any session is created.

:class:`PlcSession` is a read/write session of its own (the mitigation's PLC
port), separate from the ingest subscription so a write never waits behind it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from asyncua import Client, ua
from asyncua.crypto import cert_gen, security_policies
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.connections.config import OpcuaEndpointConfig
from appliance.core import Quality

logger = logging.getLogger(__name__)

CLIENT_KEY_FILE = "client_key.pem"
CLIENT_CERT_FILE = "client_cert.der"


class OpcuaSecurityError(Exception):
    """The connection cannot be made securely (untrusted server, missing endpoint)."""


class UntrustedServerCertificate(OpcuaSecurityError):
    pass


class _TransportNoiseFilter(logging.Filter):
    """Drops asyncua's tracebacks and warnings about a connection that is already gone.

    A PLC restart otherwise fills the log with stack traces from asyncua's publish
    loop and teardown; the connector logs the loss itself, once, with the reason.
    """

    _MESSAGES = ("was called but connection is closed", "close_session but connection wasn't established")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (ConnectionError, OSError, asyncio.TimeoutError)):
            return False
        msg = str(record.msg)
        return not any(m in msg for m in self._MESSAGES)


_NOISE_FILTER = _TransportNoiseFilter()
_NOISY_LOGGERS = ("asyncua.client.ua_session.UaSession", "asyncua.client.ua_client.UaClient",
                  "asyncua.client.ua_client.UASocketProtocol", "asyncua.client.client")


def quiet_asyncua() -> None:
    # asyncua logs every publish at INFO; unless the operator configured its
    # logger explicitly, keep it to warnings so a gateway's log stays readable.
    lg = logging.getLogger("asyncua")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.WARNING)
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if _NOISE_FILTER not in noisy.filters:
            noisy.addFilter(_NOISE_FILTER)


def _resolve(base_dir: Path | None, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() or base_dir is None else base_dir / q


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def quality_of(status: ua.StatusCode | None) -> Quality:
    """OPC-UA status code severity to the appliance's coarse quality."""
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def status_name(status: ua.StatusCode | None) -> str:
    if status is None:
        return "Good"
    try:
        return status.name
    except Exception:  # unknown vendor-specific code
        return f"0x{status.value:08X}"


def to_unix(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ts = dt.timestamp()
    # OPC-UA encodes "no timestamp" as the FILETIME epoch (1601).
    return ts if ts > 0 else None


# --------------------------------------------------------------------------- security


async def ensure_client_certificate(cert_dir: Path, application_uri: str) -> tuple[Path, Path]:
    """Create the client key and certificate once; later calls reuse them.

    A new certificate is only made when the files are missing or the existing
    one is invalid (expired, other application URI or host name), because the
    PLC's trust list holds this exact certificate: regenerating it on every
    start would lock the appliance out.
    """
    cert_dir.mkdir(parents=True, exist_ok=True)
    key_file, cert_file = cert_dir / CLIENT_KEY_FILE, cert_dir / CLIENT_CERT_FILE
    before = cert_file.read_bytes() if cert_file.is_file() else None
    await cert_gen.setup_self_signed_certificate(
        key_file, cert_file, application_uri, socket.gethostname(),
        [ExtendedKeyUsageOID.CLIENT_AUTH], {"organizationName": "edge-anomaly-appliance"})
    os.chmod(key_file, 0o600)
    after = cert_file.read_bytes()
    if before != after:
        cert = x509.load_der_x509_certificate(after)
        logger.warning("opcua client certificate generated path=%s sha256=%s uri=%s "
                       "(add it to the PLC's trusted clients)", cert_file, fingerprint(cert), application_uri)
    return cert_file, key_file


def _load_cert_file(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def load_trust_list(paths: Sequence[str], base_dir: Path | None = None) -> list[x509.Certificate]:
    """Certificates from files and directories (``*.der``, ``*.pem``, ``*.crt``)."""
    certs: list[x509.Certificate] = []
    for p in paths:
        path = _resolve(base_dir, p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".der", ".pem", ".crt"))
        elif path.is_file():
            files = [path]
        else:
            raise OpcuaSecurityError(f"trusted server certificate {path} does not exist")
        for f in files:
            try:
                certs.extend(_load_cert_file(f))
            except ValueError as e:
                raise OpcuaSecurityError(f"trusted server certificate {f} is not a DER/PEM certificate: {e}") \
                    from None
    return certs


def check_server_certificate(der: bytes | None, trusted: Sequence[x509.Certificate]) -> x509.Certificate:
    """Return the server certificate if it is trusted, else raise :class:`UntrustedServerCertificate`.

    Trusted means: byte-identical to a listed certificate (the usual self-signed
    PLC certificate), or directly issued by a listed CA certificate; and inside
    its validity period either way.
    """
    if not der:
        raise UntrustedServerCertificate("server presented no certificate")
    # Some servers send a chain; the leaf comes first.
    cert_len = int.from_bytes(der[2:4], "big") + 4
    cert = x509.load_der_x509_certificate(der[:cert_len])
    now = datetime.now(timezone.utc)
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise UntrustedServerCertificate(
            f"server certificate sha256={fingerprint(cert)} is outside its validity period "
            f"({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})")
    for t in trusted:
        if t == cert:
            return cert
    for ca in trusted:
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:  # noqa: BLE001 - wrong issuer name, key type or signature: not this CA
            continue
        return cert
    raise UntrustedServerCertificate(
        f"server certificate sha256={fingerprint(cert)} subject={cert.subject.rfc4514_string()} is not "
        "trusted; after checking it on the PLC, add it to trusted_server_certs")


async def open_client(cfg: OpcuaEndpointConfig, base_dir: Path | None = None, *,
                      probe_interval_s: float = 5.0, on_lost=None) -> Client:
    """A connected, activated asyncua client for ``cfg``; the caller must ``disconnect()`` it.

    With security on, the server certificate is fetched over an unsecured
    discovery channel, checked against the trust list, and pinned: asyncua then
    refuses a secure channel or session whose certificate differs from it.
    """
    client = Client(cfg.endpoint, timeout=cfg.request_timeout_s, watchdog_intervall=probe_interval_s,
                    auto_reconnect=False)
    client.name = client.description = "edge-anomaly-appliance"
    client.application_uri = cfg.application_uri
    client.product_uri = "urn:edge-anomaly-appliance"
    client.session_timeout = int(cfg.session_timeout_s * 1000)
    if cfg.username is not None:
        client.set_user(cfg.username)
        client.set_password(cfg.password or "")
    if on_lost is not None:
        client.connection_lost_callback = on_lost
    if cfg.security_policy != "None":
        policy = getattr(security_policies, f"SecurityPolicy{cfg.security_policy}")
        mode = getattr(ua.MessageSecurityMode, cfg.security_mode)
        cert_file, key_file = await ensure_client_certificate(
            _resolve(base_dir, cfg.client_cert_dir), cfg.application_uri)
        trusted = load_trust_list(cfg.trusted_server_certs, base_dir)
        endpoints = await client.connect_and_get_server_endpoints()
        try:
            endpoint = Client.find_endpoint(endpoints, mode, policy.URI)
        except ua.UaError:
            raise OpcuaSecurityError(f"server {cfg.endpoint} offers no {cfg.security_policy}/"
                                     f"{cfg.security_mode} endpoint") from None
        server_cert = check_server_certificate(endpoint.ServerCertificate, trusted)
        await client.set_security(policy, str(cert_file), str(key_file),
                                  server_certificate=server_cert.public_bytes(Encoding.DER), mode=mode)
    try:
        await client.connect()
    except BaseException:
        await close_client(client, timeout=cfg.request_timeout_s)
        raise
    return client


async def close_client(client: Client, timeout: float = 4.0) -> None:
    """CloseSession (deleting its subscriptions), then the channel and socket; never raises.

    The session is closed first so the server frees it now rather than after
    the session timeout: this is what keeps sessions from piling up.
    """
    try:
        await asyncio.wait_for(client.disconnect(), timeout)
    except (Exception, asyncio.TimeoutError) as e:  # noqa: BLE001 - teardown of a dead peer may fail any way
        logger.debug("opcua close_client error=%r", e)
        try:
            client.disconnect_socket()
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------- connector


_VARIANT_CAST: dict[ua.VariantType, Any] = {
    ua.VariantType.Boolean: lambda v: bool(v),
    ua.VariantType.Float: float,
    ua.VariantType.Double: float,
    **{t: (lambda v: int(round(v))) for t in (
        ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
        ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64)},
}

# What a node without an EURange can hold, by data type (a Double's range is no limit at all).
_TYPE_RANGES: dict[ua.VariantType, tuple[float, float]] = {
    ua.VariantType.Boolean: (0.0, 1.0),
    ua.VariantType.Float: (-3.4028234663852886e38, 3.4028234663852886e38),
    ua.VariantType.SByte: (-2.0 ** 7, 2.0 ** 7 - 1), ua.VariantType.Byte: (0.0, 2.0 ** 8 - 1),
    ua.VariantType.Int16: (-2.0 ** 15, 2.0 ** 15 - 1), ua.VariantType.UInt16: (0.0, 2.0 ** 16 - 1),
    ua.VariantType.Int32: (-2.0 ** 31, 2.0 ** 31 - 1), ua.VariantType.UInt32: (0.0, 2.0 ** 32 - 1),
    ua.VariantType.Int64: (-2.0 ** 63, 2.0 ** 63 - 1), ua.VariantType.UInt64: (0.0, 2.0 ** 64 - 1),
}


class PlcError(Exception):
    """A PLC read or write failed (transport, session or a bad status code)."""


class PlcSession:
    """A read/write OPC-UA session to the PLC (the mitigation's ``PlcPort``).

    Separate from the ingest connection so a mitigation never waits behind (or
    disturbs) the subscription. Connects lazily; after a failure the session is
    closed and the next call reconnects once. Writes are absolute values, so
    that single retry cannot apply a change twice.
    """

    def __init__(self, cfg: OpcuaEndpointConfig, base_dir: str | Path | None = None):
        quiet_asyncua()
        self.cfg = cfg
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self._vtypes: dict[str, ua.VariantType] = {}

    async def _connected(self) -> Client:
        if self._client is not None and self._client.uaclient.state.name == "CONNECTED":
            return self._client
        if self._client is not None:
            await close_client(self._client, self.cfg.request_timeout_s)
            self._client = None
        self._client = await asyncio.wait_for(open_client(self.cfg, self.base_dir),
                                              self.cfg.request_timeout_s * 3)
        return self._client

    async def _with_retry(self, op):
        async with self._lock:
            last: Exception | None = None
            for attempt in (1, 2):
                try:
                    return await op(await self._connected())
                except ua.UaStatusCodeError as e:
                    # A node-level refusal (BadOutOfRange, BadUserAccessDenied...) is an answer, not an outage.
                    if e.code in (ua.StatusCodes.BadSessionIdInvalid, ua.StatusCodes.BadSessionClosed,
                                  ua.StatusCodes.BadSessionNotActivated, ua.StatusCodes.BadSecureChannelClosed):
                        last = e
                    else:
                        raise PlcError(f"{type(e).__name__}: {e}") from None
                except (OSError, asyncio.TimeoutError, ConnectionError, ua.UaError) as e:
                    last = e
                if self._client is not None:
                    await close_client(self._client, self.cfg.request_timeout_s)
                    self._client = None
                logger.info("opcua writer retrying attempt=%d error=%r", attempt, last)
            raise PlcError(f"PLC unreachable at {self.cfg.endpoint}: {last!r}")

    async def read(self, nodes: Sequence[str]) -> list[tuple[float | None, Quality]]:
        """Current value and quality of each node, in one Read request."""
        async def op(client: Client):
            dvs = await client.read_attributes([client.get_node(n) for n in nodes])
            out: list[tuple[float | None, Quality]] = []
            for n, dv in zip(nodes, dvs):
                q = quality_of(dv.StatusCode)
                v = dv.Value.Value if dv.Value is not None else None
                if dv.Value is not None and dv.Value.VariantType in _VARIANT_CAST:
                    self._vtypes[n] = dv.Value.VariantType
                if isinstance(v, bool):
                    v = 1.0 if v else 0.0
                elif isinstance(v, (int, float)):
                    v = float(v)
                else:
                    v, q = None, Quality.BAD
                out.append((v, q))
            return out
        return await self._with_retry(op)

    async def write(self, node: str, value: float) -> None:
        """Write ``value`` with the node's own data type; raise :class:`PlcError` if refused."""
        async def op(client: Client):
            n = client.get_node(node)
            vtype = self._vtypes.get(node)
            if vtype is None:
                vtype = (await n.read_data_value()).Value.VariantType
                if vtype not in _VARIANT_CAST:
                    raise PlcError(f"{node} has data type {vtype.name}, not a number or boolean")
                self._vtypes[node] = vtype
            dv = ua.DataValue(ua.Variant(_VARIANT_CAST[vtype](value), vtype))
            await n.write_value(dv)
        await self._with_retry(op)

    async def declared_range(self, node: str) -> tuple[float, float] | None:
        """The range the PLC declares for ``node``: its ``EURange`` property, else its data type's, else None."""
        async def op(client: Client):
            n = client.get_node(node)
            try:
                rng = await (await n.get_child("0:EURange")).read_value()
                return float(rng.Low), float(rng.High)
            except ua.UaStatusCodeError:  # no EURange property: the data type's own limits, if finite
                vtype = (await n.read_data_value()).Value.VariantType
                return _TYPE_RANGES.get(vtype)
        return await self._with_retry(op)

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                await close_client(self._client, self.cfg.request_timeout_s)
                self._client = None
