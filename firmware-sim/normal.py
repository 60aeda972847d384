"""Simulated normal operation of the pump, written to a CSV file for training.

The file has a ``ts`` column (UNIX seconds, three decimals) and one column per
sensor in :data:`.pump.SENSORS` order, six significant digits, one row every
``1/rate_hz`` seconds of simulated time starting at ``t0``. The same seed, row
count and rate always give the same bytes, so a model trained on the file is
reproducible (the appliance demo trains on ``rows=12000, rate_hz=10, seed=7``).

>>> import io
>>> buf = io.StringIO()
>>> write_normal_rows(buf, rows=2, rate_hz=10, seed=7)
2
>>> lines = buf.getvalue().splitlines()
>>> lines[0].split(",")[:2], lines[1].split(",")[0], lines[2].split(",")[0]
(['ts', 'Accelerometer1RMS'], '1700000000.000', '1700000000.100')
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import TextIO

try:
    from .pump import PumpModel
except ImportError:  # run as a script: firmware-sim/ is sys.path[0]
    from pump import PumpModel  # type: ignore[no-redef]

DEFAULT_T0 = 1_700_000_000.0


def write_normal_rows(f: TextIO, rows: int, rate_hz: float, seed: int | None = None,
                      t0: float = DEFAULT_T0) -> int:
    """Write the header and ``rows`` samples of a fault-free pump to ``f``; return the row count."""
    if not (isinstance(rows, int) and rows >= 1):
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate must be > 0 samples per second, got {rate_hz!r}")
    pump = PumpModel(seed=seed)
    dt = 1.0 / rate_hz
    w = csv.writer(f)
    sensors: list[str] = []
    for i in range(rows):
        values = pump.step(dt)
        if i == 0:
            sensors = list(values)
            w.writerow(["ts", *sensors])
        # Timestamps are t0 + i*dt, not an accumulated sum, so no rounding error creeps into long files.
        w.writerow([f"{t0 + i * dt:.3f}", *(f"{values[s]:.6g}" for s in sensors)])
    return rows


def write_normal_csv(path: str | Path, rows: int = 12_000, rate_hz: float = 10.0, seed: int | None = None,
                     t0: float = DEFAULT_T0) -> Path:
    """Write :func:`write_normal_rows` to ``path``, replacing it only once the file is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # newline="" lets the csv module end rows with \r\n as it always did: the same bytes as before.
        with tmp.open("w", newline="") as f:
            write_normal_rows(f, rows, rate_hz, seed, t0)
        # A reader (or a trainer started after an interrupted run) never sees half a file.
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
