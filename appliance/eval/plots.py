"""Plots of the SKAB evaluation: score, threshold, labels and alarms per file.

matplotlib is only needed here (docs), never on the gateway::

    .venv/bin/python -m appliance.eval.plots --out docs/img \\
        valve1/0.csv other/9.csv valve2/0.csv
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from appliance.eval.datasets import skab_dir
from appliance.eval.skab import EvalSettings, run_skab_eval


def plot_file(result: dict, out_path: str | Path, allowance: float | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # headless: no display on a gateway or in CI
    import matplotlib.pyplot as plt

    tr = result["trace"]
    t0 = tr["ts_all"][0]
    t = tr["t_end"] - t0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, height_ratios=[3, 1])
    ax.semilogy(t, np.maximum(tr["value"], 1e-6), lw=0.8, color="tab:blue", label="score (INT8 reconstruction error)")
    ax.axhline(tr["threshold"], color="tab:red", lw=1, label="threshold (training rows)")
    if allowance and allowance != 1.0:
        ax.axhline(tr["threshold"] * allowance, color="tab:red", lw=1, ls="--",
                   label=f"threshold x {allowance:.2f} (drift allowance)")
    lab_t = tr["ts_all"] - t0
    lab = np.asarray(tr["label_all"]) > 0
    ax.fill_between(lab_t, 0, 1, where=lab, transform=ax.get_xaxis_transform(), color="tab:orange", alpha=0.18,
                    step="post", label="labelled anomaly")
    train_end = lab_t[tr["train_rows"] - 1]
    for a in (ax, ax2):
        a.axvline(train_end, color="gray", lw=1, ls=":")
    ax.text(train_end, 0.98, " test part ->", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="gray")
    ax.set_ylabel("score")
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax.set_title(f"SKAB {result['file']}", fontsize=10)
    ax2.step(t, tr["active"].astype(int), where="post", color="tab:red", lw=1, label="alarm (training-row threshold)")
    if tr.get("active_allowance") is not None:
        ax2.step(t, tr["active_allowance"].astype(int) * 0.5, where="post", color="tab:purple", lw=1,
                 label="alarm (+ drift allowance), drawn at 0.5")
    ax2.fill_between(lab_t, 0, 1, where=lab, color="tab:orange", alpha=0.18, step="post")
    ax2.set_yticks([0, 1])
    ax2.set_ylim(-0.1, 1.1)
    ax2.set_xlabel("seconds since file start")
    ax2.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="relative names, e.g. valve1/0.csv")
    ap.add_argument("--data", default=skab_dir(), type=Path)
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    summary = run_skab_eval(args.data, files=args.files, settings=EvalSettings(), keep_results=True)
    scale = (summary.get("drift_allowance") or {}).get("scales", {}).get("ae_int8")
    for r in summary["results"]:
        p = plot_file(r, Path(args.out) / f"skab_{r['file'].replace('/', '_').removesuffix('.csv')}.png", scale)
        print(f"written {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
