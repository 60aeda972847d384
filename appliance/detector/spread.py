"""A member that scores how much each sensor *varies* over the whole scored span, not its shape.

A random-variation fault (a feed whose properties wander more than usual)
keeps every reading inside its normal range and every row-to-row change small:
the disturbance behind it is slow (time constants of hours), so what changes is
how far the sensors it drives wander within an hour or two. The autoencoder and
the members of :mod:`appliance.detector.pca` see windows of a few rows (9 minutes
at 3 min) and averages of them; none measures the spread of a sensor over the
span a decision covers.

This member does, on the span the detector scores (``window + horizon - 1`` rows,
:attr:`appliance.detector.bundle.Bundle.span`): for each sensor, the energy of
the span's lowest frequency bands (its projection on the first ``bands``
orthonormal DCT-II cosines past the constant, periods of two spans down to
``2 * span / bands`` rows), in log space, standardized by the training spans'
mean and spread of that log energy:

    z_j = (log(E_j + floor_j) - mu_j) / sd_j,   error_j = max(z_j, 0) ** 2

and the member's error is the mean of ``error_j`` over the sensors (the same
"mean over sensors" the other members take, so the live scorer's contributions
and ratios apply unchanged). Why these choices:

* the **low bands** carry a slow disturbance's wandering and only ``bands /
  (span - 1)`` of white measurement noise, so a normal change of the noise level
  (the plant regime multiplies it by 0.6-1.8 every 4-16 h) moves them little;
* the constant is left out, so the operating point's level (and the level-free
  sensors' window mean) never counts;
* the **log** turns a multiplied spread into a shift, whatever the sensor's scale;
  ``floor_j`` (a share of the sensor's median training energy) keeps a sensor
  that sits still from turning rounding into a large negative log;
* **one-sided**: a quieter span than usual is not an anomaly here (a sensor that
  stops changing is the frozen check's, :mod:`appliance.detector.frozen`).

In ONNX the member is ``x[N, span * sensors] -> errors[N, sensors]``: Reshape,
one MatMul by the ``(bands, span)`` cosine basis, Mul, ReduceSum, Add, Log, Sub,
Mul, Relu, Mul: a few thousand multiply-adds per span, kept FP32 in both
precisions (INT8 would not pay on so small a graph, and a log of quantized
energies would be coarse exactly near the floor). The live path loads the graph
(:mod:`appliance.detector.scorer`), never this module.

A disturbance that wanders three times as far is seen; a noisier span is not:

>>> rng = np.random.default_rng(0)
>>> def spans(slow, noise, n=300, span=22):
...     walk = np.cumsum(rng.standard_normal((n, span, 3)), axis=1) * slow / np.sqrt(span)
...     return (walk + noise * rng.standard_normal((n, span, 3))).astype(np.float32)
>>> m = SpreadMember().fit(spans(1.0, 0.3))
>>> normal, lively, noisy = (float(m.errors(x).mean()) for x in (spans(1.0, 0.3), spans(3.0, 0.3), spans(1.0, 0.6)))
>>> normal < 1.0, lively > 10 * normal, noisy < 3 * normal
(True, True, True)
>>> m.summary()["kind"], m.summary()["bands"]
('spread', 3)
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from appliance.detector.autoencoder import ONNX_OPSET, check_windows
from appliance.detector.bundle import SPAN_MEMBERS
from appliance.detector.session import ONNX_INPUT

logger = logging.getLogger(__name__)

# The member's output: per-sensor errors, not a reconstruction (the loader and scorer know it by this name).
SPREAD_OUTPUT = SPAN_MEMBERS["spread"]
# The log energy's floor, as a share of each sensor's median training energy: a still sensor's
# energy is mostly rounding, and log(0) would make any movement of it a huge z.
ENERGY_FLOOR_SHARE = 0.05
# Smallest spread of a sensor's log energy over the training spans: overlapping spans of a short
# record can agree closely, and a tiny sd would make an ordinary span a many-sigma one.
MIN_LOG_SD = 0.1


def cosine_bands(span: int, bands: int) -> np.ndarray:
    """``(bands, span)`` orthonormal DCT-II cosines 1..``bands`` (the constant, cosine 0, left out).

    >>> B = cosine_bands(8, 3)
    >>> np.allclose(B @ B.T, np.eye(3)), np.allclose(B.sum(axis=1), 0)
    (True, True)
    """
    if not 1 <= bands < span:
        raise ValueError(f"bands must be in [1, span - 1] = [1, {span - 1}], got {bands}")
    t = np.arange(span) + 0.5
    k = np.arange(1, bands + 1)[:, None]
    return np.sqrt(2.0 / span) * np.cos(np.pi * k * t / span)


class SpreadMember:
    """Per-sensor low-band energy of scaled spans ``(n, span, sensors)``, standardized in log space."""

    def __init__(self, bands: int = 3):
        if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
            raise ValueError(f"bands must be an int >= 1, got {bands!r}")
        self.bands = bands

    def _energy(self, X: np.ndarray) -> np.ndarray:
        """``(n, sensors)`` float64: each sensor's energy in the low bands of each span."""
        coef = np.einsum("kt,nts->nks", self.basis_, X.astype(np.float64))
        return (coef ** 2).sum(axis=1)

    def fit(self, X, y=None, **_) -> "SpreadMember":
        """Fit on scaled spans; extra keywords (``progress``) are accepted, as cross-validation passes them."""
        X = check_windows(X)
        n, span, s = X.shape
        if n < 3:
            raise ValueError(f"need at least 3 spans to fit a spread member, got {n}")
        self.basis_ = cosine_bands(span, self.bands)
        energy = self._energy(X)
        median = np.median(energy, axis=0)
        self.floor_ = np.maximum(ENERGY_FLOOR_SHARE * median, 1e-6)
        logs = np.log(energy + self.floor_)
        self.mean_ = logs.mean(axis=0)
        self.sd_ = np.maximum(logs.std(axis=0), MIN_LOG_SD)
        self.span_, self.n_sensors_ = span, s
        self.best_epoch_ = 0  # read by cross-validation helpers written for the autoencoder
        logger.debug("spread member fitted spans=%d span=%d sensors=%d bands=%d", n, span, s, self.bands)
        return self

    def sensor_errors(self, X) -> np.ndarray:
        """``(n, sensors)``: the squared one-sided z of each sensor's log low-band energy."""
        X = check_windows(X, window=self.span_, n_sensors=self.n_sensors_)
        z = (np.log(self._energy(X) + self.floor_) - self.mean_) / self.sd_
        return np.maximum(z, 0.0) ** 2

    def errors(self, X) -> np.ndarray:
        return self.sensor_errors(X).mean(axis=1)

    def summary(self) -> dict:
        return {"kind": "spread", "bands": self.bands, "span": int(self.span_),
                "input": "the whole scored span of the scaled rows (window + horizon - 1 rows)",
                "output": SPREAD_OUTPUT,
                "energy_floor": [float(v) for v in self.floor_],
                "log_energy_mean": [float(v) for v in self.mean_],
                "log_energy_sd": [float(v) for v in self.sd_],
                "precision": "fp32 (in both precisions)"}

    def to_onnx(self, name: str = "spread_member") -> onnx.ModelProto:
        """``x[N, span * sensors] -> errors[N, sensors]`` (see the module docstring for the nodes)."""
        span, s = self.span_, self.n_sensors_
        f32 = np.float32
        inits = [numpy_helper.from_array(np.array([-1, span, s], dtype=np.int64), "span_shape"),
                 numpy_helper.from_array(self.basis_.astype(f32), "bands"),
                 numpy_helper.from_array(np.array([1], dtype=np.int64), "band_axis"),
                 numpy_helper.from_array(self.floor_.astype(f32), "floor"),
                 numpy_helper.from_array(self.mean_.astype(f32), "log_mean"),
                 numpy_helper.from_array((1.0 / self.sd_).astype(f32), "inv_sd")]
        nodes = [helper.make_node("Reshape", [ONNX_INPUT, "span_shape"], ["spans"], name="to_spans"),
                 helper.make_node("MatMul", ["bands", "spans"], ["coef"], name="low_bands"),
                 helper.make_node("Mul", ["coef", "coef"], ["power"], name="square"),
                 helper.make_node("ReduceSum", ["power", "band_axis"], ["energy"], name="band_energy", keepdims=0),
                 helper.make_node("Add", ["energy", "floor"], ["floored"], name="floor"),
                 helper.make_node("Log", ["floored"], ["log_energy"], name="log"),
                 helper.make_node("Sub", ["log_energy", "log_mean"], ["centered"], name="center"),
                 helper.make_node("Mul", ["centered", "inv_sd"], ["z"], name="standardize"),
                 helper.make_node("Relu", ["z"], ["z_up"], name="one_sided"),
                 helper.make_node("Mul", ["z_up", "z_up"], [SPREAD_OUTPUT], name="squared")]
        graph = helper.make_graph(
            nodes, name,
            [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["N", span * s])],
            [helper.make_tensor_value_info(SPREAD_OUTPUT, TensorProto.FLOAT, ["N", s])],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                                  producer_name="appliance.detector")
        model.ir_version = 8  # readable by every onnxruntime that supports opset 17
        onnx.checker.check_model(model)
        return model
