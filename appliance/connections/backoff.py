"""The one small interface every input plugin implements (Telegraf-style).

A connector turns its protocol into :class:`~appliance.core.Reading` records and
hands them to an :class:`~appliance.core.IngestSink`. Anything it cannot turn
into a reading (bad payload, bad quality it must not pass on as good, unknown
sensor) goes to the sink as a :class:`~appliance.core.DeadLetter` with a reason.
"""

from __future__ import annotations

import asyncio
import random
from typing import Protocol

from appliance.core import IngestSink


class Connector(Protocol):
    name: str

    async def start(self, sink: IngestSink) -> None:
        """Connect and begin delivering readings; returns once started (not connected)."""

    async def stop(self) -> None:
        """Stop delivering and release the connection."""

    def status(self) -> dict:
        """Counters and connection state for the status API."""


def jittered_backoff(initial_s: float, max_s: float):
    """Yield delays for reconnect attempts: exponential with full jitter.

    Full jitter keeps a fleet of gateways that lost the same server from
    reconnecting in lock-step.

    >>> delays = jittered_backoff(0.5, 4.0)
    >>> all(0 <= next(delays) <= 4.0 for _ in range(10))
    True
    """
    attempt = 0
    while True:
        cap = min(max_s, initial_s * (2 ** attempt))
        yield random.uniform(initial_s / 2, cap)
        attempt = min(attempt + 1, 30)


async def sleep_backoff(delays, stop: asyncio.Event) -> bool:
    """Sleep for the next backoff delay; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=next(delays))
        return True
    except asyncio.TimeoutError:
        return False
