"""What every benchmark script shares: the machine it ran on, its command line, and writing its results.

    from benchmarks.common import ROOT, machine, parser, write_results

Each script prints its own table and writes one JSON document; ``write_results``
puts the machine description in front of it, so figures from different boxes
(a 2-core x86_64 VM, a Raspberry Pi) are never compared unawares, and the
versions of the libraries the figure depends on (``libraries=``: onnxruntime,
paho-mqtt, flwr...), so a figure is never credited to the wrong release.
Every figure in README.md and docs/*.md names the result file it comes from
(``tests/test_docs_figures.py`` checks that the file exists and carries both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from appliance.eval.environment import library_versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; a Raspberry Pi or Jetson names it ``Model`` or ``Hardware``),
    else what the platform module knows."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    for key in ("model name", "Model", "Hardware"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages when the run ended: on a shared box, how busy it was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(libraries: tuple[str, ...] | list[str] = ()) -> dict:
    """Where and when a benchmark ran: host, CPU, cores, architecture, load, Python and library versions
    (those that shape every figure, plus ``libraries``, the ones this benchmark names)."""
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
            "load_average": load_average(), "python": platform.python_version(),
            "libraries": library_versions(libraries)}


def parser(doc: str | None, out: str | Path | None = None) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring; ``out``: the default of ``--out``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not None:
        ap.add_argument("--out", type=Path, default=Path(out), help="where the JSON results go (default: %(default)s)")
    return ap


def write_results(path: str | Path, doc: dict, libraries: tuple[str, ...] | list[str] = ()) -> Path:
    """Write ``doc`` as JSON to ``path`` (directories made), with :func:`machine` in front of it;
    ``libraries``: the distributions (as pip names them) whose versions the figures depend on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**machine(libraries), **doc}, indent=2, default=str) + "\n")
    return path


def subject_or_side_by_side(ap: argparse.ArgumentParser, argv, run_subject, run_side_by_side) -> int:
    """A benchmark's ``main`` tail: ``subject`` (the internal sub-command: one subject in a process of its
    own, the coroutine ``run_subject(args)``) or the side-by-side run itself (``run_side_by_side(args)``)."""
    import asyncio

    args = ap.parse_args(argv)
    if args.cmd == "subject":
        asyncio.run(run_subject(args))
        return 0
    return run_side_by_side(args)
