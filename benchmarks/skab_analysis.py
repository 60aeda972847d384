"""SKAB: is it the score or the threshold/debounce that is short of F1 0.85 / FAR 15 %? (analysis only)

This is an **analysis with the test labels**, never a way to choose a setting:
every "oracle" below looks at the labels, so none of its numbers may become a
default. It answers issue 28 item 6's question "why can the model class not
reach F1 >= 0.85 with FAR <= 15 %, and what would".

One protocol run of ``appliance eval skab`` (defaults, INT8) keeps every file's
per-window score ratio (score / threshold); everything else is replayed from
those traces with the appliance's own :class:`~appliance.actions.decide.Decider`
and :func:`~appliance.eval.skab.row_predictions`, so a decision-rule variant
replayed here is exactly what the protocol would give with the same model.

* **Oracle thresholds**: the best pooled F1 (and the best with FAR <= 15 %)
  reachable by one global multiplier on every file's threshold, and by a
  multiplier chosen per file (exact optimum of the pooled F1 by Dinkelbach's
  iteration); both through the debounce (3 of 5, clear after 5 under 0.8 x) and
  on the raw score (alarm = this row's ratio over the multiplier).
* **Separability**: the area under the ROC curve of the raw score, per file
  and pooled: how well any threshold could sort anomalous from normal rows.
* **Where the errors of the default are** (each row counted once):
  (a) missed rows at an anomaly's start before the first alarm (detection
  delay), (b) alarmed normal rows right after an anomaly ends while the alarm
  raised in it still holds (hang-over), split into what the causal window and
  the clear rule force (window - 1 + clear_n rows) and the rest, (c) rows of
  episodes never alarmed, (d) alarmed rows in the normal head (before the first
  anomaly), plus misses inside a detected episode after its first alarm and
  re-raised false alarms after an episode; with the F1/FAR each would give if
  only its errors were corrected.
* **Decision variants** (``--variants``): a few debounce/clear rules replayed
  on the same traces, and (``--validation``) on the label-free validation
  traces (synthetic faults on ``anomaly-free.csv``), which is where a choice
  may be made.

Usage:
  .venv/bin/python benchmarks/skab_analysis.py [--traces FILE.npz] [--validation FILE.npz] [--out FILE]

``--traces`` / ``--validation``: trace files written by an earlier run of this
script; when a file does not exist, the protocol (or the validation) is run and
its traces are written there (about 40 minutes each on a loaded 2-core
machine). The committed results came from::

  benchmarks/skab_analysis.py --traces T.npz --validation V.npz
  # window 15: traces from protocol_traces / validation_traces with
  # EvalSettings(bundle={"window": 15}), then --window 15 --out .../skab_analysis_window15.json

The INT8 probes reach 3x the threshold times the default's drift allowance
(:data:`DRIFT_ALLOWANCE`), as in the protocol run, for every variant.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.actions.decide import Decider  # noqa: E402
from appliance.config import Config  # noqa: E402
from appliance.eval.common import confusion, scores_from  # noqa: E402
from appliance.eval.episodes import alarm_episodes  # noqa: E402
from appliance.eval.skab import row_predictions  # noqa: E402
from benchmarks.common import RESULTS, parser, write_results  # noqa: E402

FAR_GOAL = 15.0
F1_GOAL = 0.85
SCALES = np.geomspace(0.25, 64.0, 97)  # multipliers on each file's own threshold (x1.06 steps)


@dataclass(frozen=True)
class DecisionRule:
    raise_k: int = 3
    raise_n: int = 5
    clear_n: int = 5
    clear_ratio: float = 0.8
    critical_ratio: float = 2.0

    @classmethod
    def default(cls) -> "DecisionRule":
        d = Config().decision
        return cls(d.raise_k, d.raise_n, d.clear_n, d.clear_ratio, d.critical_ratio)

    def decider(self) -> Decider:
        return Decider(self.raise_k, self.raise_n, self.clear_n, self.clear_ratio, self.critical_ratio)


# ---------------------------------------------------------------- traces

@dataclass
class Trace:
    """One file's per-window INT8 score ratios and its test rows."""

    file: str
    t_end: np.ndarray
    ratio: np.ndarray
    test_ts: np.ndarray
    label: np.ndarray  # test rows, 0/1
    pred: np.ndarray | None = None  # the protocol run's own predictions (sanity check)

    @property
    def period_s(self) -> float:
        return float(np.median(np.diff(self.test_ts)))

    def row_ratio(self) -> np.ndarray:
        """Each test row's raw score: the ratio of the latest window ending at or before it (0 before any)."""
        j = np.searchsorted(self.t_end, self.test_ts + 1e-6 * self.period_s, side="right") - 1
        return np.where(j >= 0, self.ratio[np.clip(j, 0, None)], 0.0)

    def decided(self, scale: float = 1.0, rule: DecisionRule | None = None) -> np.ndarray:
        d = (rule or DecisionRule.default()).decider()
        active = np.fromiter((d.update_ratio(r / scale).active for r in self.ratio), dtype=bool,
                             count=len(self.ratio))
        return row_predictions(self.t_end, active, self.test_ts, self.period_s)


