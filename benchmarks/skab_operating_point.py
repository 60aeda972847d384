"""SKAB, the next run, with "operating point not seen in training": alarms before and after, and the status.

As ``benchmarks/skab_next_run.py``: for each training file a bundle is trained with
``appliance train`` on the file's normal head (rows before its first anomaly,
labels dropped) and the following files of its folder are replayed whole with
``appliance score``. Each is replayed twice: with the default ``[decision]``
(``unseen_holds_alarms = true``: while the operating point is unseen a new anomaly
is held, the status is raised once instead) and with ``unseen_holds_alarms = false``
(the alarms as before this status existed; the status is still followed). Read
back per row: ``alarm`` and ``unseen``.

A second check shows the status does not hide what the protocol catches: each next file
is also replayed with a bundle trained on its own first ``--own-train`` rows (the
protocol's commissioning), with and without the status, and the anomaly rows in alarm
are compared.

A control shows what the status costs on data that really is normal: a bundle
trained on the first ``--control-train`` rows of ``anomaly-free/anomaly-free.csv``
and replayed on the whole file (2.6 h of normal running).

Every threshold is the bundle's own (calibrated on its training rows) or a default
of ``[decision]``; the envelope's limits come from the training rows only
(``appliance/detector/envelope.py``). The test labels are used only to count.
Episodes per day are counted on the replayed rows (SKAB: one row a second) and
scaled to 24 h: a few hours of data, so the per-day figure is an extrapolation.

Usage:
  .venv/bin/python benchmarks/skab_operating_point.py [--train valve1/0,valve2/0,other/1] [--next 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
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
from benchmarks.skab_next_run import LABELS, next_files, read_skab, run_cli, write_normal_head  # noqa: E402

NO_HOLD = "[decision]\nunseen_holds_alarms = false\n"
PROTOCOL = ROOT / "benchmarks" / "results" / "skab_protocol.json"


def read_scores(scores_csv: Path) -> dict[str, np.ndarray]:
    with scores_csv.open() as f:
        rows = list(csv.DictReader(f))
    return {"alarm": np.array([int(r["alarm"]) for r in rows], dtype=np.uint8),
            "unseen": np.array([int(r["unseen"]) for r in rows], dtype=np.uint8)}


def replay(bundle: Path, data: Path, out: Path, config: Path | None) -> dict[str, np.ndarray]:
    run_cli(["score", "--bundle", str(bundle), "--data", str(data), "--out", str(out)]
            + (["--config", str(config)] if config else []))
    return read_scores(out)


def per_day(count: int, rows: int) -> float:
    return count * 86400.0 / rows if rows else 0.0


def judge(run: dict[str, np.ndarray], label: np.ndarray) -> dict:
    """Rows in alarm and in the status on the normal head and overall; episodes of both; detection."""
    first = int(np.argmax(label)) if label.any() else len(label)
    alarm, unseen = run["alarm"], run["unseen"]
    either = np.maximum(alarm, unseen)
    return {"normal_head_rows": first,
            "normal_head_in_alarm": float(alarm[:first].mean()) if first else 0.0,
            "normal_head_unseen": float(unseen[:first].mean()) if first else 0.0,
            "alarm_episodes": len(alarm_episodes(alarm)),
            "false_alarm_episodes": sum(not label[a] for a, _ in alarm_episodes(alarm)),
            "unseen_episodes": len(alarm_episodes(unseen)),
            "rows": int(len(label)),
            "anomaly_rows_in_alarm": float(alarm[label].mean()) if label.any() else None,
            "anomaly_rows_alarm_or_unseen": float(either[label].mean()) if label.any() else None,
            "alarm_only": scores_from(confusion(alarm, label)),
            "alarm_or_unseen": scores_from(confusion(either, label))}


def pooled(files: dict[str, dict], key: str) -> dict:
    """Head-row-weighted shares and summed episodes over a training file's next runs under ``key``."""
    runs = [f[key] for f in files.values()]
    head = sum(r["normal_head_rows"] for r in runs)
    rows = sum(r["rows"] for r in runs)
    unseen_eps = sum(r["unseen_episodes"] for r in runs)
    return {"normal_head_in_alarm": sum(r["normal_head_in_alarm"] * r["normal_head_rows"] for r in runs) / head,
            "normal_head_unseen": sum(r["normal_head_unseen"] * r["normal_head_rows"] for r in runs) / head,
            "false_alarm_episodes": sum(r["false_alarm_episodes"] for r in runs),
            "unseen_episodes": unseen_eps, "unseen_episodes_per_day": per_day(unseen_eps, rows),
            "false_alarm_episodes_per_day": per_day(sum(r["false_alarm_episodes"] for r in runs), rows),
            "rows": rows}


