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

``--runtime deployment``: Flower's deployment runtime at scale (pump simulator
only): one SuperLink (``appliance fleet superlink``, TLS and node
authentication) and one SuperNode process per gateway (``appliance fleet
node``, each with its own key), N = 20 by default, each pump at its own speed;
runs with SecAgg+ on, off, and on with ``--leave`` gateways killed mid-round 1
that come back for round 2. Reported per run: rounds to converge, seconds per
round, payload bytes per round per gateway each way (the ClientApp's
``traffic-file``: arrays and config values, HTTP/TLS framing not counted), the
SuperLink's peak RSS (alone and with its SuperExec and ServerApp), and each
model's F1/FAR/MAR on every gateway's held-back faults against local and
central models. JSON to ``benchmarks/results/fleet_deploy.json``.

Usage:
  .venv/bin/python benchmarks/fleet.py --runtime deployment --gateways 20 --rounds 3
  .venv/bin/python benchmarks/fleet.py                 # N=3, 5 rounds; JSON to benchmarks/results/fleet.json
                                                       # (machine and library versions in front)
  .venv/bin/python benchmarks/fleet.py --gateways 4 --rounds 8 --noise 1.0 --clip 0.5
  .venv/bin/python benchmarks/fleet.py --source sim --out benchmarks/results/fleet-sim.json
"""

from __future__ import annotations

import argparse
import glob
import json
import signal
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
from rigs.fleet_run import fleet_toml  # noqa: E402

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


def baselines(work: Path, gateways, settings: TrainSettings) -> tuple[dict, dict, Path]:
    """Each gateway's rows as CSV, its own (local) model, and one model trained on all rows pooled (central)."""
    csvs = {g["name"]: write_csv(work / f"{g['name']}.csv", g["sensors"], g["ts"], g["rows"]) for g in gateways}
    local = {g["name"]: train_bundle(g["rows"], g["sensors"], work / f"local-{g['name']}", settings, ts=g["ts"])
             for g in gateways}
    order = np.argsort(np.concatenate([g["ts"] for g in gateways]), kind="stable")
    central = train_bundle(np.concatenate([g["rows"] for g in gateways])[order], gateways[0]["sensors"],
                           work / "central", settings, ts=np.concatenate([g["ts"] for g in gateways])[order])
    return csvs, local, central


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
    cfg = folder / "fleet.toml"
    cfg.write_text(fleet_toml(fleet, log_level="WARNING"))
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


# -- the deployment runtime: SuperLink + one SuperNode process per gateway (--runtime deployment) ------------------


