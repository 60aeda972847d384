"""The MQTT alarm notifier: alarm events and each asset's alarm state on an MQTT broker.

An :class:`~appliance.core.Output`: it gets every alarm event and mode change
on the event loop and hands the publish to paho's queue, so it never blocks the
detection path. The store already holds every event, so a notifier that cannot
deliver now republishes the current state when its broker returns.
"""

from __future__ import annotations

import json
import logging
import threading

import paho.mqtt.client as mqtt

from appliance.actions.mqtt_alarm.config import MqttAlarmConfig
from appliance.connections.config import MqttBroker
from appliance.connections.mqtt import configure_paho
from appliance.core import AlarmEvent, ModeChange, OperatingPointChange, Output, OutputContext
from appliance.core.severity import band, severity

log = logging.getLogger(__name__)


def severity_fields(peak_ratio: float) -> dict:
    """The alarm's peak as a technician reads it: 0-100 (50 = threshold) and its band.

    >>> severity_fields(3.8)
    {'severity': 93, 'band': 'critical'}
    """
    sev = severity(peak_ratio)
    return {"severity": sev, "band": band(sev)}


class MqttAlarmNotifier(Output):
    """Publishes alarm events on ``{prefix}/{asset}/events`` (QoS 1) and the
    current state retained on ``{prefix}/{asset}/state``, so a panel or SCADA
    subscribing late still sees every asset's alarm state.

    Paho queues QoS 1 messages while the broker is away (bounded); on every
    (re)connect the retained states are published again from memory.
    """

    name = "mqtt_alarm"

    def __init__(self, cfg: MqttAlarmConfig, broker: MqttBroker, max_queued: int = 10_000):
        self.cfg = cfg
        self.broker = broker
        self.prefix = cfg.topic_prefix.rstrip("/")
        self._states: dict[str, bytes] = {}
        self._op_states: dict[str, bytes] = {}  # each asset's operating-point status, republished on reconnect
        self._lock = threading.Lock()
        self.published = 0
        self.connected = False
        self._stopping = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                  clean_session=True)
        configure_paho(self.client, broker)
        self.client.max_queued_messages_set(max_queued)
        self.client.reconnect_delay_set(broker.reconnect.initial_s, broker.reconnect.max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    async def start(self, ctx: OutputContext | None = None) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()

    async def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def on_alarm_event(self, event: AlarmEvent) -> None:
        readable = severity_fields(event.alarm.peak_ratio)
        state = event.alarm.to_dict() | readable | {"event": event.kind.value, "ts": event.ts}
        payload = event.to_dict()
        payload["alarm"] = payload["alarm"] | readable
        self._publish(event.alarm.asset, payload, state)

    def on_mode_change(self, change: ModeChange) -> None:
        if change.alarm is not None:
            state = change.alarm.to_dict() | severity_fields(change.alarm.peak_ratio)
        else:  # no occurrence yet: the point's mode is its whole state
            state = {"asset": change.asset, "active": False, "state": "normal",
                     "shelved_until": change.shelved_until}
        state |= {"event": change.name, "mode": change.mode.value, "ts": change.ts}
        self._publish(change.asset, change.to_dict(), state)

    def on_operating_point(self, change: OperatingPointChange) -> None:
        """Its own topics, so a panel never reads the status as an alarm: an event on
        ``{prefix}/{asset}/operating_point/events`` and the status retained on ``.../operating_point/state``."""
        payload = json.dumps(change.to_dict())
        base = f"{self.prefix}/{change.asset}/operating_point"
        self.client.publish(f"{base}/events", payload, qos=1)
        self.client.publish(f"{base}/state", payload, qos=1, retain=True)
        with self._lock:
            self._op_states[change.asset] = payload.encode()
        self.published += 1

    def _publish(self, asset: str, event: dict, state: dict) -> None:
        retained = json.dumps(state).encode()
        with self._lock:
            self._states[asset] = retained
        self.client.publish(f"{self.prefix}/{asset}/events", json.dumps(event), qos=1)
        self.client.publish(f"{self.prefix}/{asset}/state", retained, qos=1, retain=True)
        self.published += 1

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("alarm notifier: connect refused reason=%s", reason_code)
            return
        self.connected = True
        log.info("alarm notifier: connected host=%s port=%s", self.broker.host, self.broker.port)
        with self._lock:
            states = dict(self._states)
            op_states = dict(self._op_states)
        for asset, state in states.items():
            client.publish(f"{self.prefix}/{asset}/state", state, qos=1, retain=True)
        for asset, state in op_states.items():
            client.publish(f"{self.prefix}/{asset}/operating_point/state", state, qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected and not self._stopping:
            log.warning("alarm notifier: disconnected reason=%s", reason_code)
        self.connected = False

    def status(self) -> dict:
        return {"connected": self.connected, "published": self.published}
