"""SKAB, the next run: train once on the normal head of one file, score the runs that follow it.

``appliance eval skab`` trains a bundle per file on that file's first 400 rows
and scores the same file: the model always knows today's operating point. A
plant trains once at commissioning and runs for months. Here, for each training
file, a bundle is trained with ``appliance train --data head.csv`` (the file's
rows before its first anomaly, labels dropped) and every following file of the
same folder is replayed whole with ``appliance score``; the bundle's own
threshold and debounced ``alarm`` column are read back. Nothing is tuned: the
test labels are used only to count.

Reported per training file and pooled: the share of the next runs' normal head
rows in alarm (rows before their first anomaly), false alarm episodes (raised on
a normal row) per hour of normal rows, and F1 / FAR / MAR over the next runs'
rows (SKAB definitions, every row of the next file a test row).

Usage:
  .venv/bin/python benchmarks/skab_next_run.py [--train valve1/0,valve2/0,other/1] [--next 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.eval.common import confusion, scores_from  # noqa: E402
from appliance.eval.datasets import skab_dir  # noqa: E402
from appliance.eval.episodes import alarm_episodes  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

APPLIANCE = [sys.executable, "-m", "appliance.cli"]
LABELS = ("anomaly", "changepoint")


def run_cli(args: list[str]) -> str:
    done = subprocess.run(APPLIANCE + args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def read_skab(path: Path) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, rows (as text) and the ``anomaly`` label of one SKAB file (``;``-separated)."""
    with path.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    head, body = rows[0], rows[1:]
    label = np.array([float(r[head.index("anomaly")]) > 0 for r in body])
    return head, body, label


def write_normal_head(path: Path, out: Path) -> int:
    """The rows before the first anomaly, without the label columns, as a comma CSV; returns their count."""
    head, body, label = read_skab(path)
    n = int(np.argmax(label)) if label.any() else len(body)
    keep = [i for i, name in enumerate(head) if name not in LABELS]
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([head[i] for i in keep])
        w.writerows([[r[i] for i in keep] for r in body[:n]])
    return n


def alarm_column(scores_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    with scores_csv.open() as f:
        rows = list(csv.DictReader(f))
    ratio = np.array([float(r["score"]) / float(r["threshold"]) if r["score"] else np.nan for r in rows])
    return np.array([int(r["alarm"]) for r in rows], dtype=np.uint8), ratio


def next_files(data: Path, train: str, count: int) -> list[str]:
    """The ``count`` files after ``train`` in its folder, in numeric order."""
    folder, name = train.split("/")
    numbers = sorted(int(p.stem) for p in (data / folder).glob("*.csv"))
    after = [n for n in numbers if n > int(name)][:count]
    return [f"{folder}/{n}" for n in after]


def one_training_file(data: Path, train: str, count: int, work: Path) -> dict:
    head_csv = work / f"{train.replace('/', '_')}_head.csv"
    n_head = write_normal_head(data / f"{train}.csv", head_csv)
    bundle = work / f"B_{train.replace('/', '_')}"
    run_cli(["train", "--data", str(head_csv), "--out", str(bundle)])
    meta = json.loads((bundle / "bundle.json").read_text())
    per_file, preds, labels = {}, [], []
    false_eps, normal_rows = 0, 0
    for rel in next_files(data, train, count):
        _, body, label = read_skab(data / f"{rel}.csv")
        scores = work / f"{rel.replace('/', '_')}.{train.replace('/', '_')}.scores.csv"
        run_cli(["score", "--bundle", str(bundle), "--data", str(data / f"{rel}.csv"), "--out", str(scores)])
        alarm, ratio = alarm_column(scores)
        first = int(np.argmax(label)) if label.any() else len(label)
        eps = sum(not label[a] for a, _ in alarm_episodes(alarm))  # raised while nothing was wrong
        false_eps += eps
        normal_rows += int((~label).sum())
        preds.append(alarm)
        labels.append(label)
        per_file[rel] = {"normal_head_rows": first, "normal_head_in_alarm": float(alarm[:first].mean()),
                         "normal_head_median_ratio": float(np.nanmedian(ratio[:first])),
                         "false_episodes": int(eps), **scores_from(confusion(alarm, label))}
    pred, lab = np.concatenate(preds), np.concatenate(labels)
    head_rows = sum(v["normal_head_rows"] for v in per_file.values())
    return {"train": train, "train_rows": n_head, "window": meta["window"], "horizon": meta.get("horizon", 1),
            "expected_false_episodes": meta.get("expected_false_episodes"),
            "normal_head_in_alarm": sum(v["normal_head_in_alarm"] * v["normal_head_rows"]
                                        for v in per_file.values()) / max(head_rows, 1),
            # SKAB rows are 1 s apart: episodes per hour of normal rows.
            "false_episodes": int(false_eps), "normal_hours": round(normal_rows / 3600.0, 3),
            "false_episodes_per_hour": false_eps * 3600.0 / normal_rows if normal_rows else None,
            **scores_from(confusion(pred, lab)), "per_file": per_file}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="valve1/0,valve2/0,other/1")
    ap.add_argument("--next", type=int, default=3)
    ap.add_argument("--data", default=None, help="SKAB folder (default: appliance.eval.datasets.skab_dir())")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "skab_next_run.json"))
    a = ap.parse_args(argv)
    data = Path(a.data) if a.data else skab_dir()
    with tempfile.TemporaryDirectory(prefix="skab-next-") as tmp:
        runs = [one_training_file(data, t.strip(), a.next, Path(tmp)) for t in a.train.split(",") if t.strip()]
    result = {"next": a.next, "runs": runs,
              "normal_head_in_alarm_mean": float(np.mean([r["normal_head_in_alarm"] for r in runs])),
              "f1_mean": float(np.mean([r["f1"] for r in runs])), "far_mean": float(np.mean([r["far"] for r in runs]))}
    print("| trained on (normal head rows) | next runs | normal head rows in alarm | false episodes "
          "(per hour of normal rows) | F1 | FAR % | MAR % | bundle expects false episodes / week |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        expected = (r["expected_false_episodes"] or {}).get("per_week")
        print(f"| {r['train']} ({r['train_rows']}) | {', '.join(r['per_file'])} | "
              f"{100 * r['normal_head_in_alarm']:.1f} % | {r['false_episodes']} "
              f"({r['false_episodes_per_hour']:.1f}) | {r['f1']:.3f} | {r['far']:.1f} | {r['mar']:.1f} | "
              f"{'-' if expected is None else f'{expected:.2f}'} |")
    print(f"written {write_results(a.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
