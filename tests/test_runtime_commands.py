"""Operator commands: the runtime answers for a plugin that is not enabled in the plugin's own words.

Each plugin names the commands it answers in its registry entry, with what to say
while it is not enabled; the runtime knows no plugin by name.
"""

from __future__ import annotations

import asyncio

import pytest

from appliance.actions.alarms import AlarmCommandError
from appliance.config import parse_config
from appliance.core import Detector, Output
from appliance.registry import OUTPUTS, Plugin, commands_not_enabled
from appliance.runtime import Appliance
from appliance.settings import Section
from appliance.store import Store
from tests.support.detector import StandIn

CALIBRATION = Plugin("calibration", Section, "nowhere:build", "nowhere/README.md", commands=("calibrate",),
                     not_enabled="calibration is not enabled (outputs.calibration)")


class Calibration(Output):
    name = "calibration"

    def commands(self):
        async def calibrate(**_) -> list:
            return [{"calibrated": True}]
        return {"calibrate": calibrate}


def appliance(tmp_path, outputs=()) -> Appliance:
    cfg = parse_config({"data_dir": str(tmp_path), "log_level": "WARNING", "web": {"enabled": False},
                        "inputs": {"mqtt": {"enabled": False}},
                        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False}}})
    return Appliance(cfg, StandIn(), Store(tmp_path / "store.db"), outputs=outputs,
                     not_enabled=commands_not_enabled((CALIBRATION,)))


def run_command(app: Appliance, name: str):
    async def go():
        await app.start()
        try:
            return await asyncio.to_thread(app.command, name)
        finally:
            await app.shutdown()
    return asyncio.run(go())


def test_a_disabled_plugins_command_is_refused_with_what_its_registry_entry_says(tmp_path):
    with pytest.raises(AlarmCommandError, match=r"^calibration is not enabled \(outputs.calibration\)$"):
        run_command(appliance(tmp_path), "calibrate")


def test_an_enabled_plugin_answers_its_command_and_an_unknown_one_is_unknown(tmp_path):
    assert run_command(appliance(tmp_path / "a", [Calibration()]), "calibrate") == [{"calibrated": True}]
    with pytest.raises(ValueError, match="unknown command 'recalibrate'"):
        run_command(appliance(tmp_path / "b"), "recalibrate")


def test_the_registry_says_it_for_mitigation_and_sync():
    said = commands_not_enabled(OUTPUTS)
    assert said["approve_action"] == said["reject_action"] == "mitigation is not enabled"
    assert said["sync_now"] == "sync is not enabled (outputs.sync)"


def test_the_stand_in_detectors_of_the_tests_implement_the_whole_protocol():
    assert isinstance(StandIn(), Detector)
