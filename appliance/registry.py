"""Every input and output plugin the appliance knows, by the key of its config section.

A plugin is a folder holding its code, its config section (``config.py``) and a
README with a sample config. Enabling one is ``enabled = true`` in its section;
adding one is a line here. The factory (``module:function``) is imported only
when the plugin is enabled, so a gateway without OPC-UA never loads asyncua, and
is called as ``factory(section, env)`` with a :class:`~appliance.core.PluginEnv`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from appliance.actions.mitigation.config import MitigationConfig
from appliance.actions.mqtt_alarm.config import MqttAlarmConfig
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.opcua.config import OpcuaInputConfig
from appliance.core import Input, Output, PluginEnv
from appliance.history.config import HistoryConfig
from appliance.settings import Section
from appliance.sync.config import SyncConfig


@dataclass(frozen=True)
class Plugin:
    key: str
    config: type[Section]
    factory: str
    readme: str

    def build(self, section: Any, env: PluginEnv) -> Any:
        module, _, func = self.factory.partition(":")
        return getattr(importlib.import_module(module), func)(section, env)


INPUTS: tuple[Plugin, ...] = (
    Plugin("mqtt", MqttInputConfig, "appliance.connectors.mqtt:build", "appliance/connectors/mqtt/README.md"),
    Plugin("opcua", OpcuaInputConfig, "appliance.connectors.opcua:build", "appliance/connectors/opcua/README.md"),
)

OUTPUTS: tuple[Plugin, ...] = (
    Plugin("mqtt_alarm", MqttAlarmConfig, "appliance.actions.mqtt_alarm:build",
           "appliance/actions/mqtt_alarm/README.md"),
    Plugin("history", HistoryConfig, "appliance.history:build", "appliance/history/README.md"),
    Plugin("mitigation", MitigationConfig, "appliance.actions.mitigation:build",
           "appliance/actions/mitigation/README.md"),
    Plugin("sync", SyncConfig, "appliance.sync.uplink:build", "appliance/sync/README.md"),
)


def build_inputs(sections: Any, env: PluginEnv) -> list[Input]:
    """The enabled inputs of ``config.inputs``, in registry order."""
    return [p.build(getattr(sections, p.key), env) for p in INPUTS if getattr(sections, p.key).enabled]


def build_outputs(sections: Any, env: PluginEnv) -> list[Output]:
    """The enabled outputs of ``config.outputs``, in registry order."""
    return [p.build(getattr(sections, p.key), env) for p in OUTPUTS if getattr(sections, p.key).enabled]
