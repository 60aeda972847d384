"""An asyncio event loop on a thread of its own, for tests that drive loop-bound code from plain threads.

The MQTT connector runs on the loop that started it, so a test that starts it and
then waits on the test thread needs a loop that keeps running in between.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """One loop for the whole test session, running on a daemon thread."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="test-loop", daemon=True).start()
            _loop = loop
        return _loop


def on_loop(coro: Coroutine, timeout: float = 120.0) -> Any:
    """Run ``coro`` on the background loop and return its result (from any thread but the loop's)."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop()).result(timeout)
