"""The cloud side of ``appliance demo``: where anomalies go up and signed models come down.

Made once in the demo's data directory, and kept (like the demo model):

- ``demo-cloud/pki``: a CA, the cloud broker's certificate and client certificates
  for the gateway and the intake (``appliance-sim cloud-pki``);
- ``demo-cloud/engineer``: the engineer's release repository and signing keys
  (``appliance release``), holding one release: the demo model retrained on another
  stretch of simulated normal operation, as version 2. On a site the keys never sit
  on the gateway; the demo plays both parts;
- ``demo-cloud/usb``: the published repository copied as onto a USB stick, which is
  where the gateway looks for updates (the air-gapped way; no web host needed).

Each run starts the cloud broker (Mosquitto, TLS, client certificates required)
and the intake (``appliance-sim cloud-intake``, a child process like the other
simulators). The demo opens one connectivity window once the fault has raised an
alarm ("sync now"): the alarm goes up, and the signed release comes down, is
verified, and runs in shadow beside the current model until it is promoted or
rejected.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.broker import Mosquitto, tls_mosquitto

SIM_COMMAND = (sys.executable, "-m", "firmware_sim.cli")
INTAKE_READY = "appliance-sim cloud-intake: listening"
RELEASE_VERSION = 2
RELEASE_NAME = "pump"
# A short shadow run, so the demo shows the verdict: a site runs one for an hour or more.
DEMO_SHADOW = {"duration_s": 10.0, "min_windows": 30, "probation_s": 60.0}
WINDOW_S = 45.0


@dataclass(frozen=True)
class DemoCloud:
    root: Path

    def __post_init__(self) -> None:
        # Absolute: the updates source must be (a relative one would depend on the working directory),
        # and the default data_dir ("var") is relative.
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def engineer(self) -> Path:
        return self.root / "engineer"

    @property
    def usb(self) -> Path:
        return self.root / "usb"

    @property
    def trusted_root(self) -> Path:
        """The gateway's copy of the repository's root metadata, installed at commissioning."""
        return self.root / "gateway-root.json"

    @property
    def intake_db(self) -> Path:
        return self.root / "cloud.db"

    def ready(self) -> bool:
        return self.trusted_root.exists() and (self.usb / "metadata" / "timestamp.json").exists()


def _run_sim(args: list[str]) -> None:
    proc = subprocess.run([*SIM_COMMAND, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          start_new_session=True)
    if proc.returncode != 0:
        raise RuntimeError(f"appliance-sim {args[0]} failed with status {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")


def prepare(root: Path, retrained_bundle: Path) -> DemoCloud:
    """The PKI and a published, signed release of ``retrained_bundle`` (once; kept in ``root``)."""
    from appliance.release.repo import add_release, copy_repository, init_repository, publish

    cloud = DemoCloud(root)
    if cloud.ready():
        return cloud
    if root.exists():  # an earlier setup was interrupted half-way: start over
        shutil.rmtree(root)
    root.mkdir(parents=True)
    _run_sim(["cloud-pki", "--out", str(cloud.pki)])
    repo, keys = cloud.engineer / "repo", cloud.engineer / "keys"
    root_json = init_repository(repo, [keys])
    add_release(repo, retrained_bundle, RELEASE_VERSION, [keys], name=RELEASE_NAME)
    publish(repo, [keys])
    copy_repository(repo, cloud.usb)
    # Last: its presence says the setup is complete.
    shutil.copyfile(root_json, cloud.trusted_root)
    return cloud


def reset_gateway(cloud: DemoCloud, data_dir: Path) -> None:
    """Forget what an earlier demo run installed and promoted, so this run shows the update again.

    The engineer's side (PKI, repository, the stick) is kept; the gateway's update state,
    its verified bundles and the record of a promotion go.
    """
    from appliance.lifecycle.active import ACTIVE_FILE

    for folder in (cloud.root / "gateway-updates", cloud.root / "gateway-releases", cloud.root / "broker"):
        shutil.rmtree(folder, ignore_errors=True)
    (Path(data_dir) / ACTIVE_FILE).unlink(missing_ok=True)
    cloud.intake_db.unlink(missing_ok=True)


def cloud_broker(cloud: DemoCloud, port: int) -> Mosquitto:
    return tls_mosquitto(cloud.root / "broker", cloud.pki / "ca.pem", cloud.pki / "server.pem",
                         cloud.pki / "server.key", port)


def intake_args(cloud: DemoCloud, port: int) -> list[str]:
    """``appliance-sim cloud-intake`` arguments: subscribe on the cloud broker, store in ``cloud.db``."""
    return ["cloud-intake", "--host", "127.0.0.1", "--port", str(port), "--ca", str(cloud.pki / "ca.pem"),
            "--cert", str(cloud.pki / "intake.pem"), "--key", str(cloud.pki / "intake.key"),
            "--db", str(cloud.intake_db), "--log-level", "WARNING", "--print-batches"]


def sync_section(cloud: DemoCloud, port: int) -> dict:
    """``[outputs.sync]`` for the demo: this cloud, no scheduled window (the demo opens one), updates from the stick."""
    return {
        "enabled": True,
        "windows": [],
        "sync_now_s": WINDOW_S,
        "context_before_s": 30.0,
        "context_after_s": 10.0,
        "mqtt": {"host": "127.0.0.1", "port": port, "ca_file": str(cloud.pki / "ca.pem"),
                 "cert_file": str(cloud.pki / "client.pem"), "key_file": str(cloud.pki / "client.key"),
                 "client_id": "demo-gateway", "reconnect": {"initial_s": 0.5, "max_s": 5.0}},
        "updates": {"enabled": True, "source": str(cloud.usb), "trusted_root": str(cloud.trusted_root),
                    "state_dir": str(cloud.root / "gateway-updates"),
                    "bundles_dir": str(cloud.root / "gateway-releases")},
        "shadow": DEMO_SHADOW,
    }


async def watch_window(app, cloud: DemoCloud, alarm_raised, say) -> dict:
    """Once ``alarm_raised`` is set, open one window and narrate it; return what it did.

    ``say`` prints a demo line. Returns the figures for the demo's summary.
    """
    import asyncio
    import time

    uplink = app.output("sync")
    await alarm_raised.wait()
    await asyncio.sleep(2.0)  # a little context after the raise
    opened_at = time.time()
    uplink.sync_now(WINDOW_S)
    say(f"sync window open for {WINDOW_S:g}s: the alarm goes up to the cloud broker, "
        f"signed model releases come down from {cloud.usb}")
    # Items the cloud broker acknowledged (QoS 1); the intake prints what it stored.
    out = {"uploaded_bytes": 0, "observed_raw_bytes": 0, "cloud_items": 0, "model": None}
    seen_model: str | None = None
    deadline = time.monotonic() + WINDOW_S + DEMO_SHADOW["duration_s"] + 30.0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        st = uplink.status()
        out["uploaded_bytes"] = st["uploaded"]["bytes"]
        out["observed_raw_bytes"] = st["observed"]["raw_bytes"]
        out["cloud_items"] = st["uploaded"]["items"]
        model = app.status().get("model", {})
        shadow = model.get("shadow") or {}
        models = st.get("models") or {}
        state = (f"shadow:{shadow.get('candidate')}" if shadow.get("candidate")
                 else models.get("last_refusal") and f"refused:{models['last_refusal']}")
        if state and state != seen_model:
            seen_model = state
            if state.startswith("shadow:"):
                say(f"model release {shadow.get('candidate')} verified (TUF, Ed25519) and running in shadow "
                    f"beside {model.get('version')} for {DEMO_SHADOW['duration_s']:g}s")
            else:
                say(f"model update refused: {models['last_refusal']}")
        if out["model"] is None and shadow.get("waiting_for_alarms"):
            # The shadow run is done but an alarm is still active (the demo's fault does not end): a verdict
            # taken during an alarm does not count, so promotion waits for the alarms to clear.
            out["model"] = f"waiting {shadow.get('candidate')}"
            say(f"model release {shadow.get('candidate')} ran its shadow; promotion waits until the alarm clears "
                f"on {', '.join(shadow['waiting_for_alarms'])} (a verdict taken during an alarm does not count)")
        if out["model"] is None:
            changes = [c for c in await asyncio.to_thread(_model_changes, app, opened_at)
                       if c["event"] in ("promoted", "rejected")]
            if changes:
                c = changes[0]
                out["model"] = f"{c['event']} {c['version']}"
                say(f"model {c['event']}: {c['version']} (was {c['previous']}); {c['reason']}")
        if out["model"] is not None and out["cloud_items"]:
            break
    ratio = out["uploaded_bytes"] / out["observed_raw_bytes"] if out["observed_raw_bytes"] else 0.0
    say(f"sync: {out['uploaded_bytes']} bytes uploaded for {out['observed_raw_bytes']} raw bytes observed "
        f"({ratio:.2%}); {out['cloud_items']} item(s) acknowledged by the cloud broker, kept by the intake in "
        f"{cloud.intake_db}")
    return out


def _model_changes(app, since: float) -> list[dict]:
    """The model's steps recorded since ``since``, oldest first (from the store: outputs record them)."""
    from appliance.store import StoreReader, StoreUnavailable

    try:
        rows = StoreReader(app.store.path).model_changes(20)
    except StoreUnavailable:
        return []
    return sorted((r for r in rows if r["ts"] >= since), key=lambda r: r["ts"])
