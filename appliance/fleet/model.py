"""The model a fleet trains together, without Flower: its spec, its weights, local training.

The **spec** fixes everything the weights are only meaningful with: sensors,
window, grid period, the robust scaler, level-free sensors and the layer widths.
It comes from the seed bundle (the fleet's current model) and travels to every
client with each round, so a gateway needs no model of its own to take part and
every client scales its windows the same way (the weights of two differently
scaled models cannot be averaged).

The **weights** are the dense autoencoder's layers as scikit-learn holds them,
``[W0, b0, W1, b1, ...]`` with ``W`` of shape ``(inputs, outputs)``, float32 on
the wire.

:func:`train_local` continues the global weights on one gateway's windows with
Adam (the detector's ``MLPRegressor``, one BLAS thread); with ``mu > 0`` the loss
gets FedProx's proximal term (Li et al. 2020) ``mu/2 * ||w - w_global||^2``, which
keeps local models from drifting far from the global one when gateways' data
differ. scikit-learn has no hook for an extra loss term, so :class:`ProximalMLP`
adds its gradient ``mu * (w - w_global)`` to the one back-propagation returns,
before Adam scales the step (added after Adam, as a proximal step, Adam's
per-weight normalisation would make it nearly powerless).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

from appliance.detector.autoencoder import TRAIN_BLAS_THREADS, WindowAutoencoder
from appliance.detector.bundle import Scaler, load_bundle
from appliance.detector.features import center_levels
from appliance.detector.train import moving_mean, windows_in
from appliance.detector.windowing import grid_rows, rows_as_readings


class FleetModelError(ValueError):
    """A spec, weights or data that do not fit together."""


@dataclass(frozen=True)
class ModelSpec:
    sensors: tuple[str, ...]
    window: int
    stride: int
    period_s: float
    center: tuple[float, ...]
    scale: tuple[float, ...]
    level_free: tuple[str, ...]
    hidden: tuple[int, ...]
    alpha: float = 1e-4
    # Slow processes (format 5): thresholds are calibrated on the error averaged over this many
    # consecutive windows, as the live score is; 1 where a single window is scored.
    horizon: int = 1

    @property
    def layers(self) -> tuple[int, ...]:
        """Hidden layer widths of the whole autoencoder: the encoder, then the mirrored decoder."""
        return self.hidden + tuple(reversed(self.hidden[:-1]))

    @property
    def scaler(self) -> Scaler:
        return Scaler(np.asarray(self.center, dtype=np.float64), np.asarray(self.scale, dtype=np.float64))

    def shapes(self) -> list[tuple[int, ...]]:
        dims = [self.window * len(self.sensors), *self.layers, self.window * len(self.sensors)]
        out: list[tuple[int, ...]] = []
        for a, b in zip(dims[:-1], dims[1:]):
            out += [(a, b), (b,)]
        return out

    def to_json(self) -> str:
        return json.dumps({"sensors": list(self.sensors), "window": self.window, "stride": self.stride,
                           "period_s": self.period_s, "center": list(self.center), "scale": list(self.scale),
                           "level_free": list(self.level_free), "hidden": list(self.hidden), "alpha": self.alpha,
                           "horizon": self.horizon})

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            d = json.loads(text)
            spec = cls(sensors=tuple(str(s) for s in d["sensors"]), window=int(d["window"]),
                       stride=int(d["stride"]), period_s=float(d["period_s"]),
                       center=tuple(float(v) for v in d["center"]), scale=tuple(float(v) for v in d["scale"]),
                       level_free=tuple(str(s) for s in d["level_free"]), hidden=tuple(int(h) for h in d["hidden"]),
                       alpha=float(d["alpha"]), horizon=int(d.get("horizon", 1)))  # servers before horizons: 1
        except (KeyError, TypeError, ValueError) as e:
            raise FleetModelError(f"model spec from the server is malformed ({type(e).__name__}: {e})") from None
        if (len(spec.center) != len(spec.sensors) or len(spec.scale) != len(spec.sensors) or spec.window < 2
                or not spec.hidden or min(spec.hidden) < 1 or not set(spec.level_free) <= set(spec.sensors)
                or not 1 <= spec.horizon <= 1000):
            raise FleetModelError("model spec from the server is inconsistent (sensors, scaler, window, layers, "
                                  "horizon)")
        return spec

    def check(self, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``weights`` as float32 arrays of this spec's shapes, or :class:`FleetModelError`."""
        shapes = self.shapes()
        if len(weights) != len(shapes):
            raise FleetModelError(f"{len(weights)} weight arrays, the model has {len(shapes)}")
        out = []
        for i, (w, shape) in enumerate(zip(weights, shapes)):
            w = np.asarray(w, dtype=np.float32)
            if w.shape != shape:
                raise FleetModelError(f"weight array {i} has shape {w.shape}, the model needs {shape}")
            if not np.isfinite(w).all():
                raise FleetModelError(f"weight array {i} holds NaN or infinite values")
            out.append(w)
        return out


