"""The fleet's weights as an ordinary model bundle, ready for ``appliance release add``.

The server holds no gateway's data, so two things a bundle needs come from elsewhere:

* the **threshold**: every client calibrates the global model's threshold on its
  own held-back normal windows (the detector's POT calibration; on a slow process
  their errors averaged over the seed bundle's ``horizon``, as the live score is)
  and reports that one number; the fleet's FP32 threshold is their median (``[fleet] threshold``;
  ``max`` makes the fleet model quiet on every participating gateway's normal data
  at the price of sensitivity). A gateway whose own data disagrees finds out in its
  shadow run and keeps its model.
* the **INT8 calibration** (activation ranges) and the INT8-vs-FP32 check: a
  reference record of normal rows at the engineer (e.g. the commissioning record
  the seed bundle was trained on), as ``appliance train`` uses its own rows. Its
  errors also carry the FP32 threshold to INT8 (median INT8/FP32 error ratio).

Quantization, the INT8 check and what every bundle records are the detector's
(:func:`appliance.detector.quantize.write_int8_bundle`); the result is checked by the
detector's own loader before it is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from appliance.detector.autoencoder import TRAIN_BLAS_THREADS
from appliance.detector.bundle import HORIZON_FORMAT_VERSION, MODEL_FILES, data_sha256
from appliance.detector.frozen import FrozenCheck, held_rows
from appliance.detector.quantize import probe_shift_for, probe_windows, write_int8_bundle
from appliance.detector.session import make_session, sensor_errors
from appliance.detector.train import STALENESS_PERIODS, calibrate_threshold
from appliance.fleet.model import ModelSpec, autoencoder, averaged, client_windows
from appliance.fleet.robust import robust_threshold

MAX_CALIBRATION_WINDOWS = 2000


def write_fleet_bundle(spec: ModelSpec, weights: Sequence[np.ndarray], out_dir: str | Path, *,
                       reference_rows: np.ndarray, reference_sensors: Sequence[str],
                       reference_ts: np.ndarray | None = None, client_thresholds: Sequence[float] = (),
                       threshold_rule: str = "median", fleet_info: dict | None = None, seed: int = 0,
                       current_threshold: float | None = None, max_threshold_factor: float = 1.5) -> Path:
    """Export, quantize, check and write the fleet model as a bundle; return its path.

    ``current_threshold`` (the seed bundle's FP32 one) bounds the clients' thresholds
    (:func:`appliance.fleet.robust.robust_threshold`); the weights must be finite.
    """
    weights = spec.check(weights)  # shapes and finite values, before anything is written
    bounds = (current_threshold, max_threshold_factor)
    with threadpool_limits(limits=TRAIN_BLAS_THREADS):
        return _write(spec, weights, Path(out_dir), reference_rows, reference_sensors, reference_ts,
                      list(client_thresholds), threshold_rule, fleet_info or {}, seed, bounds)


def _write(spec, weights, out_dir, rows, sensors, ts, client_thresholds, rule, fleet_info, seed, bounds) -> Path:
    X_train, X_held = client_windows(spec, sensors, rows, ts, holdout=0.3)
    ae = autoencoder(spec, weights)
    ref_rows = np.asarray(rows, dtype=np.float64)[:, [list(sensors).index(s) for s in spec.sensors]]
    with tempfile.TemporaryDirectory(prefix="appliance-fleet-") as tmpdir:
        fp32_path = Path(tmpdir) / MODEL_FILES["fp32"]
        onnx.save(ae.to_onnx(), str(fp32_path))
        s32 = make_session(fp32_path)
        single = sensor_errors(s32, X_held).mean(axis=1)
        ref_th, ref_info = calibrate_threshold(averaged(spec, single))
        if client_thresholds:
            th32, robust = robust_threshold(client_thresholds, rule, *bounds)
            info32 = {"method": f"fleet_{rule}", "client_thresholds": client_thresholds,
                      "reference_threshold": ref_th, "reference": ref_info, "robust": robust}
        else:
            th32, info32 = ref_th, dict(ref_info, method=f"reference_{ref_info['method']}")
        # INT8 is checked on single windows, where it agrees with FP32 or not, at the single-window
        # threshold of the reference rows; a threshold on averaged errors is then carried over by the
        # INT8 / FP32 threshold ratio the check settled on (as appliance train does).
        check_th = th32 if spec.horizon == 1 else calibrate_threshold(single)[0]
        calib = X_train[np.linspace(0, len(X_train) - 1, min(len(X_train), MAX_CALIBRATION_WINDOWS)).astype(int)]
        shift = probe_shift_for(check_th, len(spec.sensors))
        calib = np.concatenate([calib, probe_windows(calib, max_shift=shift, seed=seed + 1)])
        meta = {
            "sensors": list(spec.sensors),
            "window": spec.window,
            "stride": spec.stride,
            "period_s": float(spec.period_s),
            "scaler": spec.scaler.to_dict(),
            "level_free": list(spec.level_free),
            "training": {
                "fleet": fleet_info,
                "reference": {"rows": int(len(ref_rows)), "data_sha256": data_sha256(list(spec.sensors), ref_rows),
                              "holdout_windows": int(len(X_held))},
                "model": {"type": "dense_autoencoder", "hidden": list(spec.hidden), "alpha": spec.alpha},
            },
        }
        # The frozen-sensor check is the model's neighbour, not part of it: learned from this
        # gateway's reference rows, over the scored span.
        frozen = FrozenCheck.fit(ref_rows, spec.sensors, span=spec.window + spec.horizon - 1,
                                 staleness_rows=held_rows(STALENESS_PERIODS * spec.period_s, spec.period_s))
        if frozen.allowed or spec.horizon > 1:
            meta.update(format_version=HORIZON_FORMAT_VERSION, horizon=spec.horizon)
        if frozen.allowed:
            meta["frozen"] = frozen.to_dict()
        return write_int8_bundle(out_dir, fp32_path, s32, meta if spec.horizon == 1 else _averaged_meta(meta, th32),
                                 calibration=calib, holdout=X_held, threshold_fp32=check_th, fp32_calibration=info32,
                                 seed=seed, probe_shift=shift, version_tag="fleet")


def _averaged_meta(meta: dict, th32: float):
    """``meta`` for :func:`write_int8_bundle` when thresholds apply to averaged errors: the checked
    single-window thresholds stay on record, and the INT8 one is carried over by their ratio."""
    def complete(common: dict) -> dict:
        single = common["thresholds"]
        th8 = th32 * single["int8"] / single["fp32"]
        calibration = {name: dict(info, single_window_threshold=single[name], horizon=meta["horizon"])
                       for name, info in common["threshold_calibration"].items()}
        return {**meta, "threshold": th8, "thresholds": {"int8": th8, "fp32": th32},
                "threshold_calibration": calibration}
    return complete
