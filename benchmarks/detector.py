"""Detector benchmark: ONNX Runtime latency and throughput, INT8 vs FP32, in one run.

Measures, single-threaded (intra_op_num_threads=1, as the gateway runs it):
  * one window, ORT session.run only and the full ``Detector.score_one`` path (p50/p99 µs)
  * batch of 256 windows, ORT only and ``Detector.score_batch`` (windows/s)
  * model file sizes
and prints a table plus writes JSON (default benchmarks/results/detector.json, machine and
library versions in front).

Usage:
  .venv/bin/python benchmarks/detector.py                      # trains on anomaly-free SKAB (or synthetic data)
  .venv/bin/python benchmarks/detector.py --bundle var/model    # benchmark an existing bundle
  .venv/bin/python benchmarks/detector.py --hidden 128 16 --out benchmarks/results/detector-128x16.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from appliance.core import Window  # noqa: E402
from benchmarks.common import machine, write_results  # noqa: E402
from appliance.detector.scorer import Detector  # noqa: E402
from appliance.detector.session import ONNX_INPUT, ONNX_OUTPUT, takes_flat_windows  # noqa: E402
from appliance.detector.train import TrainSettings, read_csv_rows, sliding_windows, train_bundle  # noqa: E402
from appliance.eval.datasets import skab_dir  # noqa: E402

LIBRARIES = ("onnxruntime", "onnx", "scikit-learn")  # the session, the exported graph, the trainer
DEFAULT_DATA = skab_dir() / "anomaly-free" / "anomaly-free.csv"


def synthetic_rows(n: int = 10_000, sensors: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = 1.0 + 0.3 * np.sin(t / 60.0)
    rows = np.stack([(i + 1) * load + 0.05 * rng.standard_normal(n) + np.sin(t / (7 + i)) * 0.1
                     for i in range(sensors)], axis=1)
    return [f"s{i}" for i in range(sensors)], rows


def timed(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = time.perf_counter_ns() - t0
    return out / 1000.0  # µs


def bench(det: Detector, windows: np.ndarray, iters: int, batch_iters: int) -> dict:
    sess = det._session
    scaled = det.scale(windows)
    # Fed in the model's own input shape (format 3: flattened windows), as Detector does.
    shape = (lambda a: a.reshape(len(a), -1)) if takes_flat_windows(sess) else (lambda a: a)
    one = shape(np.ascontiguousarray(scaled[:1]))
    batch = shape(np.ascontiguousarray(scaled[:256]))
    raw_batch = windows[:256]
    win = Window(asset="bench", t_end=0.0, period=det.period_s, sensors=det.sensors,
                 values=windows[0].astype(np.float64), mask=np.ones(windows[0].shape, dtype=bool))
    for _ in range(200):  # warm-up: allocator, kernel selection, caches
        sess.run([ONNX_OUTPUT], {ONNX_INPUT: one})
        det.score_one(win)
    for _ in range(20):
        sess.run([ONNX_OUTPUT], {ONNX_INPUT: batch})
    ort_one = timed(lambda: sess.run([ONNX_OUTPUT], {ONNX_INPUT: one}), iters)
    full_one = timed(lambda: det.score_one(win), iters)
    ort_b = timed(lambda: sess.run([ONNX_OUTPUT], {ONNX_INPUT: batch}), batch_iters)
    full_b = timed(lambda: det.score_batch(raw_batch), batch_iters)
    return {
        "model_bytes": det.bundle.models[det.precision].stat().st_size,
        "one_window_ort_us": {"p50": float(np.percentile(ort_one, 50)), "p99": float(np.percentile(ort_one, 99))},
        "one_window_score_one_us": {"p50": float(np.percentile(full_one, 50)),
                                    "p99": float(np.percentile(full_one, 99))},
        "batch256_ort_windows_per_s": float(256 / (np.median(ort_b) / 1e6)),
        "batch256_score_batch_windows_per_s": float(256 / (np.median(full_b) / 1e6)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="existing bundle (default: train one)")
    ap.add_argument("--data", type=Path, nargs="*", help="CSV files to train on (default: anomaly-free SKAB "
                    "if present, else synthetic)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detector.json")
    ap.add_argument("--hidden", type=int, nargs="+", help="hidden layer sizes of the trained model "
                    "(default: the trainer's)")
    ap.add_argument("--iters", type=int, default=5000, help="single-window repetitions")
    ap.add_argument("--batch-iters", type=int, default=300, help="batch-256 repetitions")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-detector-") as tmp:
        bundle = args.bundle
        source = str(bundle) if bundle else None
        if bundle is None:
            data = args.data or ([DEFAULT_DATA] if DEFAULT_DATA.exists() else None)
            if data:
                sensors, ts, rows = read_csv_rows(data)
                source = ", ".join(str(p) for p in data)
            else:
                (sensors, rows), ts = synthetic_rows(), None
                source = "synthetic 10000 x 8"
            t0 = time.monotonic()
            settings = TrainSettings(hidden=tuple(args.hidden)) if args.hidden else TrainSettings()
            bundle = train_bundle(rows, sensors, Path(tmp) / "bundle", settings, ts=ts)
            train_s = time.monotonic() - t0
        else:
            train_s = None
        dets = {p: Detector.load(bundle, precision=p, threads=1) for p in ("fp32", "int8")}
        d = dets["fp32"]
        rng = np.random.default_rng(0)
        windows = (d.bundle.scaler.center + d.bundle.scaler.scale
                   * rng.standard_normal((512, d.window, len(d.sensors)))).astype(np.float32)
        if args.bundle is None:
            windows = sliding_windows(rows.astype(np.float32), d.window, 7)[:512]
        results = {p: bench(det, windows, args.iters, args.batch_iters) for p, det in dets.items()}
        meta = d.bundle.meta

    f, i = results["fp32"], results["int8"]
    ratios = {
        "size_fp32_over_int8": f["model_bytes"] / i["model_bytes"],
        "batch256_ort_int8_over_fp32": i["batch256_ort_windows_per_s"] / f["batch256_ort_windows_per_s"],
        "batch256_score_batch_int8_over_fp32": (i["batch256_score_batch_windows_per_s"]
                                                / f["batch256_score_batch_windows_per_s"]),
        "one_window_p99_fp32_over_int8": f["one_window_ort_us"]["p99"] / i["one_window_ort_us"]["p99"],
    }
    report = {
        "threads": 1,
        "bundle": {"source": source, "sensors": len(d.sensors), "window": d.window,
                   "hidden": meta["training"]["model"]["hidden"], "fp32_nodes": meta["int8_check"].get("fp32_nodes"),
                   "train_seconds": train_s},
        "results": results, "ratios": ratios,
    }
    m = machine(LIBRARIES)
    print(f"CPU: {m['cpu']} ({m['machine']}, {m['cores']} cores, load average {m['load_average']}), "
          f"onnxruntime {ort.__version__}, 1 thread")
    print(f"model: window={d.window} sensors={len(d.sensors)} hidden={meta['training']['model']['hidden']} "
          f"trained on {source}" + (f" in {train_s:.1f} s" if train_s else ""))
    rows_out = [
        ("model size (bytes)", f["model_bytes"], i["model_bytes"], "{:,.0f}"),
        ("1 window ORT p50 (µs)", f["one_window_ort_us"]["p50"], i["one_window_ort_us"]["p50"], "{:.1f}"),
        ("1 window ORT p99 (µs)", f["one_window_ort_us"]["p99"], i["one_window_ort_us"]["p99"], "{:.1f}"),
        ("1 window score_one p50 (µs)", f["one_window_score_one_us"]["p50"],
         i["one_window_score_one_us"]["p50"], "{:.1f}"),
        ("1 window score_one p99 (µs)", f["one_window_score_one_us"]["p99"],
         i["one_window_score_one_us"]["p99"], "{:.1f}"),
        ("batch 256 ORT (windows/s)", f["batch256_ort_windows_per_s"], i["batch256_ort_windows_per_s"], "{:,.0f}"),
        ("batch 256 score_batch (windows/s)", f["batch256_score_batch_windows_per_s"],
         i["batch256_score_batch_windows_per_s"], "{:,.0f}"),
    ]
    print(f"{'metric':36s} {'FP32':>14s} {'INT8':>14s} {'INT8/FP32':>10s}")
    for name, a, b, fmt in rows_out:
        print(f"{name:36s} {fmt.format(a):>14s} {fmt.format(b):>14s} {b / a:>10.2f}")
    print(f"written {write_results(args.out, report, libraries=LIBRARIES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
