"""Replay a CSV of recorded sensor data over MQTT, keeping its original timestamps.

Accepted files: SKAB's ``;``-separated format (``datetime;Accelerometer1RMS;...``)
and ordinary comma CSV. The time column is the one named ``datetime``,
``timestamp``, ``time``, ``ts`` or ``date`` (else the first column) and holds
UNIX seconds or ISO-8601 date-times (naive ones are taken as UTC). Every other
column is a sensor, except label columns (``anomaly``, ``changepoint`` by
default). An empty cell leaves that sensor out of that row's message.

Rows are paced by the file's own time differences divided by ``speed``
(``speed=1`` is real time, ``50`` is fifty times faster, ``0``/``None``/
``"max"`` is as fast as the broker takes them). Messages carry the row's
original ``ts`` and ``"historical": true`` so the appliance keeps them apart
from live data; ``rebase=True`` instead shifts the file to start now and sends
it as live data.

>>> import io
>>> rows = list(read_rows(io.StringIO("datetime;A;B;anomaly\\n2020-03-09 10:14:33;1.5;;0\\n"), "x.csv"))
>>> rows
[(1583748873.0, {'A': 1.5})]
"""

from __future__ import annotations

import csv
import logging
import math
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, TextIO

from .publisher import MqttPublisher, PublishStats, finish_publishing, publish_sample

log = logging.getLogger(__name__)

TIME_COLUMNS = ("datetime", "timestamp", "time", "ts", "date")
LABEL_COLUMNS = ("anomaly", "changepoint")


def parse_speed(text: str | float | None) -> float:
    """``"max"``/``0``/None mean no pacing (returned as 0.0); otherwise a factor > 0.

    >>> parse_speed("max"), parse_speed("50"), parse_speed(None)
    (0.0, 50.0, 0.0)
    """
    if text is None or (isinstance(text, str) and text.strip().lower() in ("max", "0", "")):
        return 0.0
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"speed must be a factor > 0 or 'max', got {text!r}")
    return v


def _parse_time(cell: str, where: str) -> float:
    cell = cell.strip()
    try:
        return float(cell)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(cell)
    except ValueError:
        raise ValueError(f"{where}: time {cell!r} is neither UNIX seconds nor ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_rows(f: TextIO, name: str = "<csv>", exclude: tuple[str, ...] = LABEL_COLUMNS
              ) -> Iterator[tuple[float, dict[str, float]]]:
    """Yield ``(ts, {sensor: value})`` per data row; ValueError names file, line and column."""
    header_line = f.readline()
    if not header_line.strip():
        raise ValueError(f"{name}: empty file")
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    header = next(csv.reader([header_line], delimiter=delimiter))
    header = [h.strip() for h in header]
    lowered = [h.lower() for h in header]
    t_col = next((lowered.index(c) for c in TIME_COLUMNS if c in lowered), 0)
    skip = {c.lower() for c in exclude}
    sensors = [(i, h) for i, h in enumerate(header) if i != t_col and h and h.lower() not in skip]
    if not sensors:
        raise ValueError(f"{name}: no sensor columns in header {header}")
    for lineno, row in enumerate(csv.reader(f, delimiter=delimiter), start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{name}:{lineno}: {len(row)} fields, header has {len(header)}")
        ts = _parse_time(row[t_col], f"{name}:{lineno}")
        values = {}
        for i, sensor in sensors:
            cell = row[i].strip()
            if not cell:
                continue
            try:
                v = float(cell)
            except ValueError:
                raise ValueError(f"{name}:{lineno}: column {sensor!r}: {cell!r} is not a number") from None
            if not math.isfinite(v):
                continue  # a gap in the recording, not a value to send
            values[sensor] = v
        if values:
            yield ts, values


def replay_csv(path: str | Path, host: str = "127.0.0.1", port: int = 1883, asset: str = "pump1",
               speed: float | str | None = 1.0, topic: str = "plant/{asset}/telemetry",
               stop_event: threading.Event | None = None, exclude: tuple[str, ...] = LABEL_COLUMNS,
               rebase: bool = False, publisher: MqttPublisher | None = None,
               flush_timeout: float = 60.0, **publisher_kw) -> PublishStats:
    """Publish every row of ``path``; returns once all are acknowledged by the broker.

    Raises ValueError on a malformed file (nothing is sent from the bad row on)
    and :class:`~.publisher.PublishError` if the broker is unreachable.
    ``stats.complete`` is False if acknowledgements were still missing after
    ``flush_timeout`` seconds.
    """
    factor = parse_speed(speed)
    stop_event = stop_event or threading.Event()
    path = Path(path)
    own = publisher is None
    pub = publisher or MqttPublisher(host, port, **publisher_kw)
    if own:
        pub.connect()
    stats = PublishStats()
    published0 = pub.published
    log.info("sim replay_started file=%s asset=%s speed=%s", path, asset, factor or "max")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            t_file0 = wall0 = shift = None
            for ts, values in read_rows(f, str(path), exclude):
                if stop_event.is_set():
                    break
                if t_file0 is None:
                    t_file0, wall0 = ts, time.monotonic()
                    shift = time.time() - ts if rebase else 0.0
                if factor > 0:
                    delay = wall0 + (ts - t_file0) / factor - time.monotonic()
                    if delay > 0 and stop_event.wait(delay):
                        break
                publish_sample(pub, topic, asset, ts + shift, values, historical=not rebase)
                stats.samples += 1
                stats.first_ts = ts + shift if stats.first_ts is None else stats.first_ts
                stats.last_ts = ts + shift
    finally:
        finish_publishing(pub, stats, published0, own, flush_timeout, f"file={path}")
    log.info("sim replay_done file=%s %s", path, stats.summary())
    return stats

