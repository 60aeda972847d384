"""A simulated PLC: an OPC-UA server running the pump model of ``pump.py``.

Address space (namespace ``urn:edge-anomaly-appliance:plc-sim:pumpline``, index 2)::

    0:Objects/2:PumpLine/2:Pump1/
        2:Accelerometer1RMS ... 2:Volume Flow RateRMS   sensors, ns=2;s=Pump1.<sensor>   (read-only)
        2:Running        Boolean   pump running                                   (read-only)
        2:Speed          Double    actual speed, percent; ramps to the setpoint   (read-only)
        2:SpeedSetpoint  Double    percent 0..100, writable (clamped by the PLC)
        2:ValvePosition  Double    percent open 0..100, writable (clamped)
            (Speed, SpeedSetpoint and ValvePosition declare it in an ``0:EURange`` property)
        2:ActiveFault    String    injected fault, "" if none                     (read-only)
        2:Start() 2:Stop() 2:InjectFault(fault, severity) 2:ClearFaults()
        2:SetSensorStatus(sensor, status)   e.g. "BadSensorFailure", "UncertainLastUsableValue", "Good"
        2:Freeze(seconds)                   the scan halts: values stop changing, the server stays up
    0:Objects/2:Diagnostics/2:SessionCount  UInt32, sessions open on this server

Like a real PLC the scan clamps setpoints to their range and writes the clamped
value back, so a client's read-back sees what the process actually obeys.

Security: endpoints ``None``, ``Basic256Sha256`` Sign and SignAndEncrypt as
selected; the server key and certificate are generated once into ``--pki`` and
reused (clients pin it). ``--user NAME:PASSWORD`` turns anonymous access off.
``--trusted-clients DIR`` accepts only client certificates found there.

Test hook: SIGUSR1 closes every session on the server (clients then get
``BadSessionIdInvalid``/``BadSessionNotActivated``) - what a PLC does after a
program download or a session-table overflow.

Run: ``python firmware-sim/plc.py --port 4840`` or ``appliance-sim plc``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.common.utils import ServiceError
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

try:
    from .lifeline import watch_stdin_eof
    from .pump import SENSORS, PumpModel
except ImportError:  # run as a script: firmware-sim/ is sys.path[0]
    from lifeline import watch_stdin_eof  # type: ignore[no-redef]
    from pump import SENSORS, PumpModel  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

NAMESPACE_URI = "urn:edge-anomaly-appliance:plc-sim:pumpline"
APPLICATION_URI = "urn:edge-anomaly-appliance:plc-sim"
ENDPOINT_PATH = "/appliance/plc"
SERVER_KEY_FILE = "server_key.pem"
SERVER_CERT_FILE = "server_cert.der"

SECURITY_MODES = {
    "none": ua.SecurityPolicyType.NoSecurity,
    "sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "signandencrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}


class PasswordUserManager(UserManager):
    """Username/password accounts with the plain User role (read, write, call; no address-space admin)."""

    def __init__(self, users: dict[str, str]):
        self._users = dict(users)

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        logger.warning("plc login refused user=%r", username)
        return None


def _pinned_client_validator(directory: Path):
    """Accept exactly the client certificates found in ``directory`` (read at start), refuse all others."""
    trusted: set[bytes] = set()
    for f in sorted(directory.glob("*")):
        if f.suffix.lower() not in (".der", ".pem", ".crt"):
            continue
        data = f.read_bytes()
        certs = (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                 else [x509.load_der_x509_certificate(data)])
        trusted.update(c.fingerprint(hashes.SHA256()) for c in certs)
    logger.info("plc trusts %d client certificate(s) from %s", len(trusted), directory)

    async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        if cert.fingerprint(hashes.SHA256()) not in trusted:
            logger.warning("plc refused client certificate subject=%s uri=%s", cert.subject.rfc4514_string(),
                           app.ApplicationUri)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    return validate


class PlcSimulator:
    """The OPC-UA server plus the scan loop that runs the pump model."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4840, *, pki_dir: Path | None = None,
                 security: tuple[str, ...] = ("none",), users: dict[str, str] | None = None,
                 trusted_clients: Path | None = None, period_s: float = 0.1, ramp_pct_per_s: float = 50.0,
                 seed: int | None = None, speed_pct: float = 100.0, valve_pct: float = 100.0):
        self.host, self.port = host, port
        self.endpoint = f"opc.tcp://{host}:{port}{ENDPOINT_PATH}"
        self.pki_dir = pki_dir
        self.security = security
        self.users = users or {}
        self.trusted_clients = trusted_clients
        self.period_s = period_s
        self.ramp = ramp_pct_per_s
        self.model = PumpModel(seed=seed, speed=speed_pct / 100.0, valve=valve_pct / 100.0)
        self.running = True
        self.speed = speed_pct
        self.setpoint = speed_pct
        self.valve = valve_pct
        self.sensor_status: dict[str, ua.StatusCode] = {}
        self.frozen_until = 0.0
        self.server: Server | None = None
        self.nodes: dict[str, ua.NodeId] = {}
        self._scan_task: asyncio.Task | None = None

    # -- setup

    async def _certificates(self) -> tuple[Path, Path]:
        assert self.pki_dir is not None
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        key, cert = self.pki_dir / SERVER_KEY_FILE, self.pki_dir / SERVER_CERT_FILE
        # Generated once and reused: clients pin this certificate in their trust list.
        await cert_gen.setup_self_signed_certificate(
            key, cert, APPLICATION_URI, socket.gethostname(), [ExtendedKeyUsageOID.SERVER_AUTH],
            {"organizationName": "edge-anomaly-appliance"})
        key.chmod(0o600)
        return cert, key

    async def start(self) -> None:
        user_manager = PasswordUserManager(self.users) if self.users else None
        server = Server(user_manager=user_manager)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-anomaly-appliance PLC simulator")
        await server.set_application_uri(APPLICATION_URI)
        policies = [SECURITY_MODES[s] for s in self.security]
        server.set_security_policy(policies)
        if any(s != "none" for s in self.security):
            if self.pki_dir is None:
                raise SystemExit("--pki is required for Sign/SignAndEncrypt")
            cert, key = await self._certificates()
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        if self.trusted_clients is not None:
            server.set_certificate_validator(_pinned_client_validator(self.trusted_clients))
        server.set_identity_tokens([ua.UserNameIdentityToken] if self.users
                                   else [ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
        idx = await server.register_namespace(NAMESPACE_URI)
        await self._build_address_space(server, idx)
        # Computed on every read, so a client counting sessions never sees a stale scan value.
        server.set_attribute_value_callback(
            self.nodes["SessionCount"],
            lambda nodeid, attr: ua.DataValue(ua.Variant(self.session_count(), ua.VariantType.UInt32),
                                              SourceTimestamp=datetime.now(timezone.utc)))
        self.server = server
        # One scan before listening: no client ever sees the placeholder zeros.
        await self._step(self.period_s)
        await server.start()
        self._scan_task = asyncio.create_task(self._scan())
        logger.info("plc started endpoint=%s security=%s users=%d", self.endpoint, ",".join(self.security),
                    len(self.users))

    async def _build_address_space(self, server: Server, idx: int) -> None:
        objects = server.nodes.objects
        line = await objects.add_object(ua.NodeId("PumpLine", idx), ua.QualifiedName("PumpLine", idx))
        pump = await line.add_object(ua.NodeId("Pump1", idx), ua.QualifiedName("Pump1", idx))
        diag = await objects.add_object(ua.NodeId("Diagnostics", idx), ua.QualifiedName("Diagnostics", idx))

        async def var(parent, name: str, value, vtype: ua.VariantType, writable: bool = False, prefix="Pump1",
                      eu_range: tuple[float, float] | None = None):
            nid = ua.NodeId(f"{prefix}.{name}", idx)
            node = await parent.add_variable(nid, ua.QualifiedName(name, idx), ua.Variant(value, vtype))
            if writable:
                await node.set_writable()
            if eu_range is not None:  # the range a client checks its write limits against (OPC-UA Part 8)
                await node.add_property(ua.NodeId(f"{prefix}.{name}.EURange", idx), "0:EURange",
                                        ua.Range(Low=eu_range[0], High=eu_range[1]))
            self.nodes[name] = nid
            return node

        for s in SENSORS:
            await var(pump, s, 0.0, ua.VariantType.Double)
        await var(pump, "Running", self.running, ua.VariantType.Boolean)
        await var(pump, "Speed", self.speed, ua.VariantType.Double, eu_range=(0.0, 100.0))
        await var(pump, "SpeedSetpoint", self.setpoint, ua.VariantType.Double, writable=True, eu_range=(0.0, 100.0))
        await var(pump, "ValvePosition", self.valve, ua.VariantType.Double, writable=True, eu_range=(0.0, 100.0))
        await var(pump, "ActiveFault", "", ua.VariantType.String)
        await var(diag, "SessionCount", 0, ua.VariantType.UInt32, prefix="Diagnostics")

        async def method(name: str, fn, inputs: list[tuple[str, ua.VariantType]]):
            args = []
            for arg_name, vt in inputs:
                a = ua.Argument()
                a.Name = arg_name
                a.DataType = ua.NodeId(vt.value)
                a.ValueRank = -1
                args.append(a)
            await pump.add_method(ua.NodeId(f"Pump1.{name}", idx), ua.QualifiedName(name, idx), fn, args, [])

        await method("Start", self._m_start, [])
        await method("Stop", self._m_stop, [])
        await method("InjectFault", self._m_inject,
                     [("fault", ua.VariantType.String), ("severity", ua.VariantType.Double),
                      ("sensor", ua.VariantType.String)])
        await method("ClearFaults", self._m_clear, [])
        await method("SetSensorStatus", self._m_sensor_status,
                     [("sensor", ua.VariantType.String), ("status", ua.VariantType.String)])
        await method("Freeze", self._m_freeze, [("seconds", ua.VariantType.Double)])

    # -- methods (parent nodeid first, then the input Variants)

    async def _m_start(self, parent):
        self.running = True
        # Published at once, not at the next scan: a client reading Running right after
        # the call must see the new state (as a real PLC's status word would show it).
        await self._write("Running", True, ua.VariantType.Boolean, now=datetime.now(timezone.utc))
        logger.info("plc pump started")
        return []

    async def _m_stop(self, parent):
        self.running = False
        await self._write("Running", False, ua.VariantType.Boolean, now=datetime.now(timezone.utc))
        logger.info("plc pump stopped")
        return []

    async def _m_inject(self, parent, fault: ua.Variant, severity: ua.Variant, sensor: ua.Variant | None = None):
        sensor_name = str(sensor.Value) if sensor is not None and sensor.Value else None
        try:
            self.model.inject(str(fault.Value), float(severity.Value), sensor_name)
        except (TypeError, ValueError) as e:
            logger.warning("plc inject refused fault=%r error=%s", fault.Value, e)
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        logger.info("plc fault injected fault=%s severity=%s sensor=%s", fault.Value, severity.Value, sensor_name)
        return []

    async def _m_clear(self, parent):
        self.model.clear_faults()
        return []

    async def _m_sensor_status(self, parent, sensor: ua.Variant, status: ua.Variant):
        name, code_name = str(sensor.Value), str(status.Value)
        code = getattr(ua.StatusCodes, code_name, None)
        if name not in SENSORS or code is None:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        if code == ua.StatusCodes.Good:
            self.sensor_status.pop(name, None)
        else:
            self.sensor_status[name] = ua.StatusCode(code)
        return []

    async def _m_freeze(self, parent, seconds: ua.Variant):
        self.frozen_until = time.monotonic() + max(0.0, float(seconds.Value))
        logger.info("plc scan frozen seconds=%s", seconds.Value)
        return []

    # -- scan

    def session_count(self) -> int:
        assert self.server is not None
        # No public counter in asyncua: its table of live client sessions is the truth.
        return len(getattr(self.server.iserver, "_external_sessions", {}))

    async def drop_sessions(self) -> None:
        assert self.server is not None
        sessions = list(getattr(self.server.iserver, "_external_sessions", {}).values())
        for s in sessions:
            await s.close_session(True)
        logger.warning("plc dropped all sessions count=%d", len(sessions))

    async def _write(self, name: str, value, vtype: ua.VariantType, status: ua.StatusCode | None = None,
                     now: datetime | None = None) -> None:
        assert self.server is not None
        dv = ua.DataValue(ua.Variant(value, vtype), StatusCode=status or ua.StatusCode(ua.StatusCodes.Good),
                          SourceTimestamp=now or datetime.now(timezone.utc))
        await self.server.write_attribute_value(self.nodes[name], dv)

    def _read(self, name: str):
        assert self.server is not None
        return self.server.read_attribute_value(self.nodes[name]).Value.Value

    async def _clamped(self, name: str, lo: float, hi: float) -> float:
        v = self._read(name)
        v = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else lo
        c = min(hi, max(lo, v))
        if c != v:
            await self._write(name, c, ua.VariantType.Double)
            logger.info("plc clamped %s from=%s to=%s", name, v, c)
        return c

    async def _scan(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.period_s)
            t = time.monotonic()
            dt, last = t - last, t
            try:
                if t < self.frozen_until:
                    continue
                await self._step(dt)
            except Exception:  # noqa: BLE001 - a scan error must not stop the PLC
                logger.exception("plc scan error")

    async def _step(self, dt: float) -> None:
        self.setpoint = await self._clamped("SpeedSetpoint", 0.0, 100.0)
        self.valve = await self._clamped("ValvePosition", 0.0, 100.0)
        target = self.setpoint if self.running else 0.0
        step = self.ramp * dt
        if abs(target - self.speed) <= step:
            self.speed = target
        else:
            self.speed += math.copysign(step, target - self.speed)
        _drive(self.model, self.speed, self.valve)
        values = self.model.step(dt)
        now = datetime.now(timezone.utc)
        for s in SENSORS:
            v = values.get(s)
            status = self.sensor_status.get(s)
            if v is None or not math.isfinite(v):
                status = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
                v = 0.0
            await self._write(s, float(v), ua.VariantType.Double, status, now)
        await self._write("Speed", self.speed, ua.VariantType.Double, now=now)
        await self._write("Running", self.running, ua.VariantType.Boolean, now=now)
        await self._write("ActiveFault", ",".join(sorted(self.model.faults)), ua.VariantType.String, now=now)

    async def stop(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()
            await asyncio.gather(self._scan_task, return_exceptions=True)
        if self.server is not None:
            await self.server.stop()
            self.server = None


def _drive(model: PumpModel, speed_pct: float, valve_pct: float) -> None:
    """Hand the PLC's actual speed and valve opening (percent) to the model (fractions of rated / open)."""
    model.speed = speed_pct / 100.0
    model.valve = valve_pct / 100.0


# --------------------------------------------------------------------------- command line


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4840)
    p.add_argument("--security", default="none,sign,signandencrypt",
                   help="comma list of endpoints: none, sign, signandencrypt (Basic256Sha256)")
    p.add_argument("--pki", type=Path, default=Path("pki/plc"),
                   help="where the server key/certificate are generated once and kept")
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                   help="account (repeatable); with any account anonymous access is off")
    p.add_argument("--trusted-clients", type=Path, default=None,
                   help="directory of trusted client certificates (default: accept any)")
    p.add_argument("--period", type=float, default=0.1, help="scan period in seconds")
    p.add_argument("--speed", type=float, default=100.0, help="initial speed setpoint, percent of rated")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--fault", default=None, metavar="NAME[:SEVERITY]",
                   help="inject a fault at start (bearing_wear, cavitation, valve_blockage, sensor_stuck, "
                        "sensor_drift)")
    p.add_argument("--fault-at", type=float, default=None, metavar="SECONDS",
                   help="with --fault: inject it this long after the server starts listening (default: at once)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--stop-on-stdin-eof", action="store_true",
                   help="also stop when standard input is closed (a supervising parent has ended)")


