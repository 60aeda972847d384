"""A slow continuous multivariate process (a chemical-plant-like unit), for detector development without labels.

52 sensors sampled every ``period_s`` (default 180 s): 42 measurements and the
positions of 10 manipulated valves. Underneath:

* 5 **latent disturbances** (feed compositions, cooling-water temperature, ...):
  AR(1) processes with time constants of one to four hours. Each *run* draws its
  own disturbance spreads (log-normal around 1) and a small operating-point
  offset, so independent runs differ from each other the way independent
  records of a real plant do, not only by noise;
* 10 **process states** with first-order dynamics (time constants 10-60 min),
  driven by the disturbances and the valves; 6 of them are held at their set
  points by PI controllers acting on valves 1-6 (so a disturbance that the
  controllers absorb shows mostly in valve positions, as in a real plant);
* **measurements**: each a mix of 2-4 states and valves, with an offset, a unit
  scale and its own measurement noise.

Fault classes (:data:`FAULTS`), each with one ``magnitude`` knob:
``feed_step`` (a step in one disturbance), ``drift`` (a slow ramp in one),
``variance`` (one disturbance's random variation multiplied), ``sticky_valve``
(a valve moves only when its command is further than a dead band away),
``stuck_sensor`` (one measurement freezes), ``small_step`` (a small step in a
disturbance the controllers absorb almost entirely: nearly invisible). At
magnitude 1 the sticky valve is as invisible as the small step: its dead band is
small against the valve's normal travel and its position sensor reads the
command, so even a classifier trained with the labels finds it in at most 5 %
of its windows (``benchmarks/detectability.py``).

The plant itself (its matrices) is fixed by ``plant_seed``; ``seed`` draws one
run. Same seeds, same bytes.

>>> sim = ProcessModel(seed=1)
>>> rows = sim.run(3)
>>> rows.shape, len(SENSORS)
((3, 52), 52)
>>> bool(np.allclose(ProcessModel(seed=1).run(3), rows))
True
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_DIST, N_STATE, N_MV, N_MEAS = 5, 10, 10, 42
N_CONTROLLED = 6
SENSORS = [f"meas{i + 1:02d}" for i in range(N_MEAS)] + [f"valve{i + 1:02d}" for i in range(N_MV)]
FAULTS = ("feed_step", "drift", "variance", "sticky_valve", "stuck_sensor", "small_step")
# The harder plant regime adds a step its loops absorb: it shows in a valve and the loop's effort only.
PLANT_FAULTS = (*FAULTS, "compensated_step")
DEFAULT_T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Plant:
    """The fixed structure of the unit (drawn once from ``plant_seed``)."""

    a: np.ndarray        # (N_STATE,) state pole per step
    b_mv: np.ndarray     # (N_STATE, N_MV)
    b_dist: np.ndarray   # (N_STATE, N_DIST)
    c_state: np.ndarray  # (N_MEAS, N_STATE)
    c_mv: np.ndarray     # (N_MEAS, N_MV)
    offset: np.ndarray   # (N_MEAS,)
    unit: np.ndarray     # (N_MEAS,)
    noise: np.ndarray    # (N_MEAS,) measurement noise (in state units, before ``unit``)
    dist_tau_s: np.ndarray  # (N_DIST,)

    @classmethod
    def draw(cls, seed: int, period_s: float) -> "Plant":
        r = np.random.default_rng(seed)
        tau = r.uniform(600, 3600, N_STATE)
        a = np.exp(-period_s / tau)
        b_mv = r.normal(0, 0.01, (N_STATE, N_MV))
        for i in range(N_CONTROLLED):  # each controlled state has a strong valve of its own
            b_mv[i, i] = 1.0 * (1 - a[i])
        b_mv[N_CONTROLLED:, :] *= 3.0
        b_dist = r.normal(0, 1.0, (N_STATE, N_DIST)) * (1 - a)[:, None] * 3.0
        c_state = np.zeros((N_MEAS, N_STATE))
        c_mv = np.zeros((N_MEAS, N_MV))
        for j in range(N_MEAS):
            states = r.choice(N_STATE, size=r.integers(2, 5), replace=False)
            c_state[j, states] = r.normal(0, 1.0, len(states))
            if r.random() < 0.3:
                c_mv[j, r.integers(N_MV)] = r.normal(0, 0.5)
        offset = r.uniform(-50, 200, N_MEAS)
        unit = 10.0 ** r.uniform(-1, 1.5, N_MEAS)
        noise = r.uniform(0.05, 0.25, N_MEAS)
        return cls(a, b_mv, b_dist, c_state, c_mv, offset, unit, noise, r.uniform(3600, 4 * 3600, N_DIST))


@dataclass
class Fault:
    kind: str
    start: int            # row index at which it begins
    magnitude: float = 1.0
    target: int = 0       # disturbance, valve or measurement index
    end: int | None = None  # row index at which it is over (None: it lasts to the end of the run)

    def active_at(self, t: int) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


class PlantLife:
    """What a real plant does over days that the rig's runs did not: operating-point moves, slow drifts
    over several hours and changes of noise level (``regime="plant"``).

    * every 8-30 h (uniform) the controlled states' set points move by N(0, 0.3) each;
    * each disturbance carries an extra slow component (AR(1), time constant 6 h, sd 0.6);
    * every 4-16 h the measurement noise level changes to a log-uniform draw in [0.6, 1.8].
    """

    def __init__(self, rng: np.random.Generator, period_s: float):
        self.r = rng
        self.period_s = period_s
        self.phi = math.exp(-period_s / (6 * 3600.0))
        self.drift = self.r.normal(0, 0.6, N_DIST)
        self.noise_level = 1.0
        self._next_move = self._rows(8, 30)
        self._next_noise = self._rows(4, 16)
        self._moved = np.zeros(N_CONTROLLED)

    def _rows(self, lo_h: float, hi_h: float) -> int:
        return max(1, int(self.r.uniform(lo_h, hi_h) * 3600.0 / self.period_s))

    def setpoint(self, current: np.ndarray) -> np.ndarray:
        self._next_move -= 1
        if self._next_move > 0:
            return current
        self._next_move = self._rows(8, 30)
        return current + self.r.normal(0, 0.3, N_CONTROLLED)

    def advance(self) -> None:
        self.drift = self.phi * self.drift + math.sqrt(1 - self.phi ** 2) * self.r.normal(0, 0.6, N_DIST)
        self._next_noise -= 1
        if self._next_noise <= 0:
            self._next_noise = self._rows(4, 16)
            self.noise_level = float(math.exp(self.r.uniform(math.log(0.6), math.log(1.8))))


class ProcessModel:
    """One run of the process. ``run(n)`` returns ``(n, 52)`` rows in :data:`SENSORS` order."""

    def __init__(self, seed: int = 0, period_s: float = 180.0, plant_seed: int = 14, run_spread: float = 0.25,
                 fault: Fault | None = None, regime: str = "rig"):
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        if fault is not None and fault.kind not in PLANT_FAULTS:
            raise ValueError(f"unknown fault {fault.kind!r}; one of {PLANT_FAULTS}")
        if regime not in ("rig", "plant"):
            raise ValueError(f"regime must be 'rig' or 'plant', got {regime!r}")
        self.period_s = period_s
        self.plant = Plant.draw(plant_seed, period_s)
        self.fault = fault
        self.rng = np.random.default_rng(seed)
        r = self.rng
        # What makes runs differ beyond noise: each run's disturbances are more or less lively,
        # and the unit runs at a slightly different point.
        self.dist_sigma = np.exp(r.normal(0, run_spread, N_DIST))
        self.phi = np.exp(-period_s / self.plant.dist_tau_s)
        self.setpoint = r.normal(0, 0.15 * run_spread, N_CONTROLLED)
        self.mv_bias = r.normal(0, 0.1 * run_spread, N_MV)
        self.dist = r.normal(0, 1.0, N_DIST) * self.dist_sigma  # start in the stationary distribution
        self.x = np.zeros(N_STATE)
        self.integral = np.zeros(N_CONTROLLED)
        self.valve = self.mv_bias.copy()
        self.t = 0
        self.frozen: np.ndarray | None = None
        # The plant regime draws from its own generator, so "rig" runs stay byte for byte what they were.
        self.life = PlantLife(np.random.default_rng([seed, 1]), period_s) if regime == "plant" else None
        for _ in range(200):  # settle the states and controllers before the first recorded row
            self._advance(record=False)
        self.t = 0

    def _advance(self, record: bool = True) -> np.ndarray:
        p, f, r = self.plant, self.fault, self.rng
        active = f is not None and record and f.active_at(self.t)
        shock_sigma = self.dist_sigma.copy()
        if active and f.kind == "variance":
            shock_sigma[f.target] *= 1.0 + 5.0 * f.magnitude
        self.dist = self.phi * self.dist + np.sqrt(1 - self.phi ** 2) * shock_sigma * r.normal(0, 1, N_DIST)
        dist = self.dist.copy()
        noise_level = 1.0
        if self.life is not None:
            dist += self.life.drift
            noise_level = self.life.noise_level
            self.setpoint = self.life.setpoint(self.setpoint)
            self.life.advance()
        if active and f.kind == "feed_step":
            dist[f.target] += 8.0 * f.magnitude
        if active and f.kind == "compensated_step":
            # Enters only a controlled state: its loop holds the measurement, its valve stays moved.
            self.x[f.target % N_CONTROLLED] += 4.0 * f.magnitude * (1 - p.a[f.target % N_CONTROLLED])
        if active and f.kind == "small_step":
            dist[f.target] += 0.3 * f.magnitude
        if active and f.kind == "drift":
            dist[f.target] += 10.0 * f.magnitude * min(1.0, (self.t - f.start) / 200.0)
        # PI control of the first states with valves 1-6 (command), valves 7-10 held with small moves.
        error = self.x[:N_CONTROLLED] - self.setpoint
        self.integral += error
        command = self.mv_bias.copy()
        command[:N_CONTROLLED] += -2.0 * error - 0.2 * self.integral
        command[N_CONTROLLED:] += 0.05 * r.normal(0, 1, N_MV - N_CONTROLLED)
        if active and f.kind == "sticky_valve":
            k = f.target % N_CONTROLLED
            dead_band = 1.0 * f.magnitude
            actual = self.valve.copy()
            if abs(command[k] - actual[k]) > dead_band:
                actual[k] = command[k]
            command_k = command[k]
            self.valve = command.copy()
            self.valve[k] = actual[k]
        else:
            command_k = None
            self.valve = command
        process_noise = r.normal(0, 0.02, N_STATE)
        self.x = p.a * self.x + p.b_mv @ self.valve + p.b_dist @ dist + process_noise
        meas = p.c_state @ self.x + p.c_mv @ self.valve + r.normal(0, 1, N_MEAS) * p.noise * noise_level
        meas = p.offset + p.unit * meas
        valves = 50.0 + 10.0 * self.valve + r.normal(0, 0.2, N_MV)
        if command_k is not None:
            # The valve's position sensor reads the controller's command, as a plant historian often does.
            valves[f.target % N_CONTROLLED] = 50.0 + 10.0 * command_k + r.normal(0, 0.2)
        row = np.concatenate([meas, valves])
        if active and f.kind == "stuck_sensor":
            if self.frozen is None:
                self.frozen = row.copy()
            row[f.target] = self.frozen[f.target]
        elif not active:
            self.frozen = None  # a sensor that comes back reads live values again
        self.t += 1
        return row

    def run(self, rows: int) -> np.ndarray:
        return np.stack([self._advance() for _ in range(rows)])


def write_process_csv(path: str | Path, rows: int, seed: int, period_s: float = 180.0, fault: Fault | None = None,
                      t0: float = DEFAULT_T0, plant_seed: int = 14, run_spread: float = 0.25,
                      regime: str = "rig") -> Path:
    """One run as a CSV (``ts`` in UNIX seconds, then the 52 sensors), written atomically.

    ``run_spread``: how much runs differ beyond noise (see :class:`ProcessModel`); 0 gives
    runs of one operating point and disturbance spread that differ only by their draws."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = ProcessModel(seed=seed, period_s=period_s, plant_seed=plant_seed, run_spread=run_spread,
                          fault=fault, regime=regime).run(rows)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ts", *SENSORS])
            for i, row in enumerate(values):
                w.writerow([f"{t0 + i * period_s:.3f}", *(f"{v:.6g}" for v in row)])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