def own_file(data: Path, rel: str, train_rows: int, work: Path, no_hold: Path, label: np.ndarray) -> dict:
    """The protocol's commissioning: a bundle on the file's own first rows, the whole file replayed."""
    head, body, _ = read_skab(data / f"{rel}.csv")
    keep = [i for i, name in enumerate(head) if name not in LABELS]
    train_csv = work / f"own_{rel.replace('/', '_')}.csv"
    with train_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([head[i] for i in keep])
        w.writerows([[r[i] for i in keep] for r in body[:train_rows]])
    bundle = work / f"B_own_{rel.replace('/', '_')}"
    run_cli(["train", "--data", str(train_csv), "--out", str(bundle)])
    out = {}
    for key, cfg in (("after", None), ("before", no_hold)):
        r = replay(bundle, data / f"{rel}.csv", work / f"own.{rel.replace('/', '_')}.{key}.csv", cfg)
        out[key] = {"anomaly_rows_in_alarm": float(r["alarm"][label].mean()),
                    "normal_rows_in_alarm": float(r["alarm"][~label].mean()),
                    "unseen_episodes": len(alarm_episodes(r["unseen"])), **scores_from(confusion(r["alarm"], label))}
    return out


def one_training_file(data: Path, train: str, count: int, work: Path, no_hold: Path, own_train: int = 0) -> dict:
    head_csv = work / f"{train.replace('/', '_')}_head.csv"
    n_head = write_normal_head(data / f"{train}.csv", head_csv)
    bundle = work / f"B_{train.replace('/', '_')}"
    run_cli(["train", "--data", str(head_csv), "--out", str(bundle)])
    meta = json.loads((bundle / "bundle.json").read_text())
    files = {}
    for rel in next_files(data, train, count):
        _, _, label = read_skab(data / f"{rel}.csv")
        scores = work / f"{rel.replace('/', '_')}.{train.replace('/', '_')}"
        after = replay(bundle, data / f"{rel}.csv", scores.with_suffix(".hold.csv"), None)
        before = replay(bundle, data / f"{rel}.csv", scores.with_suffix(".nohold.csv"), no_hold)
        files[rel] = {"before": judge(before, label), "after": judge(after, label)}
        if own_train:
            files[rel]["own_training"] = own_file(data, rel, own_train, work, no_hold, label)
    return {"train": train, "train_rows": n_head, "envelope_sensors": sorted(meta.get("envelope", {}).get("low", {})),
            "level_free": meta["level_free"], "before": pooled(files, "before"), "after": pooled(files, "after"),
            "per_file": files}


def control(data: Path, train_rows: int, work: Path, no_hold: Path) -> dict:
    """Normal data only: a bundle on the first ``train_rows`` of anomaly-free.csv, replayed on all of it."""
    src = data / "anomaly-free" / "anomaly-free.csv"
    with src.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    head, body = rows[0], rows[1:]  # no label columns: every row is normal
    keep = [i for i, name in enumerate(head) if name not in LABELS]
    train_csv, all_csv = work / "free_head.csv", work / "free_all.csv"
    for path, rows in ((train_csv, body[:train_rows]), (all_csv, body)):
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([head[i] for i in keep])
            w.writerows([[r[i] for i in keep] for r in rows])
    bundle = work / "B_free"
    run_cli(["train", "--data", str(train_csv), "--out", str(bundle)])
    label = np.zeros(len(body), dtype=bool)
    out = {}
    for key, cfg in (("after", None), ("before", no_hold)):
        r = replay(bundle, all_csv, work / f"free.{key}.csv", cfg)
        watched = slice(train_rows, None)  # the rows after the training ones
        eps = len(alarm_episodes(r["unseen"][watched]))
        out[key] = {"rows_in_alarm": float(r["alarm"][watched].mean()), "rows_unseen": float(r["unseen"][watched].mean()),
                    "alarm_episodes": len(alarm_episodes(r["alarm"][watched])), "unseen_episodes": eps,
                    "unseen_episodes_per_day": per_day(eps, len(label) - train_rows),
                    "alarm_episodes_per_day": per_day(len(alarm_episodes(r["alarm"][watched])), len(label) - train_rows)}
    return {"train_rows": train_rows, "watched_rows": len(label) - train_rows, **out}


