"""Reconnect pacing shared by every connection that retries a server.

Inputs (MQTT, OPC-UA) and outputs (InfluxDB history, cloud uplink) that lose
their server wait between attempts with :func:`jittered_backoff`; a loop that
must also notice shutdown sleeps with :func:`sleep_backoff`.
"""

from __future__ import annotations

import asyncio
import random


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
