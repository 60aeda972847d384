"""Read-only queries on the local store for the dashboard and its API.

All functions take a connection from :func:`appliance.store.open_reader` (read
only, so the web side can never corrupt the store or block its writer for long)
and return plain JSON-ready dicts.

Ordering: lists are newest first. When the filter pins one series (scores of one
asset, readings of one asset's sensor), rows are ordered by their source time,
which the table's unique index serves directly; otherwise by arrival (row id),
so that an unfiltered query on millions of rows on a Raspberry Pi stays an index
walk instead of a full sort. ``since`` is an exclusive lower bound on the source
time (``t_end`` for scores, ``ts`` for readings, ``received_at`` for dead letters).
"""

from __future__ import annotations

import json
import sqlite3

from appliance.store import alarm_from_row

PAYLOAD_PREVIEW = 300  # characters of a dead letter's payload shown; the store keeps all of it


def alarms(conn: sqlite3.Connection, active: bool | None, limit: int) -> list[dict]:
    # point-* rows are the alarm point's own mode changes (shelved before any
    # alarm...), not occurrences; their history is under /api/alarms/point-<asset>/events.
    sql = "SELECT * FROM alarms WHERE id NOT LIKE 'point-%'"
    args: list = []
    if active is not None:
        sql += " AND active = ?"
        args.append(int(active))
    sql += " ORDER BY start DESC LIMIT ?"
    args.append(limit)
    out = []
    for r in conn.execute(sql, args):
        d = alarm_from_row(r).to_dict()
        d["updated"] = r["updated"]
        out.append(d)
    return out


def alarm_events(conn: sqlite3.Connection, alarm_id: str) -> list[dict] | None:
    """Every stored transition of one alarm, oldest first; None if the id is unknown."""
    rows = conn.execute("SELECT * FROM alarm_events WHERE alarm_id = ? ORDER BY seq", (alarm_id,)).fetchall()
    if not rows:
        known = conn.execute("SELECT 1 FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return [] if known else None
    out = []
    for r in rows:
        try:
            snapshot = json.loads(r["snapshot"]).get("alarm")
        except (ValueError, AttributeError):
            snapshot = None  # a damaged snapshot must not hide the rest of the history
        out.append({"seq": r["seq"], "alarm_id": r["alarm_id"], "kind": r["kind"], "ts": r["ts"],
                    "user": r["user"], "note": r["note"], "alarm": snapshot})
    return out


def scores(conn: sqlite3.Connection, asset: str | None, since: float | None, limit: int) -> list[dict]:
    where, args = [], []
    if asset is not None:
        where.append("asset = ?")
        args.append(asset)
    if since is not None:
        where.append("t_end > ?")
        args.append(since)
    order = "t_end DESC" if asset is not None else "id DESC"
    sql = "SELECT * FROM scores" + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {order} LIMIT ?"
    args.append(limit)
    out = []
    for r in conn.execute(sql, args):
        try:
            contributions = json.loads(r["contributions"])
        except ValueError:
            contributions = {}
        threshold = r["threshold"]
        out.append({"asset": r["asset"], "t_end": r["t_end"], "value": r["value"], "threshold": threshold,
                    "ratio": r["value"] / threshold if threshold > 0 else None,
                    "contributions": contributions, "model_version": r["model_version"],
                    "historical": bool(r["historical"])})
    return out


def readings(conn: sqlite3.Connection, asset: str | None, sensor: str | None, since: float | None,
             limit: int) -> list[dict]:
    where, args = [], []
    if asset is not None:
        # With the asset alone, walking the rows newest first and filtering stops
        # after ``limit`` hits; using the (asset, sensor, ts) index instead would
        # sort every row of the asset. The unary + keeps the planner off the index.
        where.append("asset = ?" if sensor is not None else "+asset = ?")
        args.append(asset)
    if sensor is not None:
        where.append("sensor = ?")
        args.append(sensor)
    if since is not None:
        where.append("ts > ?")
        args.append(since)
    order = "ts DESC" if asset is not None and sensor is not None else "id DESC"
    sql = "SELECT * FROM readings" + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {order} LIMIT ?"
    args.append(limit)
    return [{"asset": r["asset"], "sensor": r["sensor"], "ts": r["ts"], "value": r["value"],
             "quality": r["quality"], "historical": bool(r["historical"]), "received": r["received"]}
            for r in conn.execute(sql, args)]


def dead_letters(conn: sqlite3.Connection, since: float | None, limit: int) -> list[dict]:
    sql, args = "SELECT * FROM dead_letters", []
    if since is not None:
        sql += " WHERE received_at > ?"
        args.append(since)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    out = []
    for r in conn.execute(sql, args):
        payload = r["payload"]
        if isinstance(payload, str):  # a writer may have stored text; show it the same way
            payload = payload.encode("utf-8", "replace")
        payload = bytes(payload or b"")
        text = payload[: PAYLOAD_PREVIEW * 4].decode("utf-8", "replace")
        out.append({"id": r["id"], "source": r["source"], "reason": r["reason"],
                    "received_at": r["received_at"], "size": len(payload),
                    "payload": text[:PAYLOAD_PREVIEW],
                    "truncated": len(text) > PAYLOAD_PREVIEW or len(payload) > PAYLOAD_PREVIEW * 4})
    return out


def ping(conn: sqlite3.Connection) -> None:
    """Raise if the store cannot be read (missing file, corrupt header...)."""
    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
