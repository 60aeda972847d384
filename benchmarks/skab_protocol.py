"""SKAB protocol figures with the machine they ran on: ``appliance eval skab`` as a benchmark result.

Runs the protocol evaluation (per-file training on the first 400 rows, every row
scored causally; :func:`appliance.eval.skab.run_skab_eval`) and writes its summary
through ``benchmarks.common.write_results``, so the figures in docs/detector.md
carry the machine, CPU and library versions. Prints the evaluation's table
(F1, FAR, MAR, mean delay, and false episodes per day of normal test rows).

``--from FILE`` wraps a summary that ``appliance eval skab --json-out FILE``
already wrote on this machine instead of running the evaluation again.

Usage:
  .venv/bin/python benchmarks/skab_protocol.py [--from FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.eval.datasets import skab_dir  # noqa: E402
from appliance.eval.skab import format_table, run_skab_eval  # noqa: E402
from benchmarks.common import write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", default=None, help="a summary from appliance eval skab --json-out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "skab_protocol.json"))
    a = ap.parse_args(argv)
    if a.source:
        summary = json.loads(Path(a.source).read_text())
        print(format_table(summary))
    else:
        summary = run_skab_eval(skab_dir())
    summary.pop("per_file", None)  # per-file detail stays in the evaluation's own output
    print(f"written {write_results(a.out, summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