def int8_trace(rel: str, sensors: list[str], ts: np.ndarray, rows: np.ndarray, label: np.ndarray,
               settings, work_dir: Path, probe_reach: float) -> dict:
    """The protocol's INT8 path for one file (:func:`appliance.eval.skab.replay_file` without its FP32
    and reference detectors): train on the first rows, replay every row, keep each window's ratio."""
    from appliance.detector.bundle import load_bundle
    from appliance.detector.scorer import Detector
    from appliance.detector.train import train_grid
    from appliance.detector.windowing import WindowBuilder, grid_rows, rows_as_readings
    n_train, cfg = settings.train_rows, settings.config
    train = settings.train_settings(probe_reach=probe_reach)
    grid = grid_rows(rows_as_readings(rel, sensors, ts[:n_train], rows[:n_train]), sensors, train.period_s,
                     train.staleness_s, train.lateness_s)
    bundle = load_bundle(train_grid(grid, work_dir / rel.replace("/", "_"), train))
    det = Detector(bundle, "int8")
    builder = WindowBuilder(bundle.sensors, period_s=cfg.windows.period_s or bundle.period_s, window=bundle.span,
                            stride=cfg.windows.stride or bundle.stride, staleness_s=cfg.windows.staleness_s,
                            lateness_s=cfg.windows.lateness_s)
    cols = [sensors.index(s) for s in bundle.sensors]
    t_end, ratio = [], []
    for reading in rows_as_readings(rel, bundle.sensors, ts, rows[:, cols], source="skab"):
        for w in builder.add(reading):
            if w.complete:  # the runtime does not score incomplete windows either
                t_end.append(w.t_end)
                ratio.append(det.score_one(w).ratio)
    return {"file": rel, "t_end": np.asarray(t_end), "ratio": np.asarray(ratio), "ts_all": ts,
            "label_all": label, "train_rows": n_train, "window": bundle.window}


