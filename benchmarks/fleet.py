"""Fleet learning benchmark: local vs central vs federated (with and without DP) models, per gateway.

SKAB's valve1 experiments are split round-robin over N simulated gateways; each
gateway runs at its own operating point (Current, Pressure and Volume Flow scaled
by a factor, Temperature offset). A gateway's normal record is the first
``--train-rows`` rows of each of its experiments (SKAB's anomaly-free lead-in);
the rest of each experiment, anomalies included, is its held-back test data.

Models, each scored on every gateway's held-back data (window level: a window is
anomalous when its last row is labelled so; the bundle's INT8 model and threshold):

* ``local``      each gateway's own model (``train_bundle`` on its own rows), tested on its own data
* ``central``    one model trained on all gateways' rows pooled (what fleet learning avoids)
* ``fedavg``     the fleet model: a real Flower server and N client processes on loopback
                 (``appliance fleet server/client``), seeded with gateway 0's model
* ``fedavg+dp``  the same with central DP (``--noise`` z, ``--clip`` C)

Also reported: bytes per round per gateway, rounds to converge (first round whose
fleet evaluation loss is within 2 % of the best), a client's peak RSS, the
privacy spent. ``--source sim``: the same on the pump simulator (firmware-sim), each
gateway's pump at its own speed, held-back runs with bearing wear, cavitation and
a valve blockage.

Usage:
  .venv/bin/python benchmarks/fleet.py                 # N=3, 5 rounds; JSON to benchmarks/results/fleet.json
                                                       # (machine and library versions in front)
  .venv/bin/python benchmarks/fleet.py --gateways 4 --rounds 8 --noise 1.0 --clip 0.5
  .venv/bin/python benchmarks/fleet.py --source sim --out benchmarks/results/fleet-sim.json
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.broker import free_port  # noqa: E402
from appliance.detector.scorer import Detector  # noqa: E402
from appliance.detector.train import TrainSettings, read_csv, sliding_windows, train_bundle  # noqa: E402
from appliance.eval.datasets import skab_dir  # noqa: E402
from appliance.fleet.model import seed_from_bundle  # noqa: E402
from benchmarks.common import machine, write_results  # noqa: E402

SKAB = skab_dir()
LIBRARIES = ("flwr", "grpcio", "onnxruntime", "scikit-learn")  # the rounds, their transport, the models
SCALED = ("Current", "Pressure", "Volume Flow RateRMS")


def operating_point(sensors: list[str], rows: np.ndarray, factor: float) -> np.ndarray:
    out = rows.copy()
    for s in SCALED:
        if s in sensors:
            out[:, sensors.index(s)] *= factor
    if "Temperature" in sensors:
        out[:, sensors.index("Temperature")] += 20.0 * (factor - 1.0)
    return out


def load_gateways(n: int, spread: float, train_rows: int):
    files = sorted(glob.glob(str(SKAB / "valve1" / "*.csv")), key=lambda p: int(Path(p).stem))
    if not files:
        raise SystemExit(f"SKAB not found under {SKAB}")
    gateways = []
    for g in range(n):
        factor = 1.0 + spread * (g - (n - 1) / 2)
        normal, tests = [], []
        for f in files[g::n]:
            sensors, ts, rows, labels = read_csv(f)
            rows = operating_point(sensors, rows, factor)
            normal.append((ts[:train_rows], rows[:train_rows]))
            tests.append((rows[train_rows:], labels["anomaly"][train_rows:]))
        ts = np.concatenate([t for t, _ in normal])
        rows = np.concatenate([r for _, r in normal])
        gateways.append({"name": f"gw{g}", "factor": factor, "sensors": sensors, "ts": ts, "rows": rows,
                         "tests": tests})
    return gateways


def load_sim_gateways(n: int, spread: float, train_rows: int):
    """Gateways on the pump simulator: pump g runs at speed ``1 + spread * (g - (n-1)/2)`` (its operating point).

    Normal record: ``train_rows`` seconds; held-back data: one run per fault (300 s normal, then the fault).
    """
    from firmware_sim.pump import SENSORS as PUMP_SENSORS
    from firmware_sim.pump import PumpModel

    sensors = list(PUMP_SENSORS)
    gateways = []
    for g in range(n):
        speed = 1.0 + spread * (g - (n - 1) / 2)
        pump = PumpModel(seed=100 + g, speed=speed)
        rows = np.array([list(pump.step(1.0).values()) for _ in range(train_rows)])
        tests = []
        for k, fault in enumerate(("bearing_wear", "cavitation", "valve_blockage")):
            p = PumpModel(seed=200 + 10 * g + k, speed=speed)
            normal = [list(p.step(1.0).values()) for _ in range(300)]
            p.inject(fault)
            faulty = [list(p.step(1.0).values()) for _ in range(300)]
            tests.append((np.array(normal + faulty), np.r_[np.zeros(300), np.ones(300)]))
        gateways.append({"name": f"gw{g}", "factor": speed, "sensors": sensors,
                         "ts": 1_700_000_000.0 + np.arange(train_rows, dtype=np.float64), "rows": rows,
                         "tests": tests})
    return gateways


def write_csv(path: Path, sensors, ts, rows) -> Path:
    lines = ["ts," + ",".join(sensors)] + [f"{t:.1f}," + ",".join(f"{v:.6g}" for v in r) for t, r in zip(ts, rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate(bundle: Path, gw: dict) -> dict:
    det = Detector.load(bundle)
    tp = fp = tn = fn = 0
    for rows, labels in gw["tests"]:
        cols = [gw["sensors"].index(s) for s in det.sensors]
        X = sliding_windows(rows[:, cols], det.window, 1)
        y = labels[det.window - 1:] > 0
        errors, _ = det.score_batch(X)
        pred = errors > det.threshold
        tp += int(np.sum(pred & y))
        fp += int(np.sum(pred & ~y))
        tn += int(np.sum(~pred & ~y))
        fn += int(np.sum(~pred & y))
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"f1": round(f1, 3), "far": round(fp / max(1, fp + tn), 3), "mar": round(fn / max(1, fn + tp), 3)}


def run_fleet(work: Path, name: str, gateways, seed: Path, reference: Path, csvs, fleet: dict) -> tuple[Path, dict]:
    folder = work / name
    folder.mkdir()
    lines = ['log_level = "WARNING"', "[fleet]"] + [f"{k} = {json.dumps(v)}" for k, v in fleet.items()
                                                    if not isinstance(v, dict)]
    for k, v in fleet.items():
        if isinstance(v, dict):
            lines += [f"[fleet.{k}]"] + [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    cfg = folder / "fleet.toml"
    cfg.write_text("\n".join(lines) + "\n")
    port = free_port()
    cmd = [sys.executable, "-m", "appliance.cli", "fleet"]
    out, report = folder / "bundle", folder / "report.json"
    server = subprocess.Popen(cmd + ["server", "--config", str(cfg), "--init", str(seed), "--reference",
                                     str(reference), "--out", str(out), "--report", str(report),
                                     "--address", f"127.0.0.1:{port}"], cwd=ROOT,
                              stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT)
    clients = [subprocess.Popen(cmd + ["client", "--config", str(cfg), "--data", str(csvs[g["name"]]), "--name",
                                       g["name"], "--server", f"127.0.0.1:{port}"], cwd=ROOT,
                                stdout=open(folder / f"{g['name']}.log", "w"), stderr=subprocess.STDOUT)
               for g in gateways]
    code = server.wait()
    for c in clients:
        c.wait()
    if not report.exists():
        raise SystemExit(f"fleet server {name} failed: {(folder / 'server.log').read_text()[-3000:]}")
    result = json.loads(report.read_text())
    # The rounds ran but the model was refused as a bundle (e.g. its INT8 check): a result, not a crash.
    return (out if code == 0 else None), result


def summary(report: dict) -> dict:
    rounds = report["rounds"]
    losses = [r["eval_loss"] for r in rounds if r["eval_loss"] is not None]
    best = min(losses) if losses else None
    converged = next((i + 1 for i, v in enumerate(losses) if v <= 1.02 * best), None) if losses else None
    up = [c["bytes_up"] for r in rounds for c in r["clients"]]
    return {"rounds_released": report["rounds_released"], "eval_loss": [round(v, 5) for v in losses],
            "rounds_to_converge": converged,
            "bytes_per_round_per_gateway": {"down": rounds[0]["bytes_down_per_client"],
                                            "up": int(np.mean(up)) if up else 0},
            "client_peak_rss_mb": round(max(c["peak_rss_kb"] for r in rounds for c in r["clients"]) / 1024, 1),
            "privacy": report.get("privacy"), "bundle_error": report.get("bundle_error")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=("skab", "sim"), default="skab",
                    help="SKAB valve1 experiments, or the pump simulator (operating point = pump speed)")
    ap.add_argument("--gateways", type=int, default=3)
    ap.add_argument("--spread", type=float, default=0.1, help="operating-point factor step between gateways")
    ap.add_argument("--train-rows", type=int, default=None,
                    help="normal rows per SKAB experiment (default 400) or simulated seconds (default 1200)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--strategy", choices=("fedavg", "fedprox"), default="fedavg")
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet.json"))
    args = ap.parse_args()

    started = time.monotonic()
    if args.source == "sim":
        gateways = load_sim_gateways(args.gateways, args.spread, args.train_rows or 1200)
    else:
        gateways = load_gateways(args.gateways, args.spread, args.train_rows or 400)
    settings = TrainSettings(window=10, hidden=(32, 8), max_iter=60, calibration="holdout", seed=0)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        csvs = {g["name"]: write_csv(work / f"{g['name']}.csv", g["sensors"], g["ts"], g["rows"]) for g in gateways}
        local = {g["name"]: train_bundle(g["rows"], g["sensors"], work / f"local-{g['name']}", settings, ts=g["ts"])
                 for g in gateways}
        order = np.argsort(np.concatenate([g["ts"] for g in gateways]), kind="stable")
        central = train_bundle(np.concatenate([g["rows"] for g in gateways])[order], gateways[0]["sensors"],
                               work / "central", settings, ts=np.concatenate([g["ts"] for g in gateways])[order])
        base = {"strategy": args.strategy, "rounds": args.rounds, "clients": len(gateways),
                "min_results": len(gateways), "local_epochs": args.epochs, "batch_size": 64,
                "round_timeout_s": 3600.0, "join_timeout_s": 3600.0}
        seed, reference = local["gw0"], csvs["gw0"]
        seed_hidden = list(seed_from_bundle(seed)[0].hidden)
        fed, fed_report = run_fleet(work, "fedavg", gateways, seed, reference, csvs, base)
        dp = {"enabled": True, "noise_multiplier": args.noise, "clipping_norm": args.clip, "delta": 1e-5}
        fed_dp, dp_report = run_fleet(work, "fedavg_dp", gateways, seed, reference, csvs, dict(base, dp=dp))

        models = {"local": None, "central": central, "fedavg": fed, "fedavg+dp": fed_dp}
        table = {}
        for g in gateways:
            table[g["name"]] = {m: (evaluate(local[g["name"]], g) if m == "local" else
                                    evaluate(b, g) if b is not None else {"refused": True})
                                for m, b in models.items()}
    result = {"source": args.source, "spread": args.spread,
              "gateways": [{"name": g["name"], "factor": g["factor"], "train_rows": int(len(g["rows"])),
                             "test_files": len(g["tests"])} for g in gateways],
              "settings": {"window": 10, "hidden": [32, 8], "max_iter": 60, **base,
                           "dp": {"noise_multiplier": args.noise, "clipping_norm": args.clip}},
              "seed_hidden": seed_hidden, "scores": table,
              "fedavg": summary(fed_report), "fedavg+dp": summary(dp_report),
              "seconds": round(time.monotonic() - started, 1)}

    print(f"{'gateway':8} {'point':>6}  " + "  ".join(f"{m:>20}" for m in models))
    print(f"{'':8} {'':>6}  " + "  ".join(f"{'F1 / FAR / MAR':>20}" for _ in models))
    for g in gateways:
        cells = ["no bundle" if s.get("refused") else f"{s['f1']:.2f} / {s['far']:.2f} / {s['mar']:.2f}"
                 for s in table[g["name"]].values()]
        print(f"{g['name']:8} {g['factor']:6.2f}  " + "  ".join(f"{c:>20}" for c in cells))
    for name in ("fedavg", "fedavg+dp"):
        s = result[name]
        line = (f"{name}: rounds {s['rounds_released']}, converged after {s['rounds_to_converge']}, "
                f"bytes/round/gateway down {s['bytes_per_round_per_gateway']['down']} "
                f"up {s['bytes_per_round_per_gateway']['up']}, "
                f"client peak RSS {s['client_peak_rss_mb']} MB, eval loss {s['eval_loss']}")
        if s["bundle_error"]:
            line += f", no bundle: {s['bundle_error']}"
        if s["privacy"]:
            line += f", epsilon {s['privacy']['epsilon']:.2f} at delta {s['privacy']['delta']:g}"
        print(line)
    m = machine(LIBRARIES)
    print(f"{m['cpu']} ({m['machine']}, {m['cores']} cores, load average {m['load_average']}), "
          f"flwr {m['libraries']['flwr']}")
    print(f"written {write_results(args.out, result, libraries=LIBRARIES)} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
