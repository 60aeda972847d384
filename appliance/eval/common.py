"""What the SKAB protocol mode (:mod:`appliance.eval.skab`) and the stream mode (:mod:`appliance.eval.stream`) share.

The settings fixed before a run, the experiment files, the SKAB metrics and the
output files. Both modes import from here and neither imports the other's
internals, so there is no import cycle between them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from appliance.config import Config
from appliance.detector.features import drifting_sensors
from appliance.detector.train import TrainSettings, read_csv
from appliance.eval.environment import environment
from appliance.eval.episodes import DAY_S, alarm_episodes

logger = logging.getLogger(__name__)

EXPERIMENT_DIRS = ("valve1", "valve2", "other")
TRAIN_ROWS = 400


@dataclass(frozen=True)
class EvalSettings:
    """Everything the evaluation fixes in advance; none of it looks at test labels.

    ``bundle`` overrides :class:`~appliance.detector.train.TrainSettings` fields
    (empty = the appliance defaults); they are validated here, before any work.
    ``config`` gives the window builder and decision settings (default: the
    appliance's embedded defaults). ``prior_rows``: another normal record every
    bundle also learns from (set by :func:`appliance.eval.skab.with_prior`).
    """

    train_rows: int = TRAIN_ROWS
    bundle: dict = field(default_factory=dict)
    config: Config = field(default_factory=Config)
    seed: int = 0
    reference_holdout: float = 0.2
    # Share of normal rows of anomaly-free.csv allowed to be alarmed; sets each detector's
    # drift allowance (threshold scale). None: no allowance (scale 1).
    drift_budget: float | None = 0.10
    # Sensors whose level wanders in anomaly-free.csv are shown to the autoencoder without
    # their window level (see appliance.detector.features); False: only the per-file trend test.
    level_free_from_anomaly_free: bool = True
    # Not the leaderboard protocol (reported separately): every bundle also learns from all of
    # anomaly-free.csv, scaled on its own (another session, another operating point).
    prior_from_anomaly_free: bool = False
    prior_rows: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        self.train_settings()  # a misspelt or out-of-range bundle setting fails now, not in a worker

    def train_settings(self, **defaults) -> TrainSettings:
        """The bundles' training settings: the appliance's ``[windows]`` grid, ``defaults``, then ``bundle``."""
        w = self.config.windows
        opts = {"seed": self.seed, "staleness_s": w.staleness_s, "lateness_s": w.lateness_s}
        if w.period_s is not None:
            opts["period_s"] = w.period_s
        return TrainSettings(**{**opts, **defaults, **self.bundle})


# ---------------------------------------------------------------- data

def experiment_files(data_dir: str | Path) -> list[tuple[str, Path]]:
    """``(relative name, path)`` of the experiment files, in a stable order."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: SKAB data directory not found")
    out = []
    for sub in EXPERIMENT_DIRS:
        d = root / sub
        if not d.is_dir():
            continue
        files = sorted(d.glob("*.csv"), key=lambda p: (int(p.stem) if p.stem.isdigit() else math.inf, p.stem))
        out += [(f"{sub}/{p.name}", p) for p in files]
    if not out:
        raise FileNotFoundError(f"{root}: no experiment files under {', '.join(EXPERIMENT_DIRS)}")
    return out


def anomaly_free_path(data_dir: str | Path) -> Path:
    path = Path(data_dir) / "anomaly-free" / "anomaly-free.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: needed for the choices the protocol lets us make on normal data "
                                "(drift allowance, level-free sensors)")
    return path


def with_level_free(data_dir: str | Path, settings: EvalSettings) -> tuple[EvalSettings, dict | None]:
    """``settings`` whose bundles treat the sensors drifting in ``anomaly-free.csv`` as level-free."""
    if not settings.level_free_from_anomaly_free or "level_free" in settings.bundle:
        return settings, None
    sensors, _, rows, _ = read_csv(anomaly_free_path(data_dir))
    chosen, report = drifting_sensors(rows, sensors, train_rows=settings.train_rows)
    logger.info("level-free sensors from anomaly-free.csv: %s", chosen)
    return replace(settings, bundle={**settings.bundle, "level_free": chosen}), {"sensors": chosen, **report}


# ---------------------------------------------------------------- metrics

