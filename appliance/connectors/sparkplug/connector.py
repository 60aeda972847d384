"""Sparkplug B input plugin: a non-primary host application on its own MQTT session.

The session (connecting, PUBACK only after storing, backpressure, bounds) is
:class:`~appliance.connectors.mqtt_session.MqttSession`, the JSON input's; what a
message means is :class:`~appliance.connectors.sparkplug.host.SparkplugHost`'s.
This module joins them: it hands each message to the host, publishes the rebirth
requests the host asks for (NCMD ``Node Control/Rebirth``, QoS 0 as the
specification has commands), ticks the host once a second so a ``seq`` gap that
outlasts the reorder wait is noticed without another message, and tells the gap
detector and the watchdog (:meth:`silenced`) which sensors a death silenced.
It publishes no ``STATE``: it is not the primary host, and never delays an edge
node's births.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Collection

from appliance.connections.config import MqttBroker
from appliance.connections.sparkplug import DataType, MessageType, Payload, node_topic
from appliance.connectors.mqtt_session import MqttSession
from appliance.connectors.sparkplug.config import SparkplugInputConfig
from appliance.connectors.sparkplug.host import REBIRTH_METRIC, Outcome, SparkplugHost
from appliance.core.timebase import GatewayClock

log = logging.getLogger(__name__)

TICK_S = 1.0


def rebirth_request(now_ms: int) -> bytes:
    """The NCMD payload asking an edge node to publish its births again.

    >>> p = Payload.FromString(rebirth_request(1_700_000_000_000))
    >>> p.metrics[0].name, p.metrics[0].datatype == DataType.Boolean, p.metrics[0].boolean_value
    ('Node Control/Rebirth', True, True)
    """
    p = Payload(timestamp=now_ms)
    p.metrics.add(name=REBIRTH_METRIC, timestamp=now_ms, datatype=DataType.Boolean, boolean_value=True)
    return p.SerializeToString()


class SparkplugConnector(MqttSession):
    """Reads Sparkplug B edge nodes (see the package README)."""

    kind = "sparkplug"

    def __init__(self, cfg: SparkplugInputConfig, broker: MqttBroker, known_sensors: Collection[str] = (),
                 name: str = "sparkplug", clock: GatewayClock | None = None,
                 retained_refusals: Path | None = None):
        super().__init__(cfg, broker, name=name, clock=clock, retained_refusals=retained_refusals)
        self.host = SparkplugHost(cfg, source=name, admission=self.admission, value_range=self.value_range,
                                  known_sensors=known_sensors, observe_ts=self._observe_ts)
        self._declared: list[tuple[str, str]] = []
        self._ticker: asyncio.Task | None = None

    def subscriptions(self) -> tuple[str, ...]:
        return self.cfg.subscriptions()

    async def start(self, sink) -> None:
        await super().start(sink)
        self._ticker = asyncio.create_task(self._tick_forever(), name=f"{self.name}-seq-ticker")

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            try:
                await ticker
            except asyncio.CancelledError:
                pass
        await super().stop()

    def silenced(self) -> list[tuple[str, str]]:
        out, self._declared = self._declared, []
        return out

    def status(self) -> dict:
        out = super().status()
        out["sparkplug"] = self.host.status()
        return out

    # -- messages (on the loop, from the session) ------------------------------------

    def _parse(self, topic: str | None, msg, now: float, oversize: int = 0):
        unreadable = self._unreadable(topic, msg, now, oversize)
        if unreadable is not None:
            if oversize and topic is not None:
                self.host.birth_too_large(topic)  # a birth refused from its header backs off its node's rebirths
            return [], [unreadable]
        out = self.host.handle(topic, msg.payload, now)
        if out.rebirths or out.silenced:
            self._after(out)
        return out.readings, out.dead

    def _after(self, out: Outcome) -> None:
        """Rebirth requests out; sensors a death silenced to the gap detector and, through the runtime, the watchdog."""
        for group, node in out.rebirths:
            self._request_rebirth(group, node)
        gone = out.silenced
        if gone:
            gaps = self.gaps
            if gaps is not None:
                for asset, sensor in gone:
                    gaps.interrupt(asset, sensor)
            self._declared.extend(gone)
            log.info("sparkplug sensors_silenced name=%s count=%d (edge node or device death)", self.name, len(gone))

    def _request_rebirth(self, group: str, node: str) -> None:
        client = self._client
        if client is None or not self._connected:
            self._inc("rebirth_requests_unsent")
            return
        topic = node_topic(group, MessageType.NCMD, node)
        try:
            client.publish(topic, rebirth_request(int(time.time() * 1000)), qos=0)
        except (RuntimeError, ValueError) as e:  # paho refuses while disconnecting
            self._inc("rebirth_requests_unsent")
            log.debug("sparkplug rebirth_not_sent name=%s topic=%s error=%s", self.name, topic, e)
            return
        self._logs.log(logging.INFO, ("rebirth", group, node), "sparkplug rebirth_requested name=%s group=%s "
                       "node=%s", self.name, group, node)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._after(self.host.tick())
            except Exception:  # noqa: BLE001 - the ticker must outlive one bad turn
                self._inc("internal_errors")
                log.exception("sparkplug tick_failed name=%s", self.name)
