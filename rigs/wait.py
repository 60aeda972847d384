"""Waiting for something to happen, the one way the tests do it.

A test waits for an outcome, never for a fixed time: :func:`wait_until` polls a
predicate until it holds and fails with a message naming what never happened.
The timeouts are generous on purpose (the suite shares two cores with whatever
else runs); they only bound how long a broken test takes to say so.

Code running on an event loop awaits :func:`wait_until_async` instead: a
blocking poll there would freeze the very loop (connector, mitigator) it waits
for. Both share the deadline and the failure message.

The deadline runs on a :class:`~appliance.core.clock.SteadyClock`: a clock that
leaps (a VM paused and resumed) must not fail a wait that never got its time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable

from appliance.core.clock import SteadyClock

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_INTERVAL_S = 0.02


class _Deadline:
    def __init__(self, timeout: float, what: str, detail: Callable[[], str] | None):
        self.timeout, self.what, self.detail = timeout, what, detail
        self.clock = SteadyClock()
        self.end = timeout

    def passed(self) -> bool:
        return self.clock() > self.end

    def fail(self, last: Any) -> AssertionError:
        shown = repr(last)
        shown = shown if len(shown) <= 300 else shown[:300] + "..."
        msg = f"timed out after {self.timeout:g}s waiting for {self.what} (last value {shown})"
        if self.detail is not None:
            msg += f"; {self.detail()}"
        return AssertionError(msg)


def wait_until(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition",
               interval: float = DEFAULT_INTERVAL_S, detail: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that.

    On timeout raise :class:`AssertionError` naming ``what``, the last value seen
    and, if given, ``detail()`` (e.g. the appliance's status at that moment).
    """
    deadline = _Deadline(timeout, what, detail)
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            raise TypeError("wait_until got an async predicate: await wait_until_async(...) instead")
        if last:
            return last
        if deadline.passed():
            raise deadline.fail(last)
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S,
                           what: str = "condition", interval: float = DEFAULT_INTERVAL_S,
                           detail: Callable[[], str] | None = None) -> Any:
    """:func:`wait_until` for code on an event loop; ``predicate`` may be sync or async."""
    deadline = _Deadline(timeout, what, detail)
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if deadline.passed():
            raise deadline.fail(last)
        await asyncio.sleep(interval)
