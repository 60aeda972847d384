"""The README's first command, headless: broker, simulator and appliance started by the demo itself."""

import os
import shutil
import subprocess
import sys

_model = {}


def run_demo(tmp_path, extra_toml=""):
    cfg = tmp_path / "demo.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n{extra_toml}\n[web]\nport = 0\n')
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--config", str(cfg),
                           "--seconds", "30", "--fault-at", "15"],
                          capture_output=True, text=True, timeout=600, cwd=os.getcwd())
    summary = [line for line in proc.stdout.splitlines() if line.startswith("demo summary:")]
    assert summary, f"no summary line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    fields = dict(kv.split("=", 1) for kv in summary[0].removeprefix("demo summary: ").split())
    return proc, fields


def test_demo_over_mqtt_raises_after_the_fault_and_not_before(tmp_path):
    proc, f = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert int(f["alarms_before_fault"]) == 0 and int(f["alarms_after_fault"]) >= 1
    assert int(f["readings"]) > 1000 and int(f["dead_letters"]) == 3
    assert (tmp_path / "var" / "model" / "bundle.json").exists()
    _model["dir"] = tmp_path / "var" / "model"


def test_demo_switches_to_opcua_with_one_config_change(tmp_path):
    if "dir" in _model:  # the model the first demo trained: no need to train it twice
        shutil.copytree(_model["dir"], tmp_path / "var" / "model")
    proc, f = run_demo(tmp_path, "[inputs.opcua]\nenabled = true\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "over OPC-UA" in proc.stdout
    assert int(f["alarms_before_fault"]) == 0 and int(f["alarms_after_fault"]) >= 1
    assert int(f["dead_letters"]) == 0
