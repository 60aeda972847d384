"""The demo's configuration with the appliance's defaults: ``data_dir = "var"`` is relative, and the
demo's signed-update source must still be a valid (absolute) folder, or the README's first command fails."""

from __future__ import annotations

from pathlib import Path

from appliance.config import parse_config
from appliance.demo import _demo_config
from appliance.demo_cloud import DemoCloud, sync_section


def test_the_demo_config_parses_with_the_default_relative_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({}, "defaults")
    assert not Path(cfg.data_dir).is_absolute()
    cloud = DemoCloud(cfg.path("demo-cloud"))
    assert cloud.root == tmp_path / cfg.data_dir / "demo-cloud" and cloud.usb.is_absolute()
    demo = _demo_config(cfg, 1883, 4840, sync_section(cloud, 8883))
    assert demo.outputs.sync.updates.source == str(tmp_path / cfg.data_dir / "demo-cloud" / "usb")


def test_the_sparkplug_demo_reads_the_pump_through_the_sparkplug_input_alone():
    demo = _demo_config(parse_config({}, "defaults"), 1883, None, sparkplug=True)
    assert demo.inputs.sparkplug.enabled and not demo.inputs.mqtt.enabled and not demo.inputs.opcua.enabled