def seed_from_bundle(path: str | Path) -> tuple[ModelSpec, list[np.ndarray]]:
    """The spec and FP32 weights of an existing bundle: where the fleet starts from."""
    b = load_bundle(path)
    model = onnx.load(str(b.models["fp32"]))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = []
    i = 0
    while f"W{i}" in inits:
        # The export stores each W transposed ([out, in], transB=1); scikit-learn holds [in, out].
        weights += [np.ascontiguousarray(inits[f"W{i}"].T, dtype=np.float32), inits[f"b{i}"].astype(np.float32)]
        i += 1
    if i < 2 or len(weights[0]) != b.window * len(b.sensors):
        raise FleetModelError(f"{path}: not a dense window autoencoder bundle (format 3) the fleet can train")
    widths = [int(w.shape[1]) for w in weights[0:-2:2]]
    n_enc = (len(widths) + 1) // 2
    hidden = tuple(widths[:n_enc])
    model_meta = b.meta.get("training", {}).get("model", {})
    spec = ModelSpec(sensors=b.sensors, window=b.window, stride=b.stride, period_s=b.period_s,
                     center=tuple(float(v) for v in b.scaler.center), scale=tuple(float(v) for v in b.scaler.scale),
                     level_free=b.level_free, hidden=hidden, alpha=float(model_meta.get("alpha", 1e-4)),
                     horizon=b.horizon)
    return spec, spec.check(weights)


def averaged(spec: ModelSpec, errors: np.ndarray) -> np.ndarray:
    """Window errors as the live score sees them: averaged over the spec's horizon of consecutive windows."""
    return moving_mean(np.asarray(errors, dtype=np.float64), spec.horizon)


def _split_runs(runs: list[tuple[int, int]], n: int, holdout: float):
    """Held-back spans (the oldest ``holdout`` share of rows) and training spans; windows never cross the cut."""
    cut = int(round(n * holdout))
    held = [(a, min(b, cut)) for a, b in runs if min(b, cut) > a]
    train = [(max(a, cut), b) for a, b in runs if b > max(a, cut)]
    return train, held


