"""Recorded tables of readings (CSV): the input of training and of ``appliance score``.

Kept apart from :mod:`appliance.detector.train` so that replaying recorded data
through the live path (:mod:`appliance.detector.replay`) loads no training stack.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

LABEL_COLUMNS = frozenset({"anomaly", "changepoint"})
TIME_COLUMNS = ("datetime", "ts", "timestamp", "time")


# ---------------------------------------------------------------- CSV input

def parse_time(text: str, where: str) -> float:
    """UNIX seconds or ISO 8601 (naive = UTC) from a text cell; ValueError names ``where``."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: cannot parse time {text!r} (UNIX seconds or ISO 8601 expected)") from None
    if dt.tzinfo is None:
        # Naive timestamps (SKAB) are taken as UTC: the gateway never guesses a local zone.
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One CSV file: ``(sensors, ts, rows, labels)``; ``labels`` holds the dropped label columns.

    See :func:`read_table` (which also returns each row's time cell as written).
    """
    sensors, ts, rows, labels, _ = read_table(path)
    return sensors, ts, rows, labels


def read_table(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray], list[str]]:
    """One CSV file: ``(sensors, ts, rows, labels, time_text)``.

    The delimiter is ``;`` (SKAB) or ``,``; the time column is ``datetime``,
    ``ts``, ``timestamp`` or ``time`` (UNIX seconds or ISO 8601, naive = UTC).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"{p}: cannot read ({e.strerror or e})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{p}: empty file")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    lower = [h.lower() for h in header]
    time_idx = next((lower.index(c) for c in TIME_COLUMNS if c in lower), None)
    if time_idx is None:
        raise ValueError(f"{p}: no time column (one of {', '.join(TIME_COLUMNS)}) in header {header}")
    label_idx = [i for i, h in enumerate(lower) if h in LABEL_COLUMNS]
    sensor_idx = [i for i in range(len(header)) if i != time_idx and i not in label_idx]
    sensors = [header[i] for i in sensor_idx]
    if not sensors:
        raise ValueError(f"{p}: no sensor columns")
    if len(set(sensors)) != len(sensors) or any(not s for s in sensors):
        raise ValueError(f"{p}: sensor column names must be non-empty and unique, got {sensors}")
    ts, rows, labels, time_text = [], [], {header[i].lower(): [] for i in label_idx}, []
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        where = f"{p}:{lineno}"
        if len(rec) != len(header):
            raise ValueError(f"{where}: {len(rec)} fields, header has {len(header)}")
        ts.append(parse_time(rec[time_idx], where))
        time_text.append(rec[time_idx].strip())
        try:
            rows.append([float(rec[i]) for i in sensor_idx])
            for i in label_idx:
                labels[header[i].lower()].append(float(rec[i]) if rec[i].strip() else 0.0)
        except ValueError:
            bad = next(header[i] for i in sensor_idx + label_idx if not _is_float(rec[i]))
            raise ValueError(f"{where}: column {bad!r} is not a number") from None
    if not rows:
        raise ValueError(f"{p}: no data rows")
    return (sensors, np.asarray(ts, dtype=np.float64), np.asarray(rows, dtype=np.float64),
            {k: np.asarray(v) for k, v in labels.items()}, time_text)


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_csv_rows(paths: str | Path | Iterable[str | Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read one or more CSV files into ``(sensors, ts[n], rows[n, n_sensors])``.

    Files are concatenated in the order given; every file must carry the same
    sensors (columns are reordered by name to the first file's order).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no CSV files given")
    sensors: list[str] | None = None
    all_ts, all_rows = [], []
    for p in paths:
        s, ts, rows, _ = read_csv(p)
        if sensors is None:
            sensors = s
        elif set(s) != set(sensors):
            raise ValueError(f"{p}: sensors {s} differ from the first file's {sensors}")
        else:
            rows = rows[:, [s.index(name) for name in sensors]]
        all_ts.append(ts)
        all_rows.append(rows)
    return sensors, np.concatenate(all_ts), np.concatenate(all_rows)