def add_plc_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register ``plc`` on an argparse sub-command set (used by firmware-sim/cli.py)."""
    p = subparsers.add_parser("plc", help="simulated PLC: OPC-UA server running the pump model")
    _add_arguments(p)
    p.set_defaults(func=run_plc)
    return p


def _parse_security(text: str) -> tuple[str, ...]:
    modes = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    bad = [m for m in modes if m not in SECURITY_MODES]
    if bad or not modes:
        raise SystemExit(f"--security: unknown mode(s) {bad}; use none, sign, signandencrypt")
    return modes


def _parse_users(items: list[str]) -> dict[str, str]:
    users = {}
    for item in items:
        name, sep, pwd = item.partition(":")
        if not sep or not name:
            raise SystemExit(f"--user {item!r}: expected NAME:PASSWORD")
        users[name] = pwd
    return users


async def _serve(args: argparse.Namespace) -> None:
    if not 0 <= args.speed <= 100:
        raise SystemExit("--speed must be within 0..100 (percent of rated speed)")
    if args.period <= 0:
        raise SystemExit("--period must be > 0")
    if args.fault_at is not None and not (math.isfinite(args.fault_at) and args.fault_at >= 0):
        raise SystemExit("--fault-at must be a number of seconds >= 0")
    if args.fault_at is not None and not args.fault:
        raise SystemExit("--fault-at needs --fault")
    fault = None
    if args.fault:
        name, _, sev = args.fault.partition(":")
        try:
            fault = (name, float(sev or 1.0))
            # Checked on a scratch model now, not fault_at seconds into the run.
            PumpModel(seed=0).inject(*fault)
        except ValueError as e:
            raise SystemExit(f"--fault: {e}") from None
    sim = PlcSimulator(args.host, args.port, pki_dir=args.pki, security=_parse_security(args.security),
                       users=_parse_users(args.user), trusted_clients=args.trusted_clients,
                       period_s=args.period, seed=args.seed, speed_pct=args.speed)
    if fault is not None and args.fault_at is None:
        sim.model.inject(*fault)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    # Handlers before start(): a stop request during start-up is honoured right after it, not a traceback.
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    if args.stop_on_stdin_eof:
        watch_stdin_eof(lambda: loop.call_soon_threadsafe(stopping.set))
    await sim.start()
    try:
        loop.add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(sim.drop_sessions()))
        print(f"PLC simulator listening on {sim.endpoint}", flush=True)
        listening = time.monotonic()
        if fault is not None and args.fault_at is not None:
            def inject() -> None:
                sim.model.inject(*fault)
                print(f"PLC simulator: fault_injected fault={fault[0]} severity={fault[1]:g} "
                      f"after_s={time.monotonic() - listening:.2f}", flush=True)

            loop.call_later(args.fault_at, inject)
        await stopping.wait()
    finally:
        await sim.stop()


def run_plc(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    asyncio.run(_serve(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plc", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return run_plc(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
