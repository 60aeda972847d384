"""Input plugin ``[inputs.mqtt]``: JSON sensor payloads over MQTT (see README.md)."""


def build(section, env):
    from appliance.connectors.mqtt.connector import MqttConnector

    sensors = frozenset(env.sensors)
    return MqttConnector(section, env.config.connections.mqtt, known_sensors=lambda asset: sensors,
                         clock=env.clock)
