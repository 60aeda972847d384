"""Severity: the 0-100 scale a technician reads, and its place in the MQTT alarm payload."""

from __future__ import annotations

import asyncio
import json

import paho.mqtt.client as mqtt
import pytest

from appliance.actions.mqtt_alarm.config import MqttAlarmConfig
from appliance.actions.mqtt_alarm.notifier import MqttAlarmNotifier
from appliance.connections.config import MqttBroker
from appliance.core import Alarm, AlarmEvent, AlarmState, EventKind, Level
from appliance.core.severity import BANDS, band, severity
from tests.support.wait import wait_until

# The payload test needs a real Mosquitto; the scale's own test is a doctest-sized check beside it.
pytestmark = pytest.mark.integration


def test_severity_is_50_at_the_threshold_rises_with_the_ratio_and_is_bounded():
    ratios = [0.0, 0.2, 0.5, 0.9, 1.0, 1.1, 2.0, 3.0, 10.0, 1e6]
    values = [severity(r) for r in ratios]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 100
    assert severity(1.0) == 50 and severity(0.9) < 50 < severity(1.1)
    assert [band(severity(r)) for r in (0.3, 0.7, 1.0, 2.0, 3.5)] == ["normal", "watch", "alarm", "high", "critical"]
    assert [lower for lower, _ in BANDS] == sorted((lower for lower, _ in BANDS), reverse=True)


def test_alarm_payloads_carry_severity_and_band(mosquitto):
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="severity-watcher")
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("appliance/alarms/#", qos=1)
    sub.loop_start()
    notifier = MqttAlarmNotifier(MqttAlarmConfig(), MqttBroker(port=mosquitto.port))
    try:
        asyncio.run(notifier.start())
        wait_until(lambda: notifier.connected, what="notifier connected")
        alarm = Alarm(id="a1", asset="pump1", level=Level.CRITICAL, state=AlarmState.UNACKED,
                      start=1_700_000_000.0, peak_ratio=3.8, top_sensors=("Current",))
        notifier.on_alarm_event(AlarmEvent(EventKind.RAISED, alarm, 1_700_000_001.0))
        wait_until(lambda: {t for t, _ in got} >= {"appliance/alarms/pump1/events", "appliance/alarms/pump1/state"},
                   what="event and state")
    finally:
        asyncio.run(notifier.stop())
        sub.loop_stop()
    payload = dict(got)
    state, event = payload["appliance/alarms/pump1/state"], payload["appliance/alarms/pump1/events"]
    assert (state["severity"], state["band"], state["peak_ratio"]) == (severity(3.8), "critical", 3.8)
    assert (event["alarm"]["severity"], event["alarm"]["band"]) == (severity(3.8), "critical")