def protocol_figures() -> dict | None:
    """The protocol's figures (per-file training) as committed, to print beside: not re-run here."""
    if not PROTOCOL.exists():
        return None
    d = json.loads(PROTOCOL.read_text())["detectors"]["ae_int8"]
    return {"file": str(PROTOCOL.relative_to(ROOT)), **{k: d[k] for k in ("f1", "far", "mar", "false_episodes_per_day")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="valve1/0,valve2/0,other/1")
    ap.add_argument("--next", type=int, default=3)
    ap.add_argument("--control-train", type=int, default=600, help="training rows of anomaly-free.csv (control)")
    ap.add_argument("--own-train", type=int, default=400, help="own-file training rows (the protocol's; 0: skip)")
    ap.add_argument("--data", default=None, help="SKAB folder (default: appliance.eval.datasets.skab_dir())")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "skab_operating_point.json"))
    a = ap.parse_args(argv)
    data = Path(a.data) if a.data else skab_dir()
    with tempfile.TemporaryDirectory(prefix="skab-oppoint-") as tmp:
        work = Path(tmp)
        no_hold = work / "no_hold.toml"
        no_hold.write_text(NO_HOLD)
        free = control(data, a.control_train, work, no_hold)
        runs = [one_training_file(data, t.strip(), a.next, work, no_hold, a.own_train)
                for t in a.train.split(",") if t.strip()]
    result = {"next": a.next, "runs": runs, "control_anomaly_free": free, "protocol": protocol_figures()}
    print("| trained on | next runs' normal head rows in alarm: before | after | in \"unseen operating point\" "
          "| unseen episodes (per day) | false alarm episodes per day: before | after | "
          "anomaly rows in alarm: before | after | alarm or unseen |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        b, f = r["before"], r["after"]
        anom = {k: np.mean([v[k]["anomaly_rows_in_alarm"] for v in r["per_file"].values()]) for k in ("before", "after")}
        either = np.mean([v["after"]["anomaly_rows_alarm_or_unseen"] for v in r["per_file"].values()])
        print(f"| {r['train']} ({r['train_rows']} rows) | {100 * b['normal_head_in_alarm']:.1f} % | "
              f"{100 * f['normal_head_in_alarm']:.1f} % | {100 * f['normal_head_unseen']:.1f} % | "
              f"{f['unseen_episodes']} ({f['unseen_episodes_per_day']:.0f}) | {b['false_alarm_episodes_per_day']:.0f} | "
              f"{f['false_alarm_episodes_per_day']:.0f} | {100 * anom['before']:.1f} % | {100 * anom['after']:.1f} % | "
              f"{100 * either:.1f} % |")
    print(f"control, anomaly-free.csv (trained on its first {free['train_rows']} rows, {free['watched_rows']} rows "
          f"watched): rows in alarm {100 * free['before']['rows_in_alarm']:.1f} % before, "
          f"{100 * free['after']['rows_in_alarm']:.1f} % after; {100 * free['after']['rows_unseen']:.1f} % of rows "
          f"unseen in {free['after']['unseen_episodes']} episode(s) ({free['after']['unseen_episodes_per_day']:.0f} per day)")
    own = [v["own_training"] for r in runs for v in r["per_file"].values() if "own_training" in v]
    if own:
        result["own_training"] = {k: {m: float(np.mean([o[k][m] for o in own])) for m in
                                      ("anomaly_rows_in_alarm", "normal_rows_in_alarm", "f1", "far", "mar")}
                                  for k in ("before", "after")}
        o = result["own_training"]
        print(f"own-file training ({a.own_train} rows, {len(own)} files; the protocol's commissioning): anomaly rows in "
              f"alarm {100 * o['before']['anomaly_rows_in_alarm']:.1f} % before, {100 * o['after']['anomaly_rows_in_alarm']:.1f} % "
              f"after; normal rows in alarm {100 * o['before']['normal_rows_in_alarm']:.1f} % before, "
              f"{100 * o['after']['normal_rows_in_alarm']:.1f} % after; F1 {o['before']['f1']:.3f} before, {o['after']['f1']:.3f} after")
    if result["protocol"]:
        p = result["protocol"]
        print(f"protocol (per-file training, {p['file']}): F1 {p['f1']:.3f}, FAR {p['far']:.1f} %, MAR {p['mar']:.1f} %")
    print(f"written {write_results(a.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
