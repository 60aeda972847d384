"""The PLC simulator (firmware-sim/plc.py) in a subprocess on a free loopback port, for tests.

A subprocess, not an in-process server, so a test can kill it like a PLC losing
power (``kill()``), restart it with the same certificate (``restart()``) and make
it forget every session (``drop_sessions()``) while the code under test keeps
running in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from appliance.broker import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[2]
PLC_SCRIPT = ROOT / "firmware-sim" / "plc.py"
SENSORS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
           "Thermocouple", "Voltage", "Volume Flow RateRMS")
USER, PASSWORD = "operator", "pump-secret"


class PlcSim:
    def __init__(self, workdir: Path, *, port: int | None = None, security: str = "none,sign,signandencrypt",
                 users: dict[str, str] | None = None, seed: int = 7, period: float = 0.1,
                 speed: float = 100.0, extra_args: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.pki = self.workdir / "pki"
        self.security = security
        self.users = {USER: PASSWORD} if users is None else users
        self.seed, self.period, self.speed = seed, period, speed
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "plc.log"

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/appliance/plc"

    @property
    def server_cert(self) -> Path:
        return self.pki / "server_cert.der"

    def start(self, timeout: float = 60.0) -> "PlcSim":
        args = [sys.executable, str(PLC_SCRIPT), "--host", "127.0.0.1", "--port", str(self.port),
                "--pki", str(self.pki), "--security", self.security, "--seed", str(self.seed),
                "--period", str(self.period), "--speed", str(self.speed), *self.extra_args]
        for name, pwd in self.users.items():
            args += ["--user", f"{name}:{pwd}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))
        try:
            wait_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            pytest.fail(f"PLC simulator did not start; log:\n{self.log.read_text()[-3000:]}")
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Power loss: no goodbye to the clients."""
        stop_process(self.proc, signal.SIGKILL, 5)
        self.proc = None

    def restart(self, down_s: float = 0.5, hard: bool = True) -> None:
        self.kill() if hard else self.stop()
        time.sleep(down_s)
        self.start()

    def drop_sessions(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

    # -- a small operator client for tests (its own session, closed after each call)

    @contextlib.asynccontextmanager
    async def client(self):
        """A connected operator client; secure (with its own test certificate) if the PLC has no None endpoint."""
        c = Client(self.endpoint, timeout=5)
        c.application_uri = "urn:tests:plc-operator"
        c.session_timeout = 30_000
        if self.users:
            name, pwd = next(iter(self.users.items()))
            c.set_user(name)
            c.set_password(pwd)
        modes = [m.strip() for m in self.security.split(",")]
        if "none" not in modes:
            cert, key = await c.setup_self_signed_certificate(
                self.workdir / "operator" / "key.pem", self.workdir / "operator" / "cert.der")
            mode = ua.MessageSecurityMode.SignAndEncrypt if "signandencrypt" in modes else ua.MessageSecurityMode.Sign
            await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                                 server_certificate=str(self.server_cert), mode=mode)
        await c.connect()
        try:
            yield c
        finally:
            await c.disconnect()

    async def read(self, *names: str):
        async with self.client() as c:
            vals = [await c.get_node(_nodeid(n)).read_value() for n in names]
        return vals[0] if len(vals) == 1 else vals

    async def read_dv(self, name: str) -> ua.DataValue:
        async with self.client() as c:
            return await c.get_node(_nodeid(name)).read_data_value(raise_on_bad_status=False)

    async def write(self, name: str, value: float) -> None:
        async with self.client() as c:
            await c.get_node(_nodeid(name)).write_value(ua.DataValue(ua.Variant(float(value), ua.VariantType.Double)))

    async def call(self, method: str, *args) -> None:
        async with self.client() as c:
            await c.get_node("ns=2;s=Pump1").call_method(f"2:{method}", *args)

    async def session_count(self) -> int:
        """Sessions on the server, not counting the one used to ask."""
        async with self.client() as c:
            return int(await c.get_node("ns=2;s=Diagnostics.SessionCount").read_value()) - 1


def _nodeid(name: str) -> str:
    return name if name.startswith("ns=") else f"ns=2;s=Pump1.{name}"


@pytest.fixture(scope="module")
def plc(tmp_path_factory):
    """One PLC simulator for a whole test module (no security, one operator account)."""
    sim = PlcSim(tmp_path_factory.mktemp("plc")).start()
    yield sim
    sim.stop()


@pytest.fixture
def fresh_plc(plc):
    """The module's PLC as every test wants to find it: a running pump at 100 %, no fault, all sensors good."""
    async def reset():
        await plc.call("Start")
        await plc.call("ClearFaults")
        for s in ("Accelerometer1RMS", "Current"):
            await plc.call("SetSensorStatus", s, "Good")
        await plc.write("SpeedSetpoint", 100.0)
        await plc.write("ValvePosition", 100.0)
    asyncio.run(reset())
    return plc
