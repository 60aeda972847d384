"""Input plugin ``[inputs.mqtt]``: JSON sensor payloads over MQTT (see README.md)."""

import re


def build(section, env):
    from appliance.connectors.mqtt.connector import MqttConnector

    sensors = frozenset(env.sensors)
    # One file per session (client id): what one broker sent again says nothing about another's.
    session = re.sub(r"[^A-Za-z0-9._-]", "_", section.client_id)[:64]
    return MqttConnector(section, env.config.connections.mqtt, known_sensors=lambda asset: sensors,
                         clock=env.clock,
                         retained_refusals=env.data_dir / f"mqtt-retained-refusals-{session}.bin")
