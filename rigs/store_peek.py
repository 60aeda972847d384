"""Looking into the SQLite store of an appliance running in another process, without disturbing it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def count_rows(db: Path, table: str) -> int:
    """Rows in ``table`` of the store at ``db``, opened read-only; 0 while the store or table is not there yet."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
