"""SQLite page size: what the store, the local history and the outbox each set for the SD card.

A commit writes every page it touches whole, so small pages write fewer bytes per commit
(``benchmarks/disk_writes.py``). SQLite fixes the size when a file is made, so a file with
other pages is rewritten once (VACUUM, which must run outside WAL mode: it takes a while
on a large file and needs twice its size on disk); if that fails the file goes on with the
pages it has, and the caller's WAL mode is restored either way.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Literal

log = logging.getLogger(__name__)

PageSize = Literal[512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]


def set_page_size(db: sqlite3.Connection, page_size: int, what: str) -> bool:
    """Give ``db``'s file ``page_size``-byte pages; True if it has them afterwards. ``what`` names it in logs."""
    current = db.execute("PRAGMA page_size").fetchone()[0]
    if current == page_size:
        return True
    log.info("%s: rewriting the file with %d-byte pages (was %d), once", what, page_size, current)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute(f"PRAGMA page_size={int(page_size)}")
        db.execute("VACUUM")
    except sqlite3.Error as exc:
        log.warning("%s: page size unchanged error=%r", what, exc)
    finally:
        db.execute("PRAGMA journal_mode=WAL")
    return db.execute("PRAGMA page_size").fetchone()[0] == page_size
