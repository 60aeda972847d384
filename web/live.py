"""Live updates: alarm events and mode changes pushed to the pages as server-sent events.

The appliance calls :meth:`LiveHub.publish` on its event loop for every alarm
event and mode change (``add_event_listener``); that call only appends to a
bounded ring and wakes the waiting streams, so detection never waits for a
browser. Each ``GET /api/events`` stream runs on one server thread: it sends
what was published since the client's last event id (so a reconnect misses
nothing still in the ring), a comment line every ``PING_S`` to keep proxies and
the browser's idle timers happy, and ends after ``STREAM_MAX_S`` (the browser
reconnects at once, and the session is checked again). At most ``max_streams``
run at once; beyond that a client is told to retry later and keeps polling.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Iterator

RING = 256
PING_S = 5.0  # also how soon a stream of a closed page is noticed and its slot freed
STREAM_MAX_S = 300.0
RETRY_MS = 3000


class LiveHub:
    def __init__(self, max_streams: int = 8):
        self.max_streams = max_streams
        self._cond = threading.Condition()
        self._ring: deque[tuple[int, str, dict]] = deque(maxlen=RING)
        self._seq = 0
        self._streams = 0
        self._closed = False
        self.published = 0
        self.refused = 0

    # -- the appliance's side (its event loop) ---------------------------------------
    def publish(self, kind: str, data: dict) -> None:
        with self._cond:
            self._seq += 1
            self.published += 1
            self._ring.append((self._seq, kind, data))
            self._cond.notify_all()

    def on_change(self, change) -> None:
        """``Appliance.add_event_listener`` callback: an AlarmEvent or a ModeChange."""
        alarm = getattr(change, "alarm", None)
        if alarm is not None and hasattr(change, "kind"):
            self.publish("alarm", {"kind": str(change.kind.value if hasattr(change.kind, "value") else change.kind),
                                   "asset": alarm.asset, "alarm_id": alarm.id, "user": change.user})
        else:
            self.publish("mode", {"event": getattr(change, "name", ""), "asset": getattr(change, "asset", ""),
                                  "user": getattr(change, "user", "")})

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the web's side (one server thread per stream) ---------------------------------
    @property
    def streams(self) -> int:
        return self._streams

    def try_open(self) -> bool:
        with self._cond:
            if self._closed or self._streams >= self.max_streams:
                self.refused += 1
                return False
            self._streams += 1
            return True

    def stream(self, last_id: int | None, max_s: float = STREAM_MAX_S, ping_s: float = PING_S) -> Iterator[bytes]:
        """The event stream for one client; call :meth:`try_open` first (this releases the slot at its end)."""
        try:
            with self._cond:
                after = self._seq if last_id is None or last_id > self._seq else last_id
            yield f"retry: {RETRY_MS}\n: live\n\n".encode()
            end = time.monotonic() + max_s
            while True:
                now = time.monotonic()
                if now >= end:
                    return
                with self._cond:
                    if self._closed:
                        return
                    fresh = [e for e in self._ring if e[0] > after]
                    if not fresh:
                        self._cond.wait(min(ping_s, end - now))
                        if self._closed:
                            return
                        fresh = [e for e in self._ring if e[0] > after]
                if fresh:
                    after = fresh[-1][0]
                    yield b"".join(f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
                                   for seq, kind, data in fresh)
                else:
                    yield b": ping\n\n"
        finally:
            with self._cond:
                self._streams -= 1

    def status(self) -> dict:
        return {"streams": self._streams, "max_streams": self.max_streams, "published": self.published,
                "refused": self.refused}
