"""In-memory stand-ins for the two ends the tests do not want to be real.

:class:`MemorySink` is where an input delivers (the appliance's ``IngestSink``);
:class:`FakeWriter` is the PLC a mitigator reads and writes (``PlcSession``'s
``read``/``write``).
"""

from __future__ import annotations

import threading

from appliance.core import Quality


class MemorySink:
    """Collects what an input delivered; thread-safe, as the real sink must be.

    With ``ack=True`` every batch is acknowledged at once (``on_stored`` called), as
    if stored; with ``ack=False`` the callbacks are kept in ``held`` for the test to
    call when, and in the order, it wants.
    """

    def __init__(self, ack: bool = True):
        self.lock = threading.Lock()
        self.readings = []
        self.dead = []
        self.batches = 0
        self.ack = ack
        self.held = []

    def submit(self, readings, dead_letters=(), on_stored=None):
        with self.lock:
            self.readings.extend(readings)
            self.dead.extend(dead_letters)
            self.batches += 1
            if on_stored is not None and not self.ack:
                self.held.append(on_stored)
        # Outside the lock: acknowledging may call back into the input.
        if on_stored is not None and self.ack:
            on_stored()

    def of(self, sensor: str) -> list:
        """The readings of one sensor, in arrival order."""
        with self.lock:
            return [r for r in self.readings if r.sensor == sensor]

    def values(self, sensor: str = "Current") -> list[float]:
        """The values of one sensor, in arrival order."""
        return [r.value for r in self.of(sensor)]

    def count(self) -> int:
        with self.lock:
            return len(self.readings)


class FakeWriter:
    """A PLC as a dict of node values, every read of GOOD quality; ``writes`` lists what was written."""

    def __init__(self, values):
        self.values = dict(values)
        self.writes = []

    async def read(self, nodes):
        return [(self.values.get(n), Quality.GOOD) for n in nodes]

    async def write(self, node, value):
        self.writes.append((node, value))
        self.values[node] = value
