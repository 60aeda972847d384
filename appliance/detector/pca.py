"""A linear member beside the autoencoder: PCA on the sensor vector of each row, scored by its Q residual.

The autoencoder learns the shapes of whole windows and catches steps and drifts;
it barely sees a sensor that freezes or a valve that sticks, because such a
fault keeps every value inside its normal range. A principal-component model of
the per-row sensor vector does: a frozen sensor soon disagrees with what the
correlated sensors say it should read, and that disagreement is the residual
outside the principal subspace (Q, the squared prediction error, SPE).

The member takes exactly the autoencoder's input (the scaled window, level-free
sensors with their window mean removed, flattened ``[N, window * sensors]``) and
gives a "reconstruction" of the same shape, so the live path scores it with the
same ONNX Runtime call and the same per-sensor error as the autoencoder
(:func:`appliance.detector.session.sensor_errors`). For each row ``r`` of the window:

    recon = r - (r - mu) (I - P^T P) / sd

``P`` are the first ``k`` principal directions (the fewest explaining
``variance`` of the training rows' variance), ``mu`` the training mean and
``sd`` each sensor's residual spread on the training rows, so ``x - recon`` is
the standardized residual and the member's error is the window's mean squared
standardized Q (about 1 on normal rows). Standardizing makes a sensor that the
others predict closely count as much as a noisy one: a frozen sensor is
usually one of the well-predicted ones. In ONNX that is one ``Gemm`` on
``[N * window, sensors]`` between two ``Reshape`` nodes; it stays FP32 in both
precisions (a few hundred multiply-adds per row; no quantization to check).

``inputs="changes"`` fits the same model to the row-to-row changes inside the
window instead of the rows (``x[t+1] - x[t]``): blind to the operating point, so
a run at another set point does not raise it, but blind to slow faults too; its
graph is one ``Gemm`` on the flat window (the residual of each change is written
to rows 1.. of the output, row 0 reproduces the input exactly).

``statistic="distance"`` scores the whole distance instead of the residual: each
feature row is whitened by the training rows' covariance (``(f - mu) W`` with
``W = V diag(1 / sd) V^T`` over every principal direction, ``sd`` floored), so
the error is the squared Mahalanobis distance (Hotelling's T² over all
directions), and a sensor's share is its component of the whitened row. On the
rows it alarmed on independent normal runs at other operating points (3.6 % of
their rows in a prototype); on the row-to-row changes it is blind to the
operating point and sees a disturbance that varies more than it did in training
*along* the directions it normally takes, which Q cannot (docs/detector.md). The
graph is the same one ``Gemm``.

``statistic="relation"`` (with ``targets``: the manipulated variables, the
controllers' outputs) regresses each target's level on every other sensor's
(ridge, :data:`RELATION_RIDGE`) and scores its standardized residual. A step that
a control loop compensates leaves the measurements where they were and the
valve moved: the valve no longer reads what the process around it explains,
which a model of windows without levels or of row-to-row changes cannot see. In
ONNX it is the same one ``Gemm`` (the map is zero outside the targets' columns).

Training only: the live path loads the exported graph, never this module.

>>> rng = np.random.default_rng(0)
>>> latent = rng.standard_normal((400, 2))
>>> rows = np.concatenate([latent, latent @ [[1.0, 0.5], [0.3, -1.0]]], axis=1) + 0.05 * rng.standard_normal((400, 4))
>>> X = np.stack([rows[i:i + 3] for i in range(397)]).astype(np.float32)
>>> m = PcaMember(variance=0.99).fit(X)
>>> m.components_.shape[0], 0.5 < float(m.errors(X).mean()) < 1.5
(2, True)
>>> stuck = X[100:101].copy(); stuck[0, :, 3] = 3.0
>>> bool(m.errors(stuck)[0] > 20 * m.errors(X).mean())
True

The distance on the changes sees the same process move more than it did, along its usual directions:

>>> d = PcaMember(inputs="changes", statistic="distance").fit(X)
>>> q = PcaMember(variance=0.99, inputs="changes").fit(X)
>>> lively = 3 * latent  # the same two disturbances, three times as lively
>>> lively = np.concatenate([lively, lively @ [[1.0, 0.5], [0.3, -1.0]]], axis=1) + 0.05 * rng.standard_normal((400, 4))
>>> L = np.stack([lively[i:i + 3] for i in range(397)]).astype(np.float32)
>>> round(float(d.errors(L).mean() / d.errors(X).mean())), round(float(q.errors(L).mean() / q.errors(X).mean()))
(5, 1)

The relation member sees sensor 3 (a "valve" the others explain) moved while the others are not:

>>> r = PcaMember(statistic="relation", targets=(3,)).fit(X)
>>> moved = X[100:101].copy(); moved[0, :, 3] += 1.0
>>> bool(r.errors(moved)[0] > 20 * r.errors(X).mean()), r.summary()["kind"]
(True, 'relation')
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from appliance.detector.autoencoder import ONNX_OPSET, check_windows
from appliance.detector.session import ONNX_INPUT, ONNX_OUTPUT

logger = logging.getLogger(__name__)

# A residual spread below this share of the median sensor's is floored: a sensor that the others
# predict exactly (a duplicate, or a constant) must not turn rounding into a thousand-sigma error.
SD_FLOOR = 0.05
# What a member measures, by name, and the kind bundle.json records for it.
STATISTICS = {"q": "pca_q", "distance": "mahalanobis", "relation": "relation"}
# Ridge on the relation member's regression, as a share of the mean variance of its inputs: with a few
# hundred rows of 40-odd correlated measurements, an unpenalized fit would learn the noise.
RELATION_RIDGE = 0.01


class PcaMember:
    """Per-row PCA with a standardized Q residual (or, ``statistic="distance"``, the whole whitened
    distance), fitted on scaled windows ``(n, window, sensors)``."""

    def __init__(self, variance: float = 0.99, inputs: str = "rows", statistic: str = "q",
                 targets: tuple[int, ...] = ()):
        if statistic == "relation" and (inputs != "rows" or not targets):
            raise ValueError("statistic='relation' needs inputs='rows' and the target sensors' indices")
        if not (isinstance(variance, float) and 0 < variance < 1):
            raise ValueError(f"variance must be a float in (0, 1), got {variance!r}")
        if inputs not in ("rows", "changes"):
            raise ValueError(f"inputs must be 'rows' or 'changes', got {inputs!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
        self.variance = variance
        self.inputs = inputs
        self.statistic = statistic
        self.targets = tuple(int(t) for t in targets)

    def _features(self, X: np.ndarray) -> np.ndarray:
        """``(n, rows, sensors)`` float64: the window's rows, or its row-to-row changes."""
        X = X.astype(np.float64)
        return X if self.inputs == "rows" else X[:, 1:] - X[:, :-1]

    def fit(self, X, y=None, *, progress: Callable[[dict], None] | None = None) -> "PcaMember":
        """Fit on windows; ``progress`` is accepted (and unused) so cross-validation treats it like the AE."""
        X = check_windows(X)
        n, w, s = X.shape
        if self.inputs == "changes" and w < 2:
            raise ValueError("inputs='changes' needs windows of at least 2 rows")
        # Each row appears in up to `window` windows; weighting every row alike would need the
        # spans, and with stride-1 windows the weights differ only at span ends.
        rows = self._features(X).reshape(-1, s)
        if len(rows) < 3:
            raise ValueError(f"need at least 3 rows to fit a PCA member, got {len(rows)}")
        mu = rows.mean(axis=0)
        if self.statistic == "relation":
            return self._fit_relation(rows, mu, w, s)
        _, sv, vt = np.linalg.svd(rows - mu, full_matrices=False)
        ev = sv ** 2 / (len(rows) - 1)
        total = ev.sum()
        if total <= 0:
            raise ValueError("the training rows do not vary; a PCA member cannot be fitted")
        k = int(min(len(ev) - 1, np.searchsorted(np.cumsum(ev) / total, self.variance) + 1))
        k = max(k, 1)
        if self.statistic == "distance":
            # Every direction counts, each in units of its own spread; a direction the training rows
            # hardly move along is floored so that rounding cannot become a thousand-sigma distance.
            # (Where most directions never move, e.g. mostly constant sensors, the mean is the typical one.)
            typical = float(np.median(ev)) if np.median(ev) > 0 else float(np.mean(ev))
            spread = np.maximum(ev, max(SD_FLOOR ** 2 * typical, 1e-12))
            self.mean_, self.components_ = mu, vt
            self.explained_variance_ratio_ = 1.0
            self.residual_sd_ = np.sqrt(spread)  # per principal direction, not per sensor
            self._map = vt.T @ (vt / self.residual_sd_[:, None])
        else:
            P = vt[:k]
            residual = (rows - mu) - (rows - mu) @ P.T @ P
            sd = np.sqrt((residual ** 2).mean(axis=0))
            floor = SD_FLOOR * float(np.median(sd)) if np.median(sd) > 0 else 1.0
            self.mean_, self.components_ = mu, P
            self.explained_variance_ratio_ = float(ev[:k].sum() / total)
            self.residual_sd_ = np.maximum(sd, max(floor, 1e-9))
            self._map = (np.eye(s) - P.T @ P) / self.residual_sd_[None, :]
        self.window_, self.n_sensors_ = w, s
        self.best_epoch_ = 0  # read by cross-validation helpers written for the autoencoder
        logger.debug("pca member fitted rows=%d sensors=%d components=%d explained=%.4f", len(rows), s, k,
                     self.explained_variance_ratio_)
        return self

    def _fit_relation(self, rows: np.ndarray, mu: np.ndarray, w: int, s: int) -> "PcaMember":
        """Each target (a manipulated variable: a controller's output) regressed on every other sensor's
        level; the standardized residual is how much harder (or softer) the loop works than the process
        around it explains. ``map`` has a column per target, zero elsewhere."""
        targets = np.array(self.targets)
        if targets.min() < 0 or targets.max() >= s or len(set(self.targets)) != len(targets):
            raise ValueError(f"relation targets {self.targets} must be distinct sensor indices below {s}")
        others = np.setdiff1d(np.arange(s), targets)
        if not len(others):
            raise ValueError("a relation member needs sensors besides its targets")
        Xc, Yc = rows[:, others] - mu[others], rows[:, targets] - mu[targets]
        gram = Xc.T @ Xc / len(rows)
        ridge = RELATION_RIDGE * max(float(np.trace(gram)) / len(others), 1e-12)
        B = np.linalg.solve(gram + ridge * np.eye(len(others)), Xc.T @ Yc / len(rows))
        residual = Yc - Xc @ B
        sd = np.sqrt((residual ** 2).mean(axis=0))
        floor = SD_FLOOR * float(np.median(sd)) if np.median(sd) > 0 else 1.0
        sd = np.maximum(sd, max(floor, 1e-9))
        self._map = np.zeros((s, s))
        self._map[targets, targets] = 1.0 / sd
        self._map[np.ix_(others, targets)] = -B / sd[None, :]
        self.mean_, self.components_ = mu, B.T
        self.explained_variance_ratio_ = float(1.0 - (residual ** 2).sum() / max((Yc ** 2).sum(), 1e-12))
        self.residual_sd_ = sd
        self.window_, self.n_sensors_ = w, s
        self.best_epoch_ = 0
        return self

    def _linear(self) -> tuple[np.ndarray, np.ndarray]:
        """``A, b`` with ``recon_row = row @ A + b``, so that ``row - recon_row = (row - mean) @ map``."""
        return np.eye(self.n_sensors_) - self._map, self.mean_ @ self._map

    def sensor_errors(self, X) -> np.ndarray:
        """Mean squared standardized residual per window and sensor, ``(n, sensors)`` (float64, in numpy)."""
        X = check_windows(X, window=self.window_, n_sensors=self.n_sensors_)
        F = self._features(X)
        residual = (F - self.mean_) @ self._map
        # Summed over the feature rows and divided by the window's rows, as the graph's output is.
        return (residual ** 2).sum(axis=1) / self.window_

    def errors(self, X) -> np.ndarray:
        return self.sensor_errors(X).mean(axis=1)

    def summary(self) -> dict:
        if self.statistic == "relation":
            return {"kind": "relation", "targets": list(self.targets), "inputs": "rows",
                    "input": "each row of the scaled window: manipulated variables against the other sensors",
                    "explained_variance": round(self.explained_variance_ratio_, 6),
                    "residual_sd": [round(float(v), 6) for v in self.residual_sd_],
                    "precision": "fp32 (in both precisions)"}
        return {"kind": STATISTICS[self.statistic], "components": int(self.components_.shape[0]),
                "variance": self.variance,
                "explained_variance": round(self.explained_variance_ratio_, 6),
                "inputs": self.inputs,
                "input": ("each row of the scaled window (the autoencoder's input)" if self.inputs == "rows" else
                          "each row-to-row change inside the scaled window (the autoencoder's input)"),
                # q: each sensor's residual spread; distance: the spread along each principal direction
                "residual_sd": [round(float(v), 6) for v in self.residual_sd_],
                "precision": "fp32 (in both precisions)"}

    def to_onnx(self, name: str = "pca_q_member") -> onnx.ModelProto:
        """``x[N, window * sensors] -> recon[N, window * sensors]``: Reshape, one Gemm, Reshape."""
        w, s = self.window_, self.n_sensors_
        A, b = self._linear()
        if self.inputs == "changes":
            return self._changes_onnx(name, A, b)
        inits = [numpy_helper.from_array(np.ascontiguousarray(A.T, dtype=np.float32), "A"),
                 numpy_helper.from_array(b.astype(np.float32), "b"),
                 numpy_helper.from_array(np.array([-1, s], dtype=np.int64), "rows_shape"),
                 numpy_helper.from_array(np.array([-1, w * s], dtype=np.int64), "window_shape")]
        nodes = [helper.make_node("Reshape", [ONNX_INPUT, "rows_shape"], ["rows"], name="to_rows"),
                 helper.make_node("Gemm", ["rows", "A", "b"], ["recon_rows"], name="pca_q", transB=1),
                 helper.make_node("Reshape", ["recon_rows", "window_shape"], [ONNX_OUTPUT], name="to_windows")]
        graph = helper.make_graph(
            nodes, name,
            [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["N", w * s])],
            [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["N", w * s])],
            initializer=inits)
        return _finish(graph)

    def _changes_onnx(self, name: str, A: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
        """One Gemm on the flat window: output row 0 = input row 0, row t+1 = x[t+1] - residual(x[t+1] - x[t])."""
        w, s = self.window_, self.n_sensors_
        K = np.eye(s) - A  # residual map of one change: r = change @ K - b
        M = np.eye(w * s)
        c = np.zeros(w * s)
        for t in range(w - 1):
            rows_t, rows_next = slice(t * s, (t + 1) * s), slice((t + 1) * s, (t + 2) * s)
            M[rows_next, rows_next] -= K
            M[rows_t, rows_next] += K
            c[rows_next] = b
        graph = helper.make_graph(
            [helper.make_node("Gemm", [ONNX_INPUT, "M", "c"], [ONNX_OUTPUT], name="pca_q_changes", transB=1)],
            name,
            [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["N", w * s])],
            [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["N", w * s])],
            initializer=[numpy_helper.from_array(np.ascontiguousarray(M.T, dtype=np.float32), "M"),
                         numpy_helper.from_array(c.astype(np.float32), "c")])
        return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="appliance.detector")
    model.ir_version = 8  # readable by every onnxruntime that supports opset 17
    onnx.checker.check_model(model)
    return model
