"""Static INT8 quantization of the autoencoder, and its check against FP32.

Quantization is static (activation ranges calibrated on training windows, no
runtime range computation) in QDQ format with per-channel weight scales: one
scale per output unit of every Gemm, which keeps small-magnitude units from
being crushed by a large neighbour. ONNX Runtime fuses the QDQ pairs into
integer Gemm kernels on x86 (VNNI/AVX2) and aarch64 (NEON/dot-product) alike.

The reconstruction error is computed outside the graph, against the unquantized
input: an input clipped by the input quantizer therefore still shows its full
error instead of hiding it.

The check (:func:`verify_int8`) compares INT8 with FP32 on held-back normal
windows and on probe windows (the same windows with one sensor pushed off its
normal range, which exercises the anomalous range of every layer). A model
that disagrees is refused before any bundle is written.

Training only: the live path opens sessions with :mod:`appliance.detector.session`
and never imports this module (nor ``onnxruntime.quantization``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from appliance.detector.bundle import FORMAT_VERSION, MODEL_FILES, write_bundle
from appliance.detector.session import ONNX_INPUT, make_session, sensor_errors

logger = logging.getLogger(__name__)


class QuantizationCheckError(RuntimeError):
    """The INT8 model does not agree with the FP32 model closely enough to be deployed."""

    def __init__(self, message: str, report: dict):
        super().__init__(message, report)  # both in args: the error survives pickling (worker processes)
        self.report = report

    def __str__(self) -> str:
        return str(self.args[0])


class WindowCalibrationReader(CalibrationDataReader):
    """Feeds scaled training windows to the calibrator in batches (flattened for a flat model)."""

    def __init__(self, windows: np.ndarray, batch: int = 256, flat: bool = True):
        self._windows = np.ascontiguousarray(windows, dtype=np.float32)
        if flat:
            self._windows = self._windows.reshape(len(self._windows), -1)
        self._batch = batch
        self._pos = 0

    def get_next(self):
        if self._pos >= len(self._windows):
            return None
        chunk = self._windows[self._pos:self._pos + self._batch]
        self._pos += self._batch
        return {ONNX_INPUT: chunk}

    def rewind(self) -> None:
        self._pos = 0


def _has_flat_input(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return len(next(v for v in model.graph.input if v.name == ONNX_INPUT).type.tensor_type.shape.dim) == 2


def gemm_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "Gemm"]


def quantize_model(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                   per_channel: bool = True, nodes_to_exclude: Sequence[str] = (),
                   calibrate_method: str = "minmax") -> None:
    """Write a static-INT8 copy of ``fp32_path`` calibrated on ``calibration`` windows.

    ``nodes_to_exclude`` keeps the named nodes in FP32 (e.g. the output layer,
    whose error feeds the score directly).
    """
    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 3 or len(calibration) == 0:
        raise ValueError(f"calibration windows must be a non-empty (n, window, sensors) array, "
                         f"got shape {calibration.shape}")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrate_method not in methods:
        raise ValueError(f"calibrate_method must be one of {sorted(methods)}, got {calibrate_method!r}")
    extra: dict = {"WeightSymmetric": True}
    if calibrate_method == "percentile":
        extra["CalibPercentile"] = 99.999
    # Gemm outputs stay unquantized: hidden activations are still INT8 at the Relu outputs
    # (ONNX Runtime folds Relu + QuantizeLinear into QGemm), and the output layer becomes a
    # QGemm with float output. That saves a requantize pass, the INT8 Reshape and the final
    # DequantizeLinear, and the reconstruction the error is computed from is not rounded to
    # 8 bits (measured: batch-256 INT8/FP32 1.43x -> 1.56x, closer agreement with FP32).
    extra["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
    # Signed INT8 activations and weights (S8S8): the fast integer path on aarch64
    # dot-product units and on x86 VNNI alike. Weights use 7 bits (reduce_range): x86 CPUs
    # without VNNI (AVX2 only) multiply pairs with VPMADDUBSW, whose 16-bit sums saturate
    # with full-range weights; measured on an AVX2-only EPYC, a small model's INT8 error
    # correlated 0.79 with FP32 at 8 bits and passed the check at 7. A bundle is trained
    # once and may run on any gateway, so every bundle is built to be safe on all of them.
    with tempfile.TemporaryDirectory(prefix="appliance-quant-") as tmp:
        # The recommended pre-processing (shape inference, constant folding) on a copy:
        # the bundle keeps the exported FP32 model unchanged.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(int8_path), WindowCalibrationReader(calibration, flat=_has_flat_input(pre)),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, reduce_range=True,
            op_types_to_quantize=["Gemm", "Relu"],
            nodes_to_exclude=list(nodes_to_exclude) or None,
            calibrate_method=methods[calibrate_method], extra_options=extra)
    logger.info("quantized int8=%s per_channel=%s excluded=%s calibration_windows=%d",
                int8_path, per_channel, list(nodes_to_exclude), len(calibration))


# Fewest probe windows the check judges on.
MIN_PROBES = 1000


@dataclass(frozen=True)
class CheckLimits:
    """Acceptance limits for INT8 against FP32.

    Decision agreement is checked on normal windows. On probes, which are built
    to straddle the threshold, a tiny error difference flips a decision right at
    the threshold, so what is limited there is the share of *clear* decisions
    flipped: windows whose FP32 error is more than ``clear_band`` (relative)
    away from the FP32 threshold yet decided differently by INT8. The error correlation is
    Pearson on normal windows (fidelity where the threshold lives) and Spearman
    on probes (ranking of anomalies; absolute probe errors differ because the
    input quantizer clips far-off values, which changes nothing about the
    decision).
    """

    min_agreement: float = 0.98
    max_clear_flips: float = 0.02
    clear_band: float = 0.10
    min_holdout_correlation: float = 0.90
    min_probe_rank_correlation: float = 0.85


def probe_windows(windows: np.ndarray, max_shift: float = 4.0, min_shift: float = 0.3,
                  seed: int = 0) -> np.ndarray:
    """Copies of ``windows`` with one random sensor shifted by a random amount.

    Shifts are uniform in ``[min_shift, max_shift]`` scale units with random sign,
    so the probes cover the range around the threshold, not just far outliers.

    >>> w = np.zeros((50, 3, 2), dtype=np.float32)
    >>> p = probe_windows(w, max_shift=4.0)
    >>> bool(((np.abs(p) > 0).sum(axis=(1, 2)) == 3).all()), float(np.abs(p).max()) <= 4.0
    (True, True)
    """
    rng = np.random.default_rng(seed)
    probes = np.array(windows, dtype=np.float32, copy=True)
    cols = rng.integers(0, probes.shape[2], size=len(probes))
    shifts = rng.uniform(min_shift, max_shift, size=len(probes)) * rng.choice([-1.0, 1.0], size=len(probes))
    probes[np.arange(len(probes)), :, cols] += shifts.astype(np.float32)[:, None]
    return probes


def probe_shift_for(threshold: float, n_sensors: int, reach: float = 3.0, floor: float = 4.0) -> float:
    """Largest probe shift: far enough that probes reach about ``reach`` x the threshold.

    A whole-window shift ``d`` of one of ``n_sensors`` sensors that the model does
    not follow adds about ``d**2 / n_sensors`` to the mean squared error, so the
    shift at the threshold is ``sqrt(threshold * n_sensors)``. Calibrating and
    checking up to there keeps INT8 from clipping exactly where decisions are made.

    >>> probe_shift_for(1.0, 8)
    4.898979485566356
    """
    return float(max(floor, math.sqrt(reach * threshold * n_sensors)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return _pearson(ra, rb)


def verify_int8(fp32: ort.InferenceSession, int8: ort.InferenceSession, holdout: np.ndarray,
                threshold_fp32: float, threshold_int8: float,
                limits: CheckLimits = CheckLimits(), seed: int = 0, probe_shift: float = 4.0) -> dict:
    """Compare INT8 with FP32; return the report or raise :class:`QuantizationCheckError`.

    ``probe_shift`` is the largest probe shift (scale units); it should reach past
    the threshold (see :func:`probe_shift_for`).

    Agreement is the share of windows both models put on the same side of their
    own thresholds, over held-back normal windows and over probe windows
    (without probes nearly every normal window is trivially "agreed" below
    threshold).
    """
    holdout = np.ascontiguousarray(holdout, dtype=np.float32)
    # At least MIN_PROBES probes (held-back windows reused with other shifts): with the few dozen
    # held-back windows of a few hundred training rows, one flip would otherwise be several percent.
    reps = max(1, math.ceil(MIN_PROBES / len(holdout)))
    probes = probe_windows(np.tile(holdout, (reps, 1, 1)) if reps > 1 else holdout, max_shift=probe_shift,
                           seed=seed)
    report: dict = {"limits": asdict(limits), "windows": int(len(holdout)), "probe_shift": probe_shift}
    failures = []
    for name, data in (("holdout", holdout), ("probe", probes)):
        e32 = sensor_errors(fp32, data).mean(axis=1)
        e8 = sensor_errors(int8, data).mean(axis=1)
        differ = (e32 > threshold_fp32) != (e8 > threshold_int8)
        agree = float(1.0 - differ.mean())
        clear = np.abs(e32 / threshold_fp32 - 1.0) > limits.clear_band
        clear_flips = float((differ & clear).mean())
        corr = _pearson(e32, e8) if name == "holdout" else _spearman(e32, e8)
        rel = float(np.median(np.abs(e8 - e32) / np.maximum(e32, 1e-12)))
        report[name] = {"agreement": round(agree, 6), "clear_flips": round(clear_flips, 6),
                        ("error_correlation" if name == "holdout" else "error_rank_correlation"): round(corr, 6),
                        "median_rel_error_diff": round(rel, 6),
                        "fp32_mean_error": float(e32.mean()), "int8_mean_error": float(e8.mean()),
                        "fp32_over_threshold": float(np.mean(e32 > threshold_fp32)),
                        "int8_over_threshold": float(np.mean(e8 > threshold_int8))}
        if name == "holdout" and agree < limits.min_agreement:
            failures.append(f"{name} decision agreement {agree:.4f} < {limits.min_agreement}")
        if clear_flips > limits.max_clear_flips:
            failures.append(f"{name} clear decisions flipped {clear_flips:.4f} > {limits.max_clear_flips}")
        min_corr = limits.min_holdout_correlation if name == "holdout" else limits.min_probe_rank_correlation
        if corr < min_corr:
            failures.append(f"{name} error correlation {corr:.4f} < {min_corr}")
    report["passed"] = not failures
    logger.info("int8 check passed=%s holdout_corr=%.4f probe_rank_corr=%.4f probe_agree=%.4f",
                report["passed"], report["holdout"]["error_correlation"],
                report["probe"]["error_rank_correlation"], report["probe"]["agreement"])
    if failures:
        raise QuantizationCheckError("INT8 model refused: " + "; ".join(failures), report)
    return report


# How an INT8 threshold is found for one attempt: (INT8 session, its held-back errors, the median
# INT8/FP32 error ratio, the mapping's name) -> (threshold, how it was calibrated).
Int8Threshold = Callable[[ort.InferenceSession, np.ndarray, float, str], tuple[float, dict]]


def _ratio_threshold(threshold_fp32: float) -> Int8Threshold:
    def carry(_session, _errors, ratio: float, mapping: str) -> tuple[float, dict]:
        if mapping != "ratio":
            raise ValueError(f"no INT8 threshold rule given for mapping {mapping!r}")
        return threshold_fp32 * ratio, {"method": "fp32_times_ratio", "int8_over_fp32_error_ratio": ratio}
    return carry


@dataclass
class CheckedInt8:
    """An INT8 model that passed :func:`verify_int8`: its session, held-back errors and threshold."""

    session: ort.InferenceSession
    errors: np.ndarray     # mean error of each held-back window
    ratio: float           # median INT8 / FP32 error ratio on the held-back windows
    threshold: float
    calibration: dict      # how the threshold was found
    check: dict            # verify_int8's report, with the nodes kept in FP32 and the mapping used


def quantize_checked(fp32_path: Path, int8_path: Path, fp32: ort.InferenceSession, *, calibration: np.ndarray,
                     holdout: np.ndarray, threshold_fp32: float, int8_threshold: Int8Threshold | None = None,
                     attempts: Sequence[Sequence[str]] | None = None, mappings: Sequence[str] = ("ratio",),
                     limits: CheckLimits = CheckLimits(), seed: int = 0, probe_shift: float = 4.0,
                     per_channel: bool = True, calibrate_method: str = "minmax") -> CheckedInt8:
    """Quantize the FP32 model at ``fp32_path`` to ``int8_path`` until :func:`verify_int8` passes.

    Tries each threshold ``mapping`` with each ``attempts`` entry (the nodes kept in
    FP32; default: none, then the output Gemm) on ``holdout``, or raises the last
    :class:`QuantizationCheckError`. ``int8_threshold`` gives each attempt's INT8
    threshold (default: the FP32 one times the median INT8/FP32 error ratio).
    """
    if attempts is None:
        attempts = [(), (gemm_nodes(onnx.load(str(fp32_path)))[-1],)]
    threshold_of = int8_threshold or _ratio_threshold(threshold_fp32)
    e32 = sensor_errors(fp32, holdout).mean(axis=1)
    failure: QuantizationCheckError | None = None
    for mapping, exclude in [(m, tuple(e)) for m in mappings for e in attempts]:
        quantize_model(fp32_path, int8_path, calibration, per_channel=per_channel, nodes_to_exclude=exclude,
                       calibrate_method=calibrate_method)
        s8 = make_session(int8_path)
        e8 = sensor_errors(s8, holdout).mean(axis=1)
        ratio = float(np.median(e8 / np.maximum(e32, 1e-12)))
        th8, info8 = threshold_of(s8, e8, ratio, mapping)
        try:
            check = verify_int8(fp32, s8, holdout, threshold_fp32, th8, limits, seed=seed, probe_shift=probe_shift)
        except QuantizationCheckError as e:
            logger.warning("int8 check failed excluded=%s threshold=%s: %s", list(exclude), mapping, e)
            failure = e
            continue
        check.update(fp32_nodes=list(exclude), threshold_mapping=mapping)
        return CheckedInt8(s8, e8, ratio, th8, info8, check)
    raise failure if failure is not None else ValueError("no INT8 attempt to make")


def write_int8_bundle(out_dir: str | Path, fp32_path: Path, fp32: ort.InferenceSession,
                      meta: dict | Callable[[dict], dict], *, calibration: np.ndarray, holdout: np.ndarray,
                      threshold_fp32: float, fp32_calibration: dict, int8_threshold: Int8Threshold | None = None,
                      attempts: Sequence[Sequence[str]] | None = None, mappings: Sequence[str] = ("ratio",),
                      limits: CheckLimits = CheckLimits(), seed: int = 0, probe_shift: float = 4.0,
                      per_channel: bool = True, calibrate_method: str = "minmax", version_tag: str = "") -> Path:
    """:func:`quantize_checked`, then write the bundle; return its path. The INT8 model is written
    beside ``fp32_path``.

    ``meta`` is the model's own part of ``bundle.json`` (sensors, window, scaler,
    ``training`` ...), or a function returning it from what every bundle says the
    same way and this writes anyway: format and model version, creation time,
    ``threshold``, ``thresholds`` and ``threshold_calibration`` (INT8 and FP32), the
    score, the INT8 check. What ``meta`` gives wins (a bundle with more models says
    its own format version and thresholds); ``training.quantization`` is added.
    """
    fp32_path = Path(fp32_path)
    int8_path = fp32_path.with_name(MODEL_FILES["int8"])
    int8 = quantize_checked(fp32_path, int8_path, fp32, calibration=calibration, holdout=holdout,
                            threshold_fp32=threshold_fp32, int8_threshold=int8_threshold, attempts=attempts,
                            mappings=mappings, limits=limits, seed=seed, probe_shift=probe_shift,
                            per_channel=per_channel, calibrate_method=calibrate_method)
    th8, info8, check = int8.threshold, int8.calibration, int8.check

    digest = hashlib.sha256(fp32_path.read_bytes() + int8_path.read_bytes()).hexdigest()
    created = datetime.now(timezone.utc)
    common = {"format_version": FORMAT_VERSION,
              "model_version": f"{created:%Y%m%dT%H%M%SZ}-{version_tag + '-' if version_tag else ''}{digest[:12]}",
              "created_at": created.isoformat(timespec="seconds"),
              "threshold": th8,
              "thresholds": {"int8": th8, "fp32": threshold_fp32},
              "threshold_calibration": {"int8": info8, "fp32": fp32_calibration},
              "score": "mean squared reconstruction error of the scaled window",
              "int8_check": check}
    full = {**common, **(meta(common) if callable(meta) else meta)}
    full["training"] = {**full.get("training", {}), "quantization": {
        "format": "QDQ", "activations": "int8", "weights": "int8", "output": "float", "per_channel": per_channel,
        "calibrate_method": calibrate_method, "calibration_windows": int(len(calibration))}}
    return write_bundle(out_dir, full, {"fp32": fp32_path, "int8": int8_path})