class RssSampler:
    """Peak resident memory of a process and of its whole tree (the SuperLink, its SuperExec and ServerApp)."""

    def __init__(self, pid: int, interval_s: float = 1.0):
        import threading

        self.pid, self.interval_s = pid, interval_s
        self.peak_kb = self.peak_tree_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss_kb(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    @staticmethod
    def _children() -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        return kids

    def _tree(self) -> list[int]:
        kids, out, todo = self._children(), [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += kids.get(p, [])
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_kb = max(self.peak_kb, self._rss_kb(self.pid))
            self.peak_tree_kb = max(self.peak_tree_kb, sum(self._rss_kb(p) for p in self._tree()))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"superlink_peak_rss_mb": round(self.peak_kb / 1024, 1),
                "superlink_tree_peak_rss_mb": round(self.peak_tree_kb / 1024, 1)}


def traffic_by_round(nodes) -> dict:
    """Per round: payload bytes per gateway each way (mean over the gateways that took part) and when it ended."""
    from rigs.fleet import traffic

    rounds: dict[int, dict] = {}
    for node in nodes:
        per: dict[int, dict] = {}
        for m in traffic(node):
            r = per.setdefault(int(m["group"]), {"down": 0, "up": 0, "messages": 0, "end": 0.0})
            r["down"] += m["down"]
            r["up"] += m["up"]
            r["messages"] += 1
            r["end"] = max(r["end"], m["t"])
        for k, v in per.items():
            rounds.setdefault(k, []).append(v)
    out = {}
    for k, vs in sorted(rounds.items()):
        out[k] = {"gateways": len(vs), "down_bytes": int(np.mean([v["down"] for v in vs])),
                  "up_bytes": int(np.mean([v["up"] for v in vs])),
                  "messages": int(np.mean([v["messages"] for v in vs])), "ended_at": max(v["end"] for v in vs)}
    return out


def deployment_run(rig, name: str, nodes, seed: Path, reference: Path, fleet: dict, leave: int = 0,
                   csvs=None) -> dict:
    """One ``appliance fleet run`` on the rig's SuperLink; ``leave`` gateways drop in round 1 and come back."""
    from rigs.fleet import traffic

    for node in nodes:
        if node.traffic.exists():
            node.traffic.unlink()
    rig.write_config(fleet)
    sampler = RssSampler(rig.superlink.pid)
    started = time.time()
    run = rig.run(seed, [reference], name=name)
    left = []
    if leave:
        leavers = nodes[-leave:]
        while run.poll() is None and len(left) < leave:
            for node in leavers:
                if node not in left and any(m["group"] == "1" for m in traffic(node)):
                    node.stop(signal.SIGKILL)  # mid-round 1: after its first message of the round
                    left.append(node)
            time.sleep(0.2)
        # They come back once every other gateway answered another message of round 1 without them (the
        # round went on); not after round 1's evaluation: the server's rejoin wait holds that for them.
        seen = {n.name: len(traffic(n)) for n in nodes[:-leave]}
        while run.poll() is None and not all(len(traffic(n)) > seen[n.name] for n in nodes[:-leave]):
            time.sleep(0.5)
        for node in left:
            rig.start_node(node, [csvs[node.name]], secagg_required=False)
    code = run.wait()
    seconds = time.time() - started
    memory = sampler.stop()
    report_path = rig.folder / name / "report.json"
    if not report_path.exists():
        raise SystemExit(f"run {name} failed ({code}): {(rig.folder / name / 'run.log').read_text()[-3000:]}")
    report = json.loads(report_path.read_text())
    per_round = traffic_by_round(nodes)
    ends = [started] + [per_round[k]["ended_at"] for k in sorted(per_round)]
    s = summary_deploy(report)
    s.update(memory, seconds=round(seconds, 1), left_mid_round=[n.name for n in left],
             seconds_per_round=[round(b - a, 1) for a, b in zip(ends, ends[1:])],
             per_round_traffic={k: {kk: vv for kk, vv in v.items() if kk != "ended_at"}
                                for k, v in per_round.items()},
             clients_per_round=[len(r["clients"]) for r in report["rounds"]],
             failures_per_round=[r["failures"] for r in report["rounds"]])
    return {"summary": s, "bundle": Path(report["bundle"]) if "bundle" in report else None}


def summary_deploy(report: dict) -> dict:
    rounds = report["rounds"]
    losses = [r["eval_loss"] for r in rounds if r["eval_loss"] is not None]
    best = min(losses) if losses else None
    converged = next((i + 1 for i, v in enumerate(losses) if v <= 1.02 * best), None) if losses else None
    return {"rounds_released": report["rounds_released"], "eval_loss": [round(v, 5) for v in losses],
            "rounds_to_converge": converged, "parameter_bytes": rounds[0]["bytes_down_per_client"],
            "bundle_error": report.get("bundle_error")}


def deployment_main(args) -> int:
    """``--runtime deployment``: N gateways as SuperNode processes on one SuperLink (TLS, node auth)."""
    from rigs.fleet import FleetRig
    from rigs.tls_server import make_tls

    started = time.monotonic()
    gateways = load_sim_gateways(args.gateways, args.spread, args.train_rows or 600)
    settings = TrainSettings(window=10, hidden=(16, 4), max_iter=30, calibration="holdout", seed=0)
    leave = min(args.leave, max(0, args.gateways - 2))
    with tempfile.TemporaryDirectory(prefix="fleet-deploy-bench-") as tmp:
        work = Path(tmp)
        csvs, local, central = baselines(work, gateways, settings)
        seed, reference = local["gw0"], csvs["gw0"]
        n = len(gateways)
        base = {"strategy": "fedavg", "rounds": args.rounds, "clients": n, "min_results": max(2, n - leave),
                "local_epochs": args.epochs, "batch_size": 64, "round_timeout_s": args.round_timeout, "join_timeout_s": 1800.0}
        rig = FleetRig(work / "rig", make_tls(work / "tls"), base).start()
        runs: dict[str, dict] = {}
        try:
            nodes = [rig.new_node(g["name"]) for g in gateways]
            for node in nodes:
                rig.start_node(node, [csvs[node.name]], secagg_required=False)
            shares = min(args.shares, n)
            # Survives `leave` gateways lost next to each other on the round's ring (each gateway then still
            # has shares - leave holders), but never fewer than 2/3 of the shares (what it takes to unmask one).
            secagg = {"enabled": True, "num_shares": shares,
                      "reconstruction_threshold": max(2, min(shares - leave, shares * 2 // 3))}
            plans = {"secagg": (dict(base, secagg=secagg), 0), "plain": (dict(base, secagg={"enabled": False}), 0),
                     "secagg_leave": (dict(base, secagg=secagg, rejoin_timeout_s=1800.0), leave)}
            for name in args.scenarios:
                fleet, k = plans[name]
                runs[name] = deployment_run(rig, name, nodes, seed, reference, fleet, leave=k, csvs=csvs)
                print(f"{name}: {runs[name]['summary']}", flush=True)
                # Written after every run: a long benchmark on a loaded machine keeps what completed.
                write_deployment_result(args, gateways, local, central, runs, base, leave, started)
        finally:
            rig.stop()
    return 0


def write_deployment_result(args, gateways, local, central, runs, base, leave, started) -> dict:
    n = len(gateways)
    models = {"local": None, "central": central} | {k: v["bundle"] for k, v in runs.items()}
    table = {g["name"]: {m: (evaluate(local[g["name"]], g) if m == "local" else
                             evaluate(b, g) if b is not None else {"refused": True})
                         for m, b in models.items()} for g in gateways}
    means = {m: {k: round(float(np.mean([table[g][m][k] for g in table if k in table[g][m]])), 3)
                 for k in ("f1", "far", "mar")} for m in models}
    result = {"runtime": "deployment (flower-superlink + one flower-supernode process per gateway, TLS, node "
                         "authentication)", "source": "sim", "spread": args.spread,
              "gateways": [{"name": g["name"], "speed": g["factor"], "train_rows": int(len(g["rows"]))}
                           for g in gateways],
              "settings": {"window": 10, "hidden": [16, 4], "max_iter": 30, **base, "leave": leave},
              "scenarios_planned": list(args.scenarios), "scenarios_done": list(runs),
              "runs": {k: v["summary"] for k, v in runs.items()}, "scores": table, "mean_scores": means,
              "seconds": round(time.monotonic() - started, 1)}
    print(f"{'model':14} {'F1':>6} {'FAR':>6} {'MAR':>6}   (mean over {n} gateways, held-back pump faults)")
    for m, s in means.items():
        print(f"{m:14} {s.get('f1', float('nan')):6.3f} {s.get('far', float('nan')):6.3f} "
              f"{s.get('mar', float('nan')):6.3f}")
    for k, v in result["runs"].items():
        t = v["per_round_traffic"]
        first = t[min(t)] if t else {"down_bytes": 0, "up_bytes": 0}
        print(f"{k}: {v['rounds_released']} rounds released, converged after {v['rounds_to_converge']}, "
              f"s/round {v['seconds_per_round']}, bytes/round/gateway down {first['down_bytes']} up "
              f"{first['up_bytes']}, SuperLink RSS {v['superlink_peak_rss_mb']} MB (tree "
              f"{v['superlink_tree_peak_rss_mb']} MB), clients/round {v['clients_per_round']}")
    m = machine(LIBRARIES)
    print(f"{m['cpu']} ({m['machine']}, {m['cores']} cores, load average {m['load_average']}), "
          f"flwr {m['libraries']['flwr']}")
    print(f"written {write_results(args.out, result, libraries=LIBRARIES)} ({result['seconds']} s)", flush=True)
    return result


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
    ap.add_argument("--out", default=None, help="default: benchmarks/results/fleet.json (fleet_deploy.json)")
    ap.add_argument("--runtime", choices=("one-process", "deployment"), default="one-process",
                    help="deployment: a SuperLink and one SuperNode process per gateway (pump simulator)")
    ap.add_argument("--leave", type=int, default=3, help="deployment: gateways that drop in round 1 and come back")
    ap.add_argument("--round-timeout", type=float, default=300.0, help="deployment: round_timeout_s")
    ap.add_argument("--shares", type=int, default=7, help="deployment: SecAgg+ shares per gateway")
    ap.add_argument("--scenarios", nargs="+", default=["secagg", "plain", "secagg_leave"],
                    choices=("secagg", "plain", "secagg_leave"), help="deployment: the runs to make")
    args = ap.parse_args()
    if args.runtime == "deployment":
        args.out = args.out or str(ROOT / "benchmarks" / "results" / "fleet_deploy.json")
        return deployment_main(args)
    args.out = args.out or str(ROOT / "benchmarks" / "results" / "fleet.json")

    started = time.monotonic()
    if args.source == "sim":
        gateways = load_sim_gateways(args.gateways, args.spread, args.train_rows or 1200)
    else:
        gateways = load_gateways(args.gateways, args.spread, args.train_rows or 400)
    settings = TrainSettings(window=10, hidden=(32, 8), max_iter=60, calibration="holdout", seed=0)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        csvs, local, central = baselines(work, gateways, settings)
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
