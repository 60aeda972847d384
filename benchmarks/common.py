"""What every benchmark script shares: the machine it ran on, its command line, and writing its results.

    from benchmarks.common import ROOT, machine, parser, write_results

Each script prints its own table and writes one JSON document; ``write_results``
puts the machine description in front of it, so figures from different boxes
(a 2-core x86_64 VM, a Raspberry Pi) are never compared unawares.
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


def machine() -> dict:
    """Where and when a benchmark ran: host, CPU, cores, architecture, Python, library versions."""
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "libraries": library_versions()}


def parser(doc: str | None, out: str | Path | None = None) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring; ``out``: the default of ``--out``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not None:
        ap.add_argument("--out", type=Path, default=Path(out), help="where the JSON results go (default: %(default)s)")
    return ap


def write_results(path: str | Path, doc: dict) -> Path:
    """Write ``doc`` as JSON to ``path`` (directories made), with :func:`machine` in front of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**machine(), **doc}, indent=2, default=str) + "\n")
    return path