def confusion(pred: np.ndarray, label: np.ndarray) -> dict:
    pred = np.asarray(pred).astype(bool)
    label = np.asarray(label).astype(bool)
    return {"tp": int((pred & label).sum()), "fp": int((pred & ~label).sum()),
            "fn": int((~pred & label).sum()), "tn": int((~pred & ~label).sum())}


def scores_from(c: dict) -> dict:
    """F1, FAR % and MAR % from a pooled confusion matrix (SKAB definitions).

    >>> scores_from({"tp": 6, "fp": 2, "fn": 2, "tn": 8})
    {'f1': 0.75, 'far': 20.0, 'mar': 25.0}
    """
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    f1 = tp / (tp + (fn + fp) / 2) if tp + fn + fp else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return {"f1": round(f1, 4), "far": round(far, 2), "mar": round(mar, 2)}


def episode_delays(results: list[dict], key: str) -> dict:
    """Mean detection delay (s) over episodes detected while their label is set.

    >>> r = {"label": np.array([0, 1, 1, 1]), "pred": {"ae": np.array([0, 0, 1, 1])}, "ts": np.arange(4.0)}
    >>> episode_delays([r], "ae")
    {'mean_delay_s': 1.0, 'episodes_detected': 1, 'episodes_missed': 0}
    """
    delays, missed = [], 0
    for r in results:
        lab, pred, ts = r["label"].astype(bool), r["pred"][key].astype(bool), r["ts"]
        if not lab.any():
            continue
        start = np.flatnonzero(lab)[0]
        hit = np.flatnonzero(lab & pred)
        if len(hit):
            delays.append(float(ts[hit[0]] - ts[start]))
        else:
            missed += 1
    return {"mean_delay_s": round(float(np.mean(delays)), 1) if delays else None,
            "episodes_detected": len(delays), "episodes_missed": missed}


def false_episodes(results: list[dict], key: str) -> dict:
    """Alarm episodes raised on a normal row, per day of normal test rows.

    What an operator is called for in vain: FAR counts rows, this counts calls. An
    episode raised before an anomaly begins and running into it is counted too: when
    it was raised, nothing was wrong.

    >>> r = {"label": np.array([0, 0, 0, 1, 1, 0]), "pred": {"ae": np.array([1, 0, 1, 1, 0, 1])},
    ...      "ts": np.arange(6) * 600.0}
    >>> false_episodes([r], "ae")
    {'false_episodes': 3, 'normal_hours': 0.67, 'false_episodes_per_day': 108.0}
    """
    count, normal_s = 0, 0.0
    for r in results:
        lab, pred, ts = r["label"].astype(bool), r["pred"][key], r["ts"]
        count += sum(not lab[a] for a, _ in alarm_episodes(pred))
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
        normal_s += float((~lab).sum()) * step
    return {"false_episodes": int(count), "normal_hours": round(normal_s / 3600.0, 2),
            "false_episodes_per_day": round(count * DAY_S / normal_s, 2) if normal_s > 0 else None}


def pooled_scores(results: list[dict], labels: np.ndarray, key: str, keys: Sequence[str]) -> dict:
    """Per detector: one confusion matrix pooled over all results' rows, its scores, delays and false
    episodes."""
    out = {}
    for k in keys:
        pred = np.concatenate([r[key][k] for r in results])
        c = confusion(pred, labels)
        as_pred = [{**r, "pred": r[key]} for r in results]
        out[k] = {**scores_from(c), **c, **episode_delays(as_pred, k), **false_episodes(as_pred, k)}
    return out


# ---------------------------------------------------------------- outputs

def write_predictions(results: list[dict], out_dir: str | Path, key: str = "ae_int8") -> Path:
    """One ``datetime;prediction`` CSV per experiment file, at the same relative path."""
    out = Path(out_dir)
    for r in results:
        p = out / r["file"]
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter=";", lineterminator="\n")
            w.writerow(["datetime", "prediction"])
            for t, y in zip(r["ts"], r["pred"][key]):
                w.writerow([datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), int(y)])
        os.replace(tmp, p)
    return out


def _json_dumps(obj) -> str:
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o))
    return json.dumps(obj, indent=2, default=default) + "\n"


def write_outputs(summary: dict, results, predictions_out, json_out) -> None:
    """Write per-file predictions (re-scorable) and the JSON summary (with the library versions), where asked to."""
    if predictions_out is not None:
        write_predictions(results, predictions_out)
        summary["predictions_out"] = str(predictions_out)
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(_json_dumps({**summary, "environment": environment()}))
