"""Where the SKAB data set is: ``data/skab/`` in this repository (GPL-3.0 data, its LICENSE beside it).

A fresh clone needs nothing beside it. ``SKAB_DIR`` in the environment overrides the
location; an older checkout's ``../shared/datasets/skab`` is still used when the
repository's copy is absent (an installed wheel does not carry the data).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SKAB_IN_REPO = REPO_ROOT / "data" / "skab"
SKAB_BESIDE_REPO = REPO_ROOT.parent / "shared" / "datasets" / "skab"


def skab_dir() -> Path:
    """The SKAB folder to read (``SKAB_DIR``, else the repository's copy, else ``../shared``).

    >>> (skab_dir() / "anomaly-free" / "anomaly-free.csv").name
    'anomaly-free.csv'
    """
    if os.environ.get("SKAB_DIR"):
        return Path(os.environ["SKAB_DIR"])
    if not SKAB_IN_REPO.is_dir() and SKAB_BESIDE_REPO.is_dir():
        return SKAB_BESIDE_REPO
    return SKAB_IN_REPO  # absent: the caller's error names the path the repository should have
