"""The simulator (firmware-sim/) as the tests drive it: its command line, and a small SKAB-format file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Three rows of SKAB's valve1 format: ';'-separated, a datetime column, label columns, one gap.
SKAB_SAMPLE = ("datetime;Accelerometer1RMS;Current;Volume Flow RateRMS;anomaly;changepoint\n"
               "2020-03-09 10:14:33;0.0265878;1.3302;32.0;0.0;0.0\n"
               "2020-03-09 10:14:34;0.0261697;1.35399;32.0;0.0;0.0\n"
               "2020-03-09 10:14:36;0.026;;31.5;1.0;1.0\n")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``appliance-sim ARGS`` in a child process, run to its end; output captured as text."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "firmware_sim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
