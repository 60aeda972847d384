"""Making a rename survive a power cut: ``fsync`` on the folder that holds the renamed file.

A file written to a temporary name, ``fsync``ed and renamed over the old one is
complete or absent after a crash, but the rename itself lives in the folder's entry,
which reaches the disk only when the folder is ``fsync``ed too.

>>> import tempfile
>>> fsync_dir(tempfile.gettempdir())
>>> fsync_dir("/no/such/folder")            # best effort: a folder that cannot be opened is skipped
>>> fsync_dir("/no/such/folder", best_effort=False)
Traceback (most recent call last):
...
FileNotFoundError: [Errno 2] No such file or directory: '/no/such/folder'
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: str | Path, *, best_effort: bool = True) -> None:
    """``fsync`` ``folder`` so a rename in it is durable; with ``best_effort`` an OS error is ignored
    (some file systems cannot open or sync a folder; the data file itself was synced already)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)
