"""Every input and output plugin the appliance knows, by the key of its config section.

A plugin is a folder holding its code, its config section (``config.py``) and a
README with a sample config. Enabling one is ``enabled = true`` in its section;
adding one is a line here. The factory (``module:function``) is imported only
when the plugin is enabled, so a gateway without OPC-UA never loads asyncua, and
is called as ``factory(section, env)`` with a :class:`~appliance.core.PluginEnv`.

Most outputs are configured at ``[outputs.<key>]`` and switched by ``enabled``; a
plugin whose settings are shared with a program outside the appliance says where
its section is and which key switches it (the fleet participant: ``[fleet]``, read
by the fleet server too, switched by ``participate``). A plugin that works on
something another output owns names it in ``needs`` (``{"windows": "sync.windows"}``:
the ``windows`` of the ``sync`` output); it is built after that output and finds
it in ``env.needs``, or is refused with one line saying which output to enable.

A plugin that answers operator commands names them in ``commands`` (the names its
output's ``commands()`` returns) with what to answer when it is not enabled
(``not_enabled``), so the runtime refuses a disabled plugin's command in the
plugin's own words without knowing any plugin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from appliance.actions.mitigation.config import MitigationConfig
from appliance.actions.mqtt_alarm.config import MqttAlarmConfig
from appliance.actions.sparkplug.config import SparkplugOutputConfig
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.opcua.config import OpcuaInputConfig
from appliance.connectors.sparkplug.config import SparkplugInputConfig
from appliance.fleet.config import FleetConfig
from appliance.core import Input, Output, PluginEnv, PluginError
from appliance.history.config import HistoryConfig
from appliance.settings import Section
from appliance.sync.config import SyncConfig


@dataclass(frozen=True)
class Plugin:
    key: str
    config: type[Section]
    factory: str
    readme: str
    section: str = ""  # where its config is when not at [inputs.<key>] / [outputs.<key>]
    switch: str = "enabled"  # the boolean key of its section that enables it
    needs: Mapping[str, str] = field(default_factory=dict)  # name -> "<output key>.<attribute>"
    commands: tuple[str, ...] = ()  # the operator commands its output answers
    not_enabled: str = ""  # the answer to one of them while the plugin is not enabled

    def section_of(self, sections: Any, env: PluginEnv) -> Any:
        """Its validated section: ``sections.<key>``, or ``env.config.<section>`` for one of its own."""
        return getattr(env.config, self.section) if self.section else getattr(sections, self.key)

    def enabled(self, sections: Any, env: PluginEnv) -> bool:
        return bool(getattr(self.section_of(sections, env), self.switch))

    def build(self, section: Any, env: PluginEnv) -> Any:
        module, _, func = self.factory.partition(":")
        return getattr(importlib.import_module(module), func)(section, env)


INPUTS: tuple[Plugin, ...] = (
    Plugin("mqtt", MqttInputConfig, "appliance.connectors.mqtt:build", "appliance/connectors/mqtt/README.md"),
    Plugin("opcua", OpcuaInputConfig, "appliance.connectors.opcua:build", "appliance/connectors/opcua/README.md"),
    Plugin("sparkplug", SparkplugInputConfig, "appliance.connectors.sparkplug:build",
           "appliance/connectors/sparkplug/README.md"),
)

OUTPUTS: tuple[Plugin, ...] = (
    Plugin("mqtt_alarm", MqttAlarmConfig, "appliance.actions.mqtt_alarm:build",
           "appliance/actions/mqtt_alarm/README.md"),
    Plugin("sparkplug", SparkplugOutputConfig, "appliance.actions.sparkplug:build",
           "appliance/actions/sparkplug/README.md"),
    Plugin("history", HistoryConfig, "appliance.history:build", "appliance/history/README.md"),
    Plugin("mitigation", MitigationConfig, "appliance.actions.mitigation:build",
           "appliance/actions/mitigation/README.md", commands=("approve_action", "reject_action"),
           not_enabled="mitigation is not enabled"),
    Plugin("sync", SyncConfig, "appliance.sync.uplink:build", "appliance/sync/README.md", commands=("sync_now",),
           not_enabled="sync is not enabled (outputs.sync)"),
    # Fleet learning runs only inside the sync's connectivity windows (docs/fleet.md).
    Plugin("fleet", FleetConfig, "appliance.fleet.participant:build", "appliance/fleet/README.md",
           section="fleet", switch="participate", needs={"windows": "sync.windows"}),
)


def build_inputs(sections: Any, env: PluginEnv) -> list[Input]:
    """The enabled inputs of ``config.inputs``, in registry order."""
    return [p.build(getattr(sections, p.key), env) for p in INPUTS if getattr(sections, p.key).enabled]


def build_outputs(sections: Any, env: PluginEnv) -> list[Output]:
    """The enabled outputs (``config.outputs`` and those with a section of their own), in registry order."""
    built: dict[str, Output] = {}
    for p in OUTPUTS:
        if p.enabled(sections, env):
            built[p.key] = p.build(p.section_of(sections, env), replace(env, needs=_needs(p, built)))
    return list(built.values())


def _needs(plugin: Plugin, built: Mapping[str, Output]) -> dict[str, Any]:
    found = {}
    for name, source in plugin.needs.items():
        key, _, attribute = source.partition(".")
        if key not in built:
            raise PluginError(f"[{plugin.section or 'outputs.' + plugin.key}] {plugin.switch} = true "
                              + _unmet(key, attribute))
        found[name] = getattr(built[key], attribute)
    return found


def _unmet(key: str, attribute: str) -> str:
    return f"needs [outputs.{key}] enabled (for its {attribute})"


def unmet_needs(config: Any) -> list[str]:
    """``key: reason`` lines for enabled outputs whose ``needs`` name an output that is not enabled."""
    problems = []
    for p in OUTPUTS:
        section = getattr(config, p.section) if p.section else getattr(config.outputs, p.key)
        if not getattr(section, p.switch):
            continue
        for source in p.needs.values():
            key, _, attribute = source.partition(".")
            if not getattr(config.outputs, key).enabled:
                problems.append(f"{p.section or 'outputs.' + p.key}.{p.switch}: {_unmet(key, attribute)}")
    return problems


def commands_not_enabled(plugins: tuple[Plugin, ...] = OUTPUTS) -> dict[str, str]:
    """``command -> answer`` for every command a plugin declares; the runtime uses those no enabled output took."""
    return {name: p.not_enabled or f"{p.key} is not enabled" for p in plugins for name in p.commands}


def config_sections(plugins: tuple[Plugin, ...]) -> dict[str, type[Section]]:
    """``key -> config model`` of the plugins configured inside ``[inputs]`` or ``[outputs]``."""
    return {p.key: p.config for p in plugins if not p.section}
