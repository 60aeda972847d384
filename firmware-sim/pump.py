"""A physical-ish centrifugal pump loop producing the SKAB sensor set.

The model is a pump (affinity laws: head ~ speed^2) pushing water through a pipe
and a control valve, solved at every step for the operating point where the pump
curve meets the system curve. Shaft power follows from flow and head, motor
current from shaft power, temperatures from the heat those produce (first-order
thermal lags), vibration from speed and bearing condition. Each sensor then adds
measurement noise shaped like the SKAB test bench's (magnitudes, white noise,
slow wander, the pressure transducer's and flow meter's quantisation), taken
from ``anomaly-free.csv``.

Slow wander uses time constants of seconds to minutes, not the hours visible in
SKAB, so that a model trained on twenty minutes of simulated normal operation
has seen the whole normal range and a live run starts inside it.

Inputs: :attr:`PumpModel.speed` (fraction of rated speed, 0..1.2) and
:attr:`PumpModel.valve` (fraction open, 0..1). Faults are injected with
:meth:`PumpModel.inject` and ramp in over a few seconds:

========================  ===================================================
``bearing_wear``          vibration (mostly Accelerometer1) and its noise rise,
                          friction adds current and motor heat
``cavitation``            head collapses in bursts: pressure and flow drop and
                          fluctuate, broadband vibration noise, fluid warms
``valve_blockage``        effective valve opening shrinks: flow down, pressure
                          up, current down (less hydraulic work)
``sensor_stuck``          one sensor (default flow) repeats its last value
``sensor_drift``          one sensor (default Temperature) drifts away linearly
========================  ===================================================

>>> pump = PumpModel(seed=1)
>>> sample = pump.step(1.0)
>>> list(sample) == list(SENSORS)
True
>>> 120 < sample["Volume Flow RateRMS"] < 130 and 85 < sample["Temperature"] < 94
True
>>> PumpModel(seed=3).step(0.1) == PumpModel(seed=3).step(0.1)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SENSORS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
           "Thermocouple", "Voltage", "Volume Flow RateRMS")

FAULTS = ("bearing_wear", "cavitation", "valve_blockage", "sensor_stuck", "sensor_drift")
DEFAULT_FAULT_SENSOR = {"sensor_stuck": "Volume Flow RateRMS", "sensor_drift": "Temperature"}

# Typical short-term spread of each sensor in SKAB's anomaly-free run: the unit a
# sensor drift is measured in.
SENSOR_SPREAD = {"Accelerometer1RMS": 0.0047, "Accelerometer2RMS": 0.0040, "Current": 0.49,
                 "Pressure": 0.25, "Temperature": 0.67, "Thermocouple": 0.1, "Voltage": 11.0,
                 "Volume Flow RateRMS": 0.8}
_RESOLUTION = {"Accelerometer1RMS": 6, "Accelerometer2RMS": 6, "Current": 5, "Pressure": 6,
               "Temperature": 4, "Thermocouple": 4, "Voltage": 3, "Volume Flow RateRMS": 3}

# Hydraulics, in bar and L/min, chosen so that rated speed with the valve fully
# open gives SKAB's operating point (flow ~125).
_Q_NOM = 125.24
_H_SHUTOFF = 3.0            # pump head at zero flow, rated speed
_H_STATIC = 0.3             # static head of the loop
_K_PUMP = 1.2 / _Q_NOM ** 2  # pump curve droop
_K_PIPE = 0.5 / _Q_NOM ** 2
_K_VALVE = 1.0 / _Q_NOM ** 2  # valve resistance when fully open (grows as 1/opening^2)
_H_NOM = _H_SHUTOFF - _K_PUMP * _Q_NOM ** 2
_P_NOM = _Q_NOM * _H_NOM

_PRESSURE_BASE = 0.1113
_PRESSURE_STEP = 0.327927   # the SKAB transducer reads in these steps ...
_PRESSURE_OFFSET = 0.054711  # ... on this grid
_FLOW_STEP = 1.0 / 3.0

_T_AMBIENT = 25.0
_T_MOTOR_RISE = 89.4723 - _T_AMBIENT
_T_FLUID_BASE = 22.0
_T_FLUID_RISE = 28.4743 - _T_FLUID_BASE
_TAU_MOTOR_S = 600.0
_TAU_FLUID_S = 900.0
_ONSET_S = 4.0              # faults ramp in with this time constant


@dataclass(slots=True)
class _Fault:
    severity: float
    started: float
    sensor: str | None = None
    frozen: float | None = None
    drift: float = 0.0


class _Wander:
    """Slow Ornstein-Uhlenbeck drift with stationary spread ``sigma``; exact for any dt."""

    __slots__ = ("sigma", "tau", "x")

    def __init__(self, sigma: float, tau: float):
        self.sigma, self.tau, self.x = sigma, tau, 0.0

    def step(self, dt: float, rng: np.random.Generator) -> float:
        phi = math.exp(-dt / self.tau)
        self.x = self.x * phi + self.sigma * math.sqrt(1.0 - phi * phi) * rng.standard_normal()
        return self.x


class PumpModel:
    """Centrifugal pump loop; ``step(dt)`` advances it and returns one sample per sensor."""

    def __init__(self, seed: int | None = None, speed: float = 1.0, valve: float = 1.0):
        self.speed = speed
        self.valve = valve
        self.t = 0.0
        self._rng = np.random.default_rng(seed)
        self._faults: dict[str, _Fault] = {}
        self._last: dict[str, float] = {}
        self._t_motor: float | None = None
        self._t_fluid: float | None = None
        self._w = {
            "acc1": _Wander(0.0030, 30.0), "acc2": _Wander(0.0026, 30.0),
            "temp": _Wander(0.30, 60.0), "tc": _Wander(0.05, 120.0), "flow": _Wander(0.55, 20.0),
            "cav": _Wander(1.0, 0.7),
        }

    # -- faults -------------------------------------------------------------

    def inject(self, fault: str, severity: float = 1.0, sensor: str | None = None) -> None:
        """Start ``fault`` now with ``severity`` in (0, 3] (1 = clearly visible).

        ``sensor`` picks the sensor of ``sensor_stuck``/``sensor_drift``.
        Injecting a fault that is already active restarts it.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
        if not (isinstance(severity, (int, float)) and math.isfinite(severity) and 0 < severity <= 3):
            raise ValueError(f"severity must be in (0, 3], got {severity!r}")
        if fault in DEFAULT_FAULT_SENSOR:
            sensor = sensor or DEFAULT_FAULT_SENSOR[fault]
            if sensor not in SENSORS:
                raise ValueError(f"unknown sensor {sensor!r}; choose one of {', '.join(SENSORS)}")
        elif sensor is not None:
            raise ValueError(f"fault {fault!r} does not take a sensor")
        self._faults[fault] = _Fault(severity=float(severity), started=self.t, sensor=sensor,
                                     frozen=self._last.get(sensor) if sensor else None)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def faults(self) -> dict[str, float]:
        """Active faults and their severity."""
        return {name: f.severity for name, f in self._faults.items()}

    def _level(self, fault: str) -> float:
        """Effective strength of a physical fault, ramping in after injection."""
        f = self._faults.get(fault)
        if f is None:
            return 0.0
        return f.severity * (1.0 - math.exp(-(self.t - f.started) / _ONSET_S))

    # -- physics ------------------------------------------------------------

    def operating_point(self) -> tuple[float, float, float]:
        """(flow L/min, head bar, shaft power relative to rated) for the current inputs and faults."""
        speed = min(max(float(self.speed), 0.0), 1.2)
        valve = min(max(float(self.valve), 0.0), 1.0)
        cav = self._level("cavitation")
        # Cavitation: vapour bubbles cut the head the impeller develops, in bursts.
        head_factor = 1.0 - cav * (0.15 + 0.05 * self._w["cav"].x)
        opening = valve * (1.0 - min(0.6 * self._level("valve_blockage"), 0.95))
        h_shut = _H_SHUTOFF * speed * speed * max(head_factor, 0.2)
        if opening < 0.02 or h_shut <= _H_STATIC:
            flow = 0.0
        else:
            flow = math.sqrt((h_shut - _H_STATIC) / (_K_PUMP + _K_PIPE + _K_VALVE / (opening * opening)))
        head = h_shut - _K_PUMP * flow * flow
        friction = 0.08 * self._level("bearing_wear") * speed
        power = 0.45 * speed ** 3 + 0.55 * flow * head / _P_NOM + friction
        return flow, head, power

    def step(self, dt: float) -> dict[str, float]:
        """Advance ``dt`` seconds; return one reading per sensor, in :data:`SENSORS` order."""
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
        rng = self._rng
        self.t += dt
        w = {k: v.step(dt, rng) for k, v in self._w.items()}
        flow, head, power = self.operating_point()
        speed = min(max(float(self.speed), 0.0), 1.2)
        wear = self._level("bearing_wear")
        cav = self._level("cavitation")

        motor_heat = 0.3 * speed + 0.7 * power * power + 0.3 * wear * speed
        fluid_heat = 0.5 * power + 0.5 * speed + 0.4 * cav
        t_motor_target = _T_AMBIENT + _T_MOTOR_RISE * motor_heat
        t_fluid_target = _T_FLUID_BASE + _T_FLUID_RISE * fluid_heat
        if self._t_motor is None:
            # Start warm, at the steady state of the initial operating point.
            self._t_motor, self._t_fluid = t_motor_target, t_fluid_target
        self._t_motor += (t_motor_target - self._t_motor) * (1.0 - math.exp(-dt / _TAU_MOTOR_S))
        self._t_fluid += (t_fluid_target - self._t_fluid) * (1.0 - math.exp(-dt / _TAU_FLUID_S))

        n = rng.standard_normal(8)
        s2 = speed * speed
        vib_noise = 1.0 + 2.0 * wear
        cav_noise = 0.012 * cav * abs(n[7])
        acc1 = 0.2126 * s2 * (1.0 + 0.6 * wear) + w["acc1"] * s2 + 0.0013 * vib_noise * n[0] + cav_noise
        acc2 = 0.2684 * s2 * (1.0 + 0.25 * wear) + w["acc2"] * s2 + 0.0014 * vib_noise * n[1] \
            + 0.8 * cav_noise
        # Current and voltage share part of their noise (same acquisition), as in SKAB.
        common = n[2]
        current = 2.403 * power + 0.49 * (0.68 * common + 0.733 * n[3])
        voltage = 228.65 + 10.9 * (0.68 * common + 0.733 * n[4])
        pressure = _PRESSURE_BASE + (head - _H_NOM) + 0.245 * n[5]
        pressure = _PRESSURE_OFFSET + _PRESSURE_STEP * round((pressure - _PRESSURE_OFFSET) / _PRESSURE_STEP)
        flow_meas = flow * (1.0 + w["flow"] / _Q_NOM) + 0.35 * n[6]
        # Like real meters, a low-flow cutoff: a stopped loop reads exactly zero.
        flow_meas = _FLOW_STEP * round(flow_meas / _FLOW_STEP) if flow > 1.0 else 0.0
        out = {
            "Accelerometer1RMS": max(acc1, 1e-4),
            "Accelerometer2RMS": max(acc2, 1e-4),
            "Current": max(current, 0.0),
            "Pressure": pressure,
            "Temperature": self._t_motor + w["temp"] + 0.2 * rng.standard_normal(),
            "Thermocouple": self._t_fluid + w["tc"] + 0.005 * rng.standard_normal(),
            "Voltage": voltage,
            "Volume Flow RateRMS": max(flow_meas, 0.0),
        }
        drift = self._faults.get("sensor_drift")
        if drift is not None:
            drift.drift += 0.1 * drift.severity * SENSOR_SPREAD[drift.sensor] * dt
            out[drift.sensor] += drift.drift
        out = {k: round(float(v), _RESOLUTION[k]) for k, v in out.items()}
        stuck = self._faults.get("sensor_stuck")
        if stuck is not None:
            if stuck.frozen is None:
                stuck.frozen = out[stuck.sensor]
            out[stuck.sensor] = stuck.frozen
        self._last = out
        return dict(out)