def run_int8_traces(path: Path, cases: list[tuple], settings, probe_reach: float, workers: int = 2) -> list[Trace]:
    """:func:`int8_trace` for every ``(name, sensors, ts, rows, label)`` case, saved to ``path``."""
    import tempfile
    from appliance.eval.skab import run_jobs
    with tempfile.TemporaryDirectory(prefix="skab-analysis-") as tmp:
        jobs = [(int8_trace, (*case, settings, Path(tmp), probe_reach)) for case in cases]
        results = run_jobs(jobs, workers)
    arrays = {}
    for i, r in enumerate(results):
        arrays.update({f"{i}/{k}": np.asarray(v) for k, v in r.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, n=np.array(len(results)), **arrays)
    return load_traces(path)


def load_traces(path: Path) -> list[Trace]:
    z = np.load(path)
    out = []
    for i in range(int(z["n"])):
        n_train = int(z[f"{i}/train_rows"])
        pred = z[f"{i}/pred_int8"] if f"{i}/pred_int8" in z else None
        out.append(Trace(str(z[f"{i}/file"]), z[f"{i}/t_end"], z[f"{i}/ratio"], z[f"{i}/ts_all"][n_train:],
                         (z[f"{i}/label_all"][n_train:] > 0).astype(np.uint8), pred))
    return out


# The protocol run's INT8 probes reach 3x the threshold times the drift allowance it measures on
# anomaly-free.csv (appliance.eval.skab.replay_file); benchmarks/results/skab_protocol.json: 1.8407.
DRIFT_ALLOWANCE = 1.8407


def protocol_traces(path: Path, settings=None) -> list[Trace]:
    """The protocol's INT8 traces (defaults: level-free sensors from anomaly-free.csv, as ``appliance eval skab``)."""
    from appliance.detector.train import read_csv
    from appliance.eval.common import EvalSettings, experiment_files, with_level_free
    from appliance.eval.datasets import skab_dir
    data = skab_dir()
    settings, _ = with_level_free(data, settings or EvalSettings())
    cases = []
    for rel, p in experiment_files(data):
        sensors, ts, rows, labels = read_csv(p)
        cases.append((rel, sensors, ts, rows, labels["anomaly"]))
    return run_int8_traces(path, cases, settings, 3.0 * DRIFT_ALLOWANCE)


def validation_traces(path: Path, settings=None) -> list[Trace]:
    """The label-free validation's INT8 traces (synthetic faults on anomaly-free.csv, ``appliance.eval.validation``)."""
    from appliance.detector.train import read_csv
    from appliance.eval.common import EvalSettings, anomaly_free_path, with_level_free
    from appliance.eval.datasets import skab_dir
    from appliance.eval.validation import synthetic_faults
    data = skab_dir()
    settings, _ = with_level_free(data, settings or EvalSettings())
    sensors, ts, rows, _ = read_csv(anomaly_free_path(data))
    cases = [(name, sensors, t, r, label) for name, t, r, label in
             synthetic_faults(sensors, ts, rows, train_rows=settings.train_rows, seed=0)]
    return run_int8_traces(path, cases, settings, 3.0)


# ---------------------------------------------------------------- pooled scores

def pooled(traces: list[Trace], preds: list[np.ndarray]) -> dict:
    c = confusion(np.concatenate(preds), np.concatenate([t.label for t in traces]))
    return {**scores_from(c), **c}


def f1_of(c: dict) -> float:
    denom = c["tp"] + (c["fn"] + c["fp"]) / 2
    return c["tp"] / denom if denom else 0.0


def global_sweep(traces: list[Trace], raw: bool) -> list[dict]:
    """Pooled scores at every multiplier in :data:`SCALES`, one multiplier for every file."""
    ratios = [t.row_ratio() for t in traces] if raw else None
    out = []
    for s in SCALES:
        preds = [(r >= s).astype(np.uint8) for r in ratios] if raw else [t.decided(s) for t in traces]
        out.append({"scale": round(float(s), 4), **pooled(traces, preds)})
    return out


def best_of(sweep: list[dict], far_max: float | None = None) -> dict | None:
    ok = [m for m in sweep if far_max is None or m["far"] <= far_max]
    return max(ok, key=lambda m: m["f1"]) if ok else None


def per_file_counts(traces: list[Trace], raw: bool) -> list[np.ndarray]:
    """Per file, ``[n_scales, 4]`` counts (tp, fp, fn, tn) at every multiplier."""
    out = []
    for t in traces:
        r = t.row_ratio() if raw else None
        rows = []
        for s in SCALES:
            p = (r >= s).astype(np.uint8) if raw else t.decided(s)
            c = confusion(p, t.label)
            rows.append([c["tp"], c["fp"], c["fn"], c["tn"]])
        out.append(np.asarray(rows, dtype=np.float64))
    return out


def per_file_oracle(counts: list[np.ndarray], fp_penalty: float = 0.0) -> tuple[list[int], dict]:
    """Multiplier index per file maximizing the pooled F1 (Dinkelbach's iteration on the ratio).

    ``fp_penalty`` > 0 trades F1 for fewer false alarms (a Lagrange multiplier on FP), used to
    find the best F1 under the FAR goal.
    """
    lam = 0.0
    for _ in range(50):
        # maximize TP - lam * (TP + (FN + FP) / 2) - penalty * FP, file by file
        pick = [int(np.argmax(c[:, 0] - lam * (c[:, 0] + (c[:, 2] + c[:, 1]) / 2) - fp_penalty * c[:, 1]))
                for c in counts]
        tot = sum(c[i] for c, i in zip(counts, pick))
        conf = {"tp": int(tot[0]), "fp": int(tot[1]), "fn": int(tot[2]), "tn": int(tot[3])}
        new = f1_of(conf)
        if abs(new - lam) < 1e-9:
            break
        lam = new
    return pick, {**scores_from(conf), **conf}


def per_file_oracle_under_far(counts: list[np.ndarray], far_max: float) -> tuple[list[int], dict] | None:
    best = None
    for pen in np.concatenate([[0.0], np.geomspace(0.01, 20.0, 60)]):
        pick, m = per_file_oracle(counts, pen)
        if m["far"] <= far_max and (best is None or m["f1"] > best[1]["f1"]):
            best = (pick, m)
    return best


# ---------------------------------------------------------------- separability

def auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Area under the ROC curve (rank statistic, ties counted half)."""
    label = label.astype(bool)
    n1, n0 = int(label.sum()), int((~label).sum())
    if not n1 or not n0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    # average ranks over ties
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ---------------------------------------------------------------- where the errors are

ERROR_KINDS = {
    "a_start_delay": "(a) missed rows at an anomaly's start, before its first alarm",
    "a2_dropout": "    missed rows inside a detected anomaly, after its first alarm",
    "b_hangover_window": "(b) hang-over after the anomaly ends, within window-1+clear_n rows",
    "b_hangover_beyond": "(b) hang-over after the anomaly ends, beyond window-1+clear_n rows",
    "c_missed_episode": "(c) rows of anomalies never alarmed",
    "d_normal_head": "(d) false alarms in the normal head (before the first anomaly)",
    "e_after_episode": "    false alarms raised again after an anomaly (not hang-over)",
}
# Kinds that one cause produces together: the window's memory delays the start and holds the end.
COMBINED_KINDS = {
    "b_hangover_all": ("b_hangover_window", "b_hangover_beyond"),
    "a_b_start_and_end": ("a_start_delay", "b_hangover_window", "b_hangover_beyond"),
}


def error_kinds(label: np.ndarray, pred: np.ndarray, structural_hangover: int) -> dict[str, np.ndarray]:
    """A boolean mask per error kind over the test rows; every error row falls in exactly one."""
    lab, p = label.astype(bool), pred.astype(bool)
    n = len(lab)
    kinds = {k: np.zeros(n, dtype=bool) for k in ERROR_KINDS}
    episodes = alarm_episodes(lab)
    for s, e in episodes:
        hit = np.flatnonzero(p[s:e])
        if not len(hit):
            kinds["c_missed_episode"][s:e] = True
            continue
        kinds["a_start_delay"][s:s + hit[0]] = True
        kinds["a2_dropout"][s + hit[0]:e] = ~p[s + hit[0]:e]
        if p[e - 1]:
            stop = e
            while stop < n and p[stop] and not lab[stop]:
                stop += 1
            cut = min(stop, e + structural_hangover)
            kinds["b_hangover_window"][e:cut] = True
            kinds["b_hangover_beyond"][cut:stop] = True
    head = episodes[0][0] if episodes else n
    fp = p & ~lab
    kinds["d_normal_head"][:head] = fp[:head]
    kinds["e_after_episode"] = fp & ~kinds["d_normal_head"] & ~kinds["b_hangover_window"] & ~kinds["b_hangover_beyond"]
    return kinds


def error_breakdown(traces: list[Trace], preds: list[np.ndarray], structural_hangover: int) -> dict:
    labels = np.concatenate([t.label for t in traces])
    pred = np.concatenate(preds).astype(bool)
    masks = [error_kinds(t.label, p, structural_hangover) for t, p in zip(traces, preds)]
    base = confusion(pred, labels)
    out = {}
    for k, parts in {**{k: (k,) for k in ERROR_KINDS}, **COMBINED_KINDS}.items():
        m = np.concatenate([np.logical_or.reduce([x[part] for part in parts]) for x in masks])
        fixed = np.where(m, labels.astype(bool), pred)  # only this kind's errors corrected
        c = confusion(fixed, labels)
        files = sum(bool(any(x[part].any() for part in parts)) for x in masks)
        out[k] = {"rows": int(m.sum()), "files": files, "share_of_errors": round(m.sum() / (base["fp"] + base["fn"]), 4),
                  "if_corrected": scores_from(c)}
    return out


def episode_stats(traces: list[Trace], preds: list[np.ndarray]) -> dict:
    delays, hang = [], []
    for t, p in zip(traces, preds):
        lab, p = t.label.astype(bool), p.astype(bool)
        for s, e in alarm_episodes(lab):
            hit = np.flatnonzero(p[s:e])
            if len(hit):
                delays.append(int(hit[0]))
            if p[e - 1]:
                stop = e
                while stop < len(lab) and p[stop] and not lab[stop]:
                    stop += 1
                hang.append(stop - e)
    q = lambda v, x: float(np.percentile(v, x)) if v else None  # noqa: E731
    return {"start_delay_rows": {"median": q(delays, 50), "p90": q(delays, 90), "n": len(delays)},
            "hangover_rows": {"median": q(hang, 50), "p90": q(hang, 90), "n": len(hang)}}


def missed_file_shifts(files: list[str], train_rows: int = 400) -> dict:
    """For each never-alarmed file: how far its anomalous rows sit from its training rows, per sensor.

    ``shift_sd``: (mean of the anomalous rows - training mean) / training sd; ``sd_ratio``: their sd over
    the training sd. A fault that moves no sensor's level or spread is out of reach of any detector of
    these sensors' values; one that moves only a level-free sensor's level is out of reach of this model.
    """
    from appliance.detector.train import read_csv
    from appliance.eval.datasets import skab_dir
    out = {}
    for rel in files:
        sensors, _, rows, labels = read_csv(Path(skab_dir()) / rel)
        anomalous = rows[labels["anomaly"] > 0]
        train = rows[:train_rows]
        sd = train.std(axis=0) + 1e-12
        out[rel] = {name: {"shift_sd": round(float((anomalous[:, i].mean() - train[:, i].mean()) / sd[i]), 2),
                           "sd_ratio": round(float(anomalous[:, i].std() / sd[i]), 2)}
                    for i, name in enumerate(sensors)}
    return out


# ---------------------------------------------------------------- decision variants

VARIANTS = {
    "default (3 of 5, clear 5 under 0.8x)": DecisionRule.default(),
    "clear after 1 window under 1.0x": DecisionRule(clear_n=1, clear_ratio=1.0),
    "clear after 5 under 1.0x": DecisionRule(clear_n=5, clear_ratio=1.0),
    "no debounce (1 of 1, clear 1 under 1.0x)": DecisionRule(raise_k=1, raise_n=1, clear_n=1, clear_ratio=1.0),
}


def variant_scores(traces: list[Trace]) -> dict:
    return {name: pooled(traces, [t.decided(1.0, rule) for t in traces]) for name, rule in VARIANTS.items()}


# ---------------------------------------------------------------- report

def analyse(traces: list[Trace], window: int) -> dict:
    rule = DecisionRule.default()
    base_preds = [t.decided() for t in traces]
    default = pooled(traces, base_preds)
    protocol = RESULTS / "skab_protocol.json"
    if window == 30 and protocol.exists():
        # These traces replay the protocol run's INT8 path: the same confusion matrix, row for row in total.
        ref = json.loads(protocol.read_text())["detectors"]["ae_int8"]
        matches = all(ref[k] == default[k] for k in ("tp", "fp", "fn", "tn"))
    else:
        matches = None
    structural = window - 1 + rule.clear_n
    doc: dict = {"files": len(traces), "test_rows": int(sum(len(t.label) for t in traces)),
                 "window": window, "structural_hangover_rows": structural,
                 "confusion_matches_skab_protocol_json": matches, "default": default,
                 "missed_episode_files": [t.file for t, p in zip(traces, base_preds)
                                          if t.label.any() and not (p.astype(bool) & (t.label > 0)).any()]}
    for name, raw in (("debounced", False), ("raw", True)):
        sweep = global_sweep(traces, raw)
        counts = per_file_counts(traces, raw)
        pick, pf = per_file_oracle(counts)
        far = per_file_oracle_under_far(counts, FAR_GOAL)
        doc[f"oracle_{name}"] = {
            "global_best": best_of(sweep), "global_best_far15": best_of(sweep, FAR_GOAL),
            "at_scale_1": next(m for m in sweep if abs(m["scale"] - 1.0) < 1e-9) if raw else None,
            "per_file_best": pf, "per_file_best_far15": far[1] if far else None,
            "per_file_scales": {t.file: round(float(SCALES[i]), 3) for t, i in zip(traces, pick)},
            "sweep": sweep,
        }
    scales = np.array(list(doc["oracle_debounced"]["per_file_scales"].values()))
    doc["label_free_vs_oracle"] = {
        "per_file_oracle_scale_quantiles": {q: round(float(np.percentile(scales, q)), 3) for q in (10, 25, 50, 75, 90)},
        "files_oracle_above_1": int((scales > 1.0).sum()),
        "median_abs_log10_distance": round(float(np.median(np.abs(np.log10(scales)))), 3),
    }
    aucs = {t.file: auc(t.row_ratio(), t.label) for t in traces}
    vals = [v for v in aucs.values() if v is not None]
    doc["auc"] = {"pooled": round(auc(np.concatenate([t.row_ratio() for t in traces]),
                                      np.concatenate([t.label for t in traces])), 4),
                  "per_file_median": round(float(np.median(vals)), 4),
                  "per_file_min": round(float(np.min(vals)), 4),
                  "files_below_0.8": sum(v < 0.8 for v in vals), "per_file": aucs}
    doc["errors"] = error_breakdown(traces, base_preds, structural)
    doc["episodes"] = episode_stats(traces, base_preds)
    doc["variants"] = variant_scores(traces)
    doc["missed_file_shifts"] = missed_file_shifts(doc["missed_episode_files"])
    # The protocol's second operating point: thresholds raised by the drift allowance (label-free),
    # measured for the default bundles only.
    doc["drift_allowance_point"] = ({"scale": DRIFT_ALLOWANCE,
                                     **pooled(traces, [t.decided(DRIFT_ALLOWANCE) for t in traces])}
                                    if window == 30 else None)
    return doc


def fmt(m: dict | None) -> str:
    if m is None:
        return "   none reaches it"
    scale = f" at x{m['scale']:.2f}" if "scale" in m else ""
    return f"F1 {m['f1']:.3f}  FAR {m['far']:5.1f} %  MAR {m['mar']:5.1f} %{scale}"


def print_report(doc: dict, validation: dict | None) -> None:
    print(f"SKAB analysis (uses test labels: analysis only, chooses nothing): {doc['files']} files, "
          f"{doc['test_rows']} test rows; same confusion as skab_protocol.json: "
          f"{doc['confusion_matches_skab_protocol_json']}")
    print(f"  default, label-free threshold (x1)          {fmt(doc['default'])}")
    if doc["drift_allowance_point"]:
        print(f"  label-free drift allowance                  {fmt(doc['drift_allowance_point'])}")
    for name in ("debounced", "raw"):
        o = doc[f"oracle_{name}"]
        print(f"  [{name}] best global multiplier (oracle)   {fmt(o['global_best'])}")
        print(f"  [{name}]   ... with FAR <= {FAR_GOAL:.0f} %             {fmt(o['global_best_far15'])}")
        print(f"  [{name}] best multiplier per file (oracle) {fmt(o['per_file_best'])}")
        print(f"  [{name}]   ... with FAR <= {FAR_GOAL:.0f} %             {fmt(o['per_file_best_far15'])}")
    lf = doc["label_free_vs_oracle"]
    q = lf["per_file_oracle_scale_quantiles"]
    print(f"  per-file oracle multiplier: median x{q[50]}, 10-90 % x{q[10]}-x{q[90]}; "
          f"{lf['files_oracle_above_1']} of {doc['files']} files above x1")
    print(f"  files whose anomaly is never alarmed: {', '.join(doc['missed_episode_files']) or 'none'}")
    for rel, shifts in doc["missed_file_shifts"].items():
        print(f"    {rel}: anomalous rows vs training rows, mean shift in training sd (sd ratio): "
              + ", ".join(f"{name} {v['shift_sd']:+.1f} ({v['sd_ratio']:.1f})" for name, v in shifts.items()))
    a = doc["auc"]
    print(f"  ROC AUC of the raw score: pooled {a['pooled']:.3f}, per file median {a['per_file_median']:.3f}, "
          f"min {a['per_file_min']:.3f}, {a['files_below_0.8']} files below 0.8")
    e = doc["episodes"]
    print(f"  start delay rows median {e['start_delay_rows']['median']}, p90 {e['start_delay_rows']['p90']}; "
          f"hang-over rows median {e['hangover_rows']['median']}, p90 {e['hangover_rows']['p90']} "
          f"(window-1+clear_n = {doc['structural_hangover_rows']})")
    print(f"  {'error kind (default)':66s} {'rows':>5s} {'files':>5s} {'share':>6s}  if only these were right")
    labels = {**ERROR_KINDS, "b_hangover_all": "(b) all hang-over",
              "a_b_start_and_end": "(a)+(b) start delay and all hang-over"}
    for k, label in labels.items():
        m = doc["errors"][k]
        print(f"  {label:66s} {m['rows']:5d} {m['files']:5d} {m['share_of_errors']:6.1%}  {fmt(m['if_corrected'])}")
    print("  decision variants on the same traces (x1 threshold):")
    for name, m in doc["variants"].items():
        v = f"   | label-free validation: {fmt(validation['variants'][name])}" if validation else ""
        print(f"    {name:42s} {fmt(m)}{v}")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, RESULTS / "skab_analysis.json")
    ap.add_argument("--traces", type=Path, default=Path("/tmp/skab_traces.npz"))
    ap.add_argument("--validation", type=Path, default=None,
                    help="traces of the label-free validation (synthetic faults on anomaly-free.csv)")
    ap.add_argument("--window", type=int, default=30, help="the bundles' window rows (SKAB default 30)")
    a = ap.parse_args(argv)
    traces = load_traces(a.traces) if a.traces.exists() else protocol_traces(a.traces)
    doc = analyse(traces, a.window)
    validation = None
    if a.validation is not None:
        vt = load_traces(a.validation) if a.validation.exists() else validation_traces(a.validation)
        validation = {"cases": len(vt), "variants": variant_scores(vt)}
        doc["validation"] = validation
    print_report(doc, validation)
    print(f"written {write_results(a.out, doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
