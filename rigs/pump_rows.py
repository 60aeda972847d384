"""Correlated pump-like rows (current, pressure, temperature, flow): the detector tests' and the fleet's data.

``tests/support/detector.py`` re-exports them for the tests; ``benchmarks/fleet_poisoning.py``
trains its fleet on them, as ``tests/test_fleet*.py`` do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

T0 = 1_700_000_000.0
SENSORS = ["Current", "Pressure", "Temperature", "Flow"]


def normal_rows(n: int, seed: int) -> np.ndarray:
    """Correlated sensors: flow and pressure follow the current, temperature lags it."""
    rng = np.random.default_rng(seed)
    t = np.arange(-19, n)
    full = 1.0 + 0.3 * np.sin(t / 40.0) + 0.1 * np.sin(t / 7.0)
    load = full[19:]
    current = load + 0.05 * rng.standard_normal(n)
    pressure = 2.0 * load + 0.08 * rng.standard_normal(n)
    lagged = np.convolve(full, np.ones(20) / 20, mode="valid")
    temperature = 60.0 + 5.0 * lagged + 0.1 * rng.standard_normal(n)
    flow = 30.0 * load + 1.0 * rng.standard_normal(n)
    return np.stack([current, pressure, temperature, flow], axis=1)


def operating_point(rows: np.ndarray, load: float) -> np.ndarray:
    """The same pump at another load: current, pressure and flow scale, temperature rises with it."""
    out = rows.copy()
    out[:, [0, 1, 3]] *= load
    out[:, 2] += 8.0 * (load - 1.0)
    return out


def write_csv(path: Path, rows: np.ndarray, t0: float = T0) -> Path:
    """``rows`` as a CSV file with a ``ts`` column, one row a second from ``t0`` (what ``--data`` reads)."""
    lines = ["ts," + ",".join(SENSORS)] + [f"{t0 + i:.1f}," + ",".join(f"{v:.6f}" for v in r)
                                         for i, r in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path
