"""MQTT input plugin: subscribe to sensor topics and turn JSON messages into readings.

The session (connecting, acknowledging after storing, backpressure, bounds) is
:class:`appliance.connectors.mqtt_session.MqttSession`, shared with the Sparkplug
B input; this module says what is subscribed to and how a JSON message reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection

from appliance.connections.config import MqttBroker
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.payload import TopicRoute, TopicRouter, parse_payload
from appliance.connectors.mqtt_session import MqttSession
from appliance.core import DeadLetterCode
from appliance.core.timebase import GatewayClock


class MqttConnector(MqttSession):
    """Connector for JSON sensor payloads over MQTT (see the package README)."""

    kind = "mqtt"

    def __init__(self, cfg: MqttInputConfig, broker: MqttBroker,
                 known_sensors: Callable[[str], Collection[str]] | None = None,
                 name: str = "mqtt", clock: GatewayClock | None = None, retained_refusals: Path | None = None):
        """``retained_refusals``: the file of retained messages refused before (None: remembered in memory)."""
        self.router = TopicRouter([TopicRoute(t.pattern, t.asset, t.historical) for t in cfg.topics])
        self._known_sensors = known_sensors
        super().__init__(cfg, broker, name=name, clock=clock, retained_refusals=retained_refusals)

    def subscriptions(self) -> tuple[str, ...]:
        return tuple(self.router.subscriptions)

    def _parse(self, topic: str | None, msg, now: float, oversize: int = 0):
        unreadable = self._unreadable(topic, msg, now, oversize)
        if unreadable is not None:
            return [], [unreadable]
        route = self.router.route(topic)
        if route is None:
            # Reachable through a retained message or broker-side topic mapping;
            # kept, not silently dropped.
            why = f"{topic!r} matches no configured pattern"
            return [], [self._dead(topic, msg, now, DeadLetterCode.BAD_TOPIC, why)]
        asset = route.asset
        if asset:
            why = self.admission.asset(asset)
            if why is not None:
                return [], [self._dead(topic, msg, now, DeadLetterCode.UNKNOWN_ASSET, why)]
            known = (self._known_sensors(asset) if self._known_sensors is not None
                     else self.admission.sensors(asset))
        else:
            known = None  # refused by parse_payload as an empty asset level
        cfg = self.cfg
        return parse_payload(route, msg.payload, now, topic=topic, source=self.name, known_sensors=known,
                             min_timestamp=cfg.min_timestamp, max_future_skew_s=cfg.max_future_skew_s,
                             max_payload_bytes=cfg.max_payload_bytes, ts_unit=cfg.ts_unit,
                             value_range=self.value_range, observe_ts=self._observe_ts)
