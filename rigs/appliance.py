"""Run a real appliance (built from config, as `appliance run` does) for tests."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from appliance.config import parse_config
from appliance.runtime import build
from rigs.wait import wait_until


def make_config(tmp_path: Path, broker_port: int, bundle: Path, **overrides):
    data = {
        "data_dir": str(tmp_path / "data"),
        "log_level": "WARNING",
        "connections": {"mqtt": {"port": broker_port, "reconnect": {"initial_s": 0.2, "max_s": 1.0}}},
        "detector": {"bundle": str(bundle)},
        "web": {"enabled": False},
        "outputs": {"history": {"enabled": False}},
    }
    for dotted, value in overrides.items():
        node = data
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return parse_config(data, "test")


def wait_online(port, timeout=60.0, topic="appliance/status"):
    online = threading.Event()

    def on_message(c, u, m):
        if json.loads(m.payload).get("state") == "online":
            online.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="status-watcher")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    try:
        assert online.wait(timeout), "appliance never reported online"
    finally:
        sub.disconnect()
        sub.loop_stop()


class RunningAppliance:
    """``clock``: a :class:`~appliance.core.timebase.GatewayClock` in place of the system's (a wrong one)."""

    def __init__(self, cfg, clock=None):
        self.cfg = cfg
        self.clock = clock
        self.app = None
        self._loop = None
        self._stop = None
        self._thread = None
        self._ready = threading.Event()
        self._error = None
        self.events = []

    def __enter__(self):
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("appliance did not start")
        if self._error:
            raise self._error
        if self.cfg.inputs.mqtt.enabled:
            wait_online(self.cfg.connections.mqtt.port, topic=self.cfg.inputs.mqtt.status_topic)
        return self

    def _main(self):
        async def run():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self.app = build(self.cfg, clock=self.clock)
                self.app.add_event_listener(self.events.append)
                await self.app.start()
            except BaseException as e:  # surfaced in __enter__
                self._error = e
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.app.shutdown()
        asyncio.run(run())

    def __exit__(self, *exc):
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def wait_until(self, predicate, timeout=60.0, what="condition"):
        """:func:`~rigs.wait.wait_until`, telling the appliance's status if it times out."""
        return wait_until(predicate, timeout, what, interval=0.05,
                          detail=lambda: f"status={json.dumps(self.app.status(), default=str)[:2000]}")

    def counter(self, name):
        return self.app.counters.get(name)


class Publisher:
    """A QoS 1 publisher with a persistent session, so its in-flight messages survive a broker restart."""

    def __init__(self, port: int, client_id: str = "test-publisher"):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.max_inflight_messages_set(50)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.acked: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, props: self.acked.add(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos = []

    def publish(self, topic: str, doc, qos: int = 1):
        payload = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
        info = self.client.publish(topic, payload, qos=qos)
        self.infos.append(info)
        return info

    def wait_all(self, timeout: float = 60.0):
        # Not wait_for_publish()/is_published(): they raise for a message queued while
        # disconnected (rc NO_CONN), which paho still delivers after it reconnects.
        mids = {info.mid for info in self.infos}
        wait_until(lambda: mids <= self.acked, timeout, "every publish acknowledged",
                   detail=lambda: f"{len(mids - self.acked)} not acknowledged")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