def client_windows(spec: ModelSpec, sensors: Sequence[str], rows: np.ndarray, ts: np.ndarray | None,
                   holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """A gateway's normal rows as scaled training and held-back windows of ``spec``.

    Rows are put on the spec's grid by the live window builder when ``ts`` is given
    (as ``appliance train`` does), scaled with the spec's scaler and cut into
    windows; the oldest ``holdout`` share is held back for evaluation.
    """
    sensors = [str(s) for s in sensors]
    missing = [s for s in spec.sensors if s not in sensors]
    if missing:
        raise FleetModelError(f"the data lacks the model's sensors {missing} (it has {sensors})")
    rows = np.asarray(rows, dtype=np.float64)[:, [sensors.index(s) for s in spec.sensors]]
    if not np.isfinite(rows).all():
        raise FleetModelError("rows contain NaN or infinite values")
    if ts is None:
        values, runs = rows, [(0, len(rows))]
    else:
        grid = grid_rows(rows_as_readings("fleet", list(spec.sensors), np.asarray(ts, dtype=np.float64), rows),
                         list(spec.sensors), spec.period_s, max(5.0, spec.period_s), 2.0)
        values, runs = grid.values, list(grid.runs)
    return run_windows(spec, values, runs, holdout)


def run_windows(spec: ModelSpec, values: np.ndarray, runs: Sequence[tuple[int, int]], holdout: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-back windows of ``spec`` from grid rows (columns: the spec's sensors) and their runs.

    No window crosses the end of a run (a gap, a missing value, a span left out).
    """
    train, held = _split_runs(list(runs), len(values), holdout)
    scaled = spec.scaler.transform(np.asarray(values, dtype=np.float64))
    cols = np.array([spec.sensors.index(s) for s in spec.level_free], dtype=int)
    X_train = center_levels(windows_in(scaled, train, spec.window, 1), cols)
    X_held = center_levels(windows_in(scaled, held, spec.window, 1), cols)
    held_needed = max(5, spec.horizon + 4)  # a threshold on averaged errors needs a few averages
    if len(X_train) < 10 or len(X_held) < held_needed:
        raise FleetModelError(f"{len(X_train)} training and {len(X_held)} held-back windows of {spec.window} rows; "
                              f"need >= 10 and >= {held_needed} (give more normal rows)")
    return X_train, X_held


class ProximalMLP(MLPRegressor):
    """``MLPRegressor`` whose loss may carry FedProx's term; ``prox_mu = 0`` (default) is the plain model.

    Overrides scikit-learn's private ``_backprop`` (stable since 0.18: it returns
    ``loss, coef_grads, intercept_grads``) to add the term's loss and gradient.
    """

    prox_mu: float = 0.0
    prox_center: list[np.ndarray] | None = None

    def _backprop(self, *args, **kwargs):
        loss, coef_grads, intercept_grads = super()._backprop(*args, **kwargs)
        if self.prox_mu > 0 and self.prox_center is not None:
            params = [p for pair in zip(self.coefs_, self.intercepts_) for p in pair]
            grads = [g for pair in zip(coef_grads, intercept_grads) for g in pair]
            for p, g, c in zip(params, grads, self.prox_center):
                diff = p - c
                g += self.prox_mu * diff
                loss += 0.5 * self.prox_mu * float(np.sum(diff * diff))
        return loss, coef_grads, intercept_grads


def autoencoder(spec: ModelSpec, weights: Sequence[np.ndarray], seed: int = 0, batch_size: int = 128,
                learning_rate: float = 1e-3) -> WindowAutoencoder:
    """The detector's autoencoder holding ``weights`` (ready to score, export or train on)."""
    weights = spec.check(weights)
    n_in = spec.window * len(spec.sensors)
    mlp = ProximalMLP(hidden_layer_sizes=spec.layers, activation="relu", solver="adam", alpha=spec.alpha,
                       batch_size=batch_size, learning_rate_init=learning_rate, random_state=seed, shuffle=False)
    # One step on two zero rows lets scikit-learn build its layers; the weights are then replaced.
    probe = np.zeros((2, n_in), dtype=np.float32)
    with warnings.catch_warnings(), threadpool_limits(limits=TRAIN_BLAS_THREADS):
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.batch_size = len(probe)
        mlp.partial_fit(probe, probe)
        mlp.batch_size = batch_size
    for k, w in enumerate(weights):
        target = mlp.coefs_[k // 2] if k % 2 == 0 else mlp.intercepts_[k // 2]
        target[...] = w
    # A fresh Adam state per round, as every FedAvg client starts its round.
    del mlp._optimizer
    mlp.t_ = 0
    ae = WindowAutoencoder(hidden=spec.hidden, alpha=spec.alpha, batch_size=batch_size,
                           learning_rate_init=learning_rate, random_state=seed)
    ae.mlp_, ae.window_, ae.n_sensors_, ae.n_iter_, ae.offset_ = mlp, spec.window, len(spec.sensors), 0, 0.0
    return ae


def weights_of(ae: WindowAutoencoder) -> list[np.ndarray]:
    out = []
    for W, b in zip(ae.mlp_.coefs_, ae.mlp_.intercepts_):
        out += [np.asarray(W, dtype=np.float32).copy(), np.asarray(b, dtype=np.float32).copy()]
    return out


def train_local(spec: ModelSpec, weights: Sequence[np.ndarray], X: np.ndarray, *, epochs: int, mu: float = 0.0,
                learning_rate: float = 1e-3, batch_size: int = 128, seed: int = 0
                ) -> tuple[list[np.ndarray], float]:
    """``epochs`` passes of Adam over ``X`` from ``weights``; returns the new weights and the last epoch's loss.

    With ``mu > 0`` the loss carries FedProx's proximal term toward ``weights``.
    """
    start = spec.check(weights)
    ae = autoencoder(spec, start, seed=seed, batch_size=batch_size, learning_rate=learning_rate)
    mlp = ae.mlp_
    flat = np.ascontiguousarray(X.reshape(len(X), -1), dtype=np.float32)
    rng = np.random.default_rng(seed)
    mlp.prox_mu, mlp.prox_center = mu, [np.array(w, dtype=np.float32) for w in start]
    loss = float("nan")
    with warnings.catch_warnings(), threadpool_limits(limits=TRAIN_BLAS_THREADS):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(epochs):
            order = rng.permutation(len(flat))
            losses = []
            for lo in range(0, len(flat), batch_size):
                batch = flat[order[lo:lo + batch_size]]
                mlp.batch_size = len(batch)  # one Adam step per call, the last short batch too
                mlp.partial_fit(batch, batch)
                losses.append(mlp.loss_)
            loss = float(np.mean(losses))
    return weights_of(ae), loss


def update_norm(new: Sequence[np.ndarray], old: Sequence[np.ndarray]) -> float:
    """L2 norm of ``new - old`` over all arrays (what DP clipping bounds)."""
    return float(np.sqrt(sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
                             for a, b in zip(new, old))))
