"""Output plugin ``[outputs.mqtt_alarm]``: alarm events and states on MQTT (see README.md)."""


def build(section, env):
    from appliance.actions.mqtt_alarm.notifier import MqttAlarmNotifier

    return MqttAlarmNotifier(section, section.broker or env.config.connections.mqtt)
