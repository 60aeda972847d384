"""Output plugins for alarm events: one small interface, like Telegraf outputs.

A notifier gets every :class:`~appliance.core.AlarmEvent` through ``notify``,
which must never block the detection path. The store already holds every event,
so a notifier that cannot deliver now republishes the current state when its
far side returns.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Protocol

import paho.mqtt.client as mqtt

from appliance.connectors.mqtt import build_tls_context
from appliance.core import AlarmEvent

log = logging.getLogger(__name__)


class Notifier(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def notify(self, event: AlarmEvent) -> None: ...

    def status(self) -> dict: ...


def configure_paho(client: mqtt.Client, broker) -> None:
    """Apply credentials and TLS from an ``MqttBroker`` config section."""
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls.enabled:
        client.tls_set_context(build_tls_context(broker.tls))


class MqttAlarmNotifier:
    """Publishes alarm events on ``{prefix}/{asset}/events`` (QoS 1) and the
    current state retained on ``{prefix}/{asset}/state``, so a panel or SCADA
    subscribing late still sees every asset's alarm state.

    Paho queues QoS 1 messages while the broker is away (bounded); on every
    (re)connect the retained states are published again from memory.
    """

    name = "mqtt_alarm"

    def __init__(self, cfg, broker, max_queued: int = 10_000):
        self.cfg = cfg
        self.broker = broker
        self.prefix = cfg.topic_prefix.rstrip("/")
        self._states: dict[str, bytes] = {}
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

    def start(self) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def notify(self, event: AlarmEvent) -> None:
        asset = event.alarm.asset
        state = json.dumps(event.alarm.to_dict() | {"event": event.kind, "ts": event.ts}).encode()
        with self._lock:
            self._states[asset] = state
        self.client.publish(f"{self.prefix}/{asset}/events", json.dumps(event.to_dict()), qos=1)
        self.client.publish(f"{self.prefix}/{asset}/state", state, qos=1, retain=True)
        self.published += 1

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("alarm notifier: connect refused reason=%s", reason_code)
            return
        self.connected = True
        log.info("alarm notifier: connected host=%s port=%s", self.broker.host, self.broker.port)
        with self._lock:
            states = dict(self._states)
        for asset, state in states.items():
            client.publish(f"{self.prefix}/{asset}/state", state, qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected and not self._stopping:
            log.warning("alarm notifier: disconnected reason=%s", reason_code)
        self.connected = False

    def status(self) -> dict:
        return {"connected": self.connected, "published": self.published}
