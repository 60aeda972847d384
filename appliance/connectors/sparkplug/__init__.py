"""Input plugin ``[inputs.sparkplug]``: Sparkplug B edge nodes, read as a host application (see README.md)."""

import re


def build(section, env):
    from appliance.connectors.sparkplug.connector import SparkplugConnector

    # One file per session (client id): what one broker sent again says nothing about another's.
    session = re.sub(r"[^A-Za-z0-9._-]", "_", section.client_id)[:64]
    return SparkplugConnector(section, env.config.connections.mqtt, known_sensors=frozenset(env.sensors),
                              clock=env.clock,
                              retained_refusals=env.data_dir / f"sparkplug-retained-refusals-{session}.bin")
