"""The README's first command, headless: broker, simulator and appliance started by the demo itself.

Every run also checks that the demo leaves no process behind: each run carries a
marker in its environment, which the demo's children inherit, and after the demo
has exited no process with that marker may remain.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from appliance.accounts import Accounts

pytestmark = pytest.mark.integration  # the whole demo: broker, simulators, training, the appliance

_model = {}


def _marked_env():
    marker = f"APPLIANCE_DEMO_TEST_RUN={uuid.uuid4().hex}"
    key, value = marker.split("=", 1)
    return dict(os.environ, **{key: value}), marker.encode()


def _left_behind(marker: bytes) -> list[str]:
    """Processes still alive that inherited the run's marker (a zombie has no environment and does not count)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if marker in (d / "environ").read_bytes().split(b"\0"):
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{d.name}: {cmdline}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _config(tmp_path, extra_toml=""):
    cfg = tmp_path / "demo.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n{extra_toml}\n[web]\nport = 0\n')
    return cfg


def _summary(stdout: str) -> dict:
    summary = [line for line in stdout.splitlines() if line.startswith("demo summary:")]
    assert summary, f"no summary line\nstdout:\n{stdout}"
    return dict(kv.split("=", 1) for kv in summary[0].removeprefix("demo summary: ").split())


def _reuse_model(tmp_path):
    if "dir" in _model:  # what the first demo made (models, the engineer's release): no need to make it twice
        for name in ("model", "demo-model-v2", "demo-cloud"):
            shutil.copytree(_model["dir"] / name, tmp_path / "var" / name)


def run_demo(tmp_path, extra_toml="", args=()):
    env, marker = _marked_env()
    cfg = _config(tmp_path, extra_toml)
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--config", str(cfg),
                           "--seconds", "30", "--fault-at", "15", *args],
                          capture_output=True, text=True, timeout=600, cwd=os.getcwd(), env=env)
    assert any(line.startswith("demo summary:") for line in proc.stdout.splitlines()), \
        f"no summary line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert _left_behind(marker) == [], "the demo left processes behind"
    return proc, _summary(proc.stdout)


def test_demo_over_mqtt_raises_after_the_fault_and_not_before(tmp_path):
    proc, f = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert int(f["alarms_before_fault"]) == 0 and int(f["alarms_after_fault"]) >= 1
    assert int(f["readings"]) > 1000 and int(f["dead_letters"]) == 3
    assert (tmp_path / "var" / "model" / "bundle.json").exists()
    # The simulator ran as a child process and reported its fault and its end.
    assert "pump-sim: appliance-sim pump: fault_injected fault=bearing_wear" in proc.stdout
    assert "pump-sim: appliance-sim pump: published=" in proc.stdout
    # The dashboard's address and the demo engineer's credentials, which work; this run's own store.
    m = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/) - sign in as (\S+) / (\S+) \(engineer", proc.stdout)
    assert m, proc.stdout
    assert Accounts(tmp_path / "var" / "accounts.db").authenticate(m[2], m[3]).role == "engineer"
    (run,) = (tmp_path / "var" / "demo-runs").iterdir()
    assert (run / "store.db").exists() and not (tmp_path / "var" / "appliance.db").exists()
    # One sync window: the alarm went up to the cloud and the signed release 2 ran in shadow to a verdict.
    assert int(f["cloud_items"]) >= 1 and int(f["sync_uploaded_bytes"]) > 0
    # Promotion waits while the fault's alarm is active (it does not end in the demo): "waiting" is a verdict too.
    assert f["model_update"].split(":")[0] in ("promoted", "rejected", "waiting"), f
    assert "cloud-intake: appliance-sim cloud-intake: stored 1 item(s) (raised:1)" in proc.stdout
    assert "verified (TUF, Ed25519) and running in shadow" in proc.stdout
    _model["dir"] = tmp_path / "var"


def test_demo_switches_to_opcua_with_one_config_change(tmp_path):
    _reuse_model(tmp_path)
    proc, f = run_demo(tmp_path, "[inputs.opcua]\nenabled = true\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "over OPC-UA" in proc.stdout
    assert "plc-sim: PLC simulator: fault_injected fault=bearing_wear" in proc.stdout
    assert int(f["alarms_before_fault"]) == 0 and int(f["alarms_after_fault"]) >= 1
    assert int(f["dead_letters"]) == 0


def test_demo_with_sparkplug_reads_the_pump_as_an_edge_node(tmp_path):
    _reuse_model(tmp_path)
    proc, f = run_demo(tmp_path, args=("--sparkplug", "--no-cloud"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "as Sparkplug B edge node plant/pump-sim (device pump1)" in proc.stdout
    assert int(f["alarms_before_fault"]) == 0 and int(f["alarms_after_fault"]) >= 1
    assert int(f["readings"]) > 1000 and int(f["dead_letters"]) == 3  # the three undecodable payloads


def test_ctrl_c_stops_the_demo_and_every_child(tmp_path):
    _reuse_model(tmp_path)
    env, marker = _marked_env()
    # WARNING: the test reads stderr only at the end, so the appliance must not fill the pipe meanwhile.
    cfg = _config(tmp_path, 'log_level = "WARNING"')
    # Its own process group, signalled as a whole: what Ctrl-C at a terminal does.
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "demo", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd(), env=env,
                            start_new_session=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "simulator publishing" in line:
                break
        else:
            raise AssertionError("the demo ended before its simulator published:\n" + "".join(seen)
                                 + proc.stderr.read()[-3000:])
        assert _left_behind(marker), "the broker and the simulator should be running now"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(seen) + out + err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    f = _summary("".join(seen) + out)
    assert int(f["dead_letters"]) == 3
    assert _left_behind(marker) == [], "the demo left processes behind"


def test_demo_cleans_up_when_the_appliance_cannot_start(tmp_path):
    bundle = tmp_path / "var" / "model"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text("{}")  # a model the appliance cannot load
    env, marker = _marked_env()
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--config", str(_config(tmp_path)),
                           "--seconds", "5"], capture_output=True, text=True, timeout=600, cwd=os.getcwd(), env=env)
    assert proc.returncode != 0
    assert _left_behind(marker) == [], "the demo left processes behind"
