"""Hostile publishers, without a broker: every bound the inputs and the store keep (issue 13)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time

import numpy as np
import pytest

from appliance.connectors.guard import (DEAD_LETTER_MAX_BYTES, DETAIL_MAX_CHARS, SOURCE_MAX_CHARS, Admission,
                                        ValueRange, dead_letter)
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.payload import RouteMatch, TopicRoute, TopicRouter, parse_payload
from appliance.core import DeadLetter, DeadLetterCode, Reading, SensorHealth
from appliance.detector.train import TrainSettings, train_bundle
from appliance.ingest_health import LogLimiter, log_sensor_changes
from appliance.store import Store, open_reader
from appliance.store.store import JOURNAL_SIZE_LIMIT, SCHEMA_VERSION

NOW = 1_700_000_000.0
MULTI = RouteMatch("pump1", None, False, "plant/{asset}/telemetry")
SINGLE = RouteMatch("pump1", "Current", False, "plant/{asset}/{sensor}")
KNOWN = frozenset({"Current", "Voltage"})


def hostile_multi(n: int, ts: float = NOW, extra: dict | None = None) -> bytes:
    values = {f"u{i:05d}": 1 for i in range(n)}
    values.update(extra or {})
    return json.dumps({"ts": ts, "values": values}, separators=(",", ":")).encode()


# -- one message, many refusals ------------------------------------------------------------------

def test_21000_unknown_sensors_in_one_message_are_one_counted_dead_letter():
    payload = hostile_multi(21_000, extra={"Current": 1.5})
    assert len(payload) > 230_000
    ok, dead = parse_payload(MULTI, payload, NOW, topic="plant/pump1/telemetry", known_sensors=KNOWN)
    assert [(r.sensor, r.value) for r in ok] == [("Current", 1.5)]  # the good sensor still passes
    (d,) = dead
    assert d.code is DeadLetterCode.UNKNOWN_SENSOR and d.count == 21_000
    assert len(d.payload) == DEAD_LETTER_MAX_BYTES == 512
    assert len(d.detail) <= DETAIL_MAX_CHARS
    assert "21000 in this message" in d.detail and "'u00000'" in d.detail


def test_one_message_gives_at_most_one_dead_letter_per_code():
    values = {**{f"x{i}": 1.0 for i in range(50)}, **{f"Current{i}": "text" for i in range(50)},
              "": 1.0, "y" * 500: 2.0}
    payload = json.dumps({"ts": NOW, "values": values}).encode()
    _, dead = parse_payload(MULTI, payload, NOW, topic="t", known_sensors=None,
                            value_range=ValueRange(max_abs=10.0))
    by_code = {d.code.value: d.count for d in dead}
    assert by_code == {"bad_value": 50, "bad_sensor_name": 2}
    _, dead = parse_payload(MULTI, payload, NOW, topic="t", known_sensors=KNOWN)
    assert {d.code.value: d.count for d in dead} == {"unknown_sensor": 100, "bad_sensor_name": 2}


def test_payload_source_and_detail_copies_are_capped():
    long_topic = "plant/" + "a" * 60_000 + "/telemetry"
    huge_name = "n" * 60_000
    d = dead_letter(long_topic, b"x" * 1_000_000, DeadLetterCode.BAD_JSON, huge_name, NOW)
    assert len(d.payload) == DEAD_LETTER_MAX_BYTES
    assert len(d.source) <= SOURCE_MAX_CHARS and d.source.endswith(f"({len(long_topic)} chars)")
    assert len(d.detail) <= DETAIL_MAX_CHARS
    _, (d,) = parse_payload(SINGLE, b"{" + b" " * 200_000, NOW, topic="t")
    assert d.code is DeadLetterCode.BAD_JSON and len(d.payload) == 512


# -- assets and sensors ----------------------------------------------------------------------------

def test_assets_are_bounded_by_a_maximum_or_a_list():
    a = Admission(max_assets=3)
    results = [a.asset(f"p{i}") for i in range(20_001)]
    assert results[:3] == [None, None, None]
    assert all(r is not None and "max_assets" in r for r in results[3:])
    assert a.status()["assets"] == 3 and a.status()["assets_refused"] == 19_998
    listed = Admission(assets=("press7", "pump1"))
    assert listed.asset("pump1") is None
    assert "not in the configured list" in listed.asset("pump2")
    why = Admission().asset("z" * 60_000)
    assert "60000 characters" in why and len(why) < 200


def test_invented_names_do_not_lock_out_a_real_asset_that_comes_later():
    """Issue 24 item 4: 5,000 invented names used to hold every place until a restart."""
    t = [0.0]
    a = Admission(max_assets=1000, idle_s=60, clock=lambda: t[0])
    a.asset("pump1")
    a.prove("pump1")  # a real asset: it produced a complete window
    refused = sum(a.asset(f"squat{i}") is not None for i in range(5000))
    assert refused == 5000 - 999 and a.status()["assets"] == 1000
    assert "none idle for 60 s" in a.asset("press7")  # the invented names are still fresh: no eviction yet
    t[0] = 61.0
    assert a.asset("press7") is None  # a later real asset gets the place of an idle invented name
    assert a.evicted() == ["squat0"] and a.evicted() == []
    t[0] = 10_000.0
    for i in range(5000, 7000):  # a second flood, long after: pump1 (proven) keeps its place
        a.asset(f"squat{i}")
    assert a.asset("pump1") is None and "pump1" not in a.evicted()
    st = a.status()
    assert st["assets"] == 1000 and st["assets_refused"] == 4001 + 1 + 1001 and st["assets_evicted"] == 1000
    assert st["last_refused"] == [f"squat{i}" for i in range(6995, 7000)]


def test_a_proven_name_takes_the_place_of_a_fresh_unproven_one():
    t = [0.0]
    a = Admission(max_assets=2, idle_s=60, clock=lambda: t[0])
    assert a.asset("s1") is None and a.asset("s2") is None
    a.prove("pump1")  # e.g. open alarms in the store at start
    assert a.asset("pump1") is None and a.evicted() == ["s1"]
    a.prove("s2")
    t[0] = 1000.0
    assert a.asset("s3") is not None  # both left are proven: nothing is evicted


def test_sensors_per_asset_are_bounded_when_no_model_names_them():
    a = Admission(max_sensors_per_asset=4)
    a.asset("p1")
    slots = a.sensors("p1")
    payload = hostile_multi(100)
    ok, dead = parse_payload(MULTI, payload, NOW, topic="t", known_sensors=slots)
    assert len(ok) == 4 and dead[0].code is DeadLetterCode.UNKNOWN_SENSOR and dead[0].count == 96
    ok, _ = parse_payload(MULTI, payload, NOW, topic="t", known_sensors=slots)
    assert [r.sensor for r in ok] == [f"u{i:05d}" for i in range(4)]  # the admitted ones, for good
    assert a.status()["sensors"] == 4 and a.status()["sensors_refused"] == 192


def test_config_bounds_default_and_validate():
    c = MqttInputConfig()
    assert (c.max_assets, c.max_sensors_per_asset, c.max_abs_value, c.assets, c.ranges) == (1000, 256, 1e12, (), {})
    c = MqttInputConfig(assets=["pump1"], ranges={"Current": [0, 50], "pump1/Voltage": [180, 260]})
    assert c.ranges["pump1/Voltage"] == (180.0, 260.0)
    for bad in ({"ranges": {"Current": [5, 1]}}, {"ranges": {"a/b/c": [0, 1]}}, {"assets": ["a/b"]},
                {"max_abs_value": float("inf")}, {"ranges": {"Current": [0, float("inf")]}}):
        with pytest.raises(ValueError):
            MqttInputConfig(**bad)


# -- values outside the physical range -------------------------------------------------------------

@pytest.mark.parametrize("value", [1e308, -1e308, 1e18, -1e13, 1.7976931348623157e308])
def test_values_beyond_the_default_range_are_dead_lettered(value):
    payload = json.dumps({"ts": NOW, "value": value}).encode()
    ok, (d,) = parse_payload(SINGLE, payload, NOW, topic="t", value_range=ValueRange())
    assert ok == [] and d.code is DeadLetterCode.OUT_OF_RANGE and "max_abs_value" in d.detail


def test_per_sensor_ranges_and_the_asset_specific_one_wins():
    vr = ValueRange(ranges={"Current": (0.0, 50.0), "pump2/Current": (0.0, 500.0)})
    assert vr.check("pump1", "Current", 49.0) is None
    assert "configured for Current" in vr.check("pump1", "Current", 120.0)
    assert vr.check("pump2", "Current", 120.0) is None
    assert "configured for pump2/Current" in vr.check("pump2", "Current", -1.0)
    assert vr.check("pump1", "Voltage", 1e11) is None  # the default bound elsewhere
    payload = json.dumps({"ts": NOW, "values": {"Current": 120.0, "Voltage": 230.0}}).encode()
    ok, (d,) = parse_payload(MULTI, payload, NOW, topic="t", value_range=vr)
    assert [r.sensor for r in ok] == ["Voltage"] and d.code is DeadLetterCode.OUT_OF_RANGE


def test_the_largest_value_in_range_keeps_windows_scoreable_and_scores_finite(tmp_path):
    """At the bound (1e12) and a tiny training spread, the scaled error stays below float32's maximum."""
    from appliance.detector.scorer import Detector
    from appliance.detector.windowing import WindowBuilder

    rng = np.random.default_rng(0)
    t = np.arange(1200)
    rows = np.stack([np.sin(t / 9.0), np.cos(t / 9.0) + 0.05 * rng.standard_normal(len(t)),
                     1e-7 * rng.standard_normal(len(t))], axis=1)  # a near-constant sensor: the smallest scale
    det = Detector.load(train_bundle(rows, ["a", "b", "c"], tmp_path / "b",
                                     TrainSettings(window=8, hidden=(16, 4), max_iter=10, seed=2)))
    wb = WindowBuilder(det.sensors, 1.0, det.window)
    windows = []
    for i in range(20):
        for j, s in enumerate(det.sensors):
            v = 1e12 if (i == 12 and s == "c") else float(rows[i, j])
            windows += wb.add(Reading("p", s, 1000.0 + i, v))
    scores = [det.score_one(w) for w in windows]
    assert len(scores) == 13 and all(np.isfinite(s.value) for s in scores)
    assert max(s.value for s in scores) > 1e6 * det.threshold  # and clearly anomalous


# -- the store: bounded at all times, repeats counted ------------------------------------------------
# (Times near the real clock: the store's retention drops dead letters older than retention_days.)
T0 = time.time()


def dl(i: int, detail: str = "same", at: float = T0) -> DeadLetter:
    return DeadLetter(f"plant/p{i}/x", b"x" * 512, DeadLetterCode.BAD_JSON, detail, at)


def rows(db, sql="SELECT COUNT(*), COALESCE(SUM(count), 0) FROM dead_letters"):
    return tuple(open_reader(db).execute(sql).fetchone())


def test_dead_letters_are_bounded_at_every_write_not_once_a_minute(tmp_path):
    st = Store(tmp_path / "s.db", max_dead_letters=100)
    st.start()
    try:
        for batch in range(5):
            for i in range(400):
                st.put_dead_letter(dl(i, detail=f"distinct {batch}/{i}"))
            assert st.flush()
            assert rows(st.path)[0] <= 100  # no retention pass ran: the write itself trims
        newest = open_reader(st.path).execute("SELECT detail FROM dead_letters ORDER BY id DESC LIMIT 1").fetchone()
        assert newest[0] == "distinct 4/399"
    finally:
        st.close()


def test_identical_repeats_are_one_row_with_a_count(tmp_path):
    st = Store(tmp_path / "s.db", dead_letter_collapse_s=60)
    st.start()
    try:
        for k in range(500):
            st.put_dead_letter(dl(1, at=T0 + k * 0.01))
            if k % 100 == 0:
                assert st.flush()  # across batches as well as within one
        st.put_dead_letter(DeadLetter("plant/p1/x", b"", DeadLetterCode.BAD_JSON, "same", T0 + 10, count=7))
        st.put_dead_letter(dl(2))  # another source: its own row
        st.put_dead_letter(dl(1, at=T0 + 61))  # past the window: a new row
        assert st.flush()
        assert rows(st.path) == (3, 509)
        (latest, *_), first = st.reader.dead_letters(limit=3), st.reader.dead_letters(limit=3)[-1]
        assert (latest["count"], latest["received_at"]) == (1, T0 + 61)
        assert (first["count"], first["received_at"], first["last_at"]) == (507, T0, T0 + 10)
        assert st.dead_letters_collapsed == 506
    finally:
        st.close()


def test_forty_hostile_messages_stay_small_on_disk(tmp_path):
    """The issue's case: 40 x (21,000 unknown sensors) grew the store and WAL to 6.47 GB."""
    st = Store(tmp_path / "s.db")
    st.start()
    try:
        for k in range(40):
            payload = hostile_multi(21_000, ts=T0 + k)
            _, dead = parse_payload(MULTI, payload, T0 + k, topic="plant/pump1/telemetry", known_sensors=KNOWN)
            for d in dead:
                st.put_dead_letter(d)
        assert st.flush()
        n, total = rows(st.path)
        assert n == 1 and total == 40 * 21_000  # the same refusal 40 times: one row, counted
        size = sum(p.stat().st_size for p in tmp_path.glob("s.db*"))
        assert size < 2_000_000, size
    finally:
        st.close()


def test_the_writer_truncates_the_wal_after_checkpoints(tmp_path):
    from appliance.store.store import _connect

    writer = _connect(Store(tmp_path / "s.db").path)
    try:
        assert writer.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT
    finally:
        writer.close()


V2_DEAD_LETTERS = """
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, source TEXT NOT NULL, payload BLOB NOT NULL, code TEXT NOT NULL,
    detail TEXT NOT NULL, received_at REAL NOT NULL);
INSERT INTO dead_letters (source, payload, code, detail, received_at) VALUES ('t', X'7B', 'bad_json', 'eof', 5.0);
"""


def test_a_version_2_store_gains_the_count_columns(tmp_path):
    db = tmp_path / "v2.db"
    st = Store(db)  # current schema ...
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE dead_letters;" + V2_DEAD_LETTERS + "PRAGMA user_version = 2;")
    conn.close()
    st = Store(db)  # ... taken back to version 2's dead letters, then migrated
    assert open_reader(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    (row,) = st.reader.dead_letters()
    assert (row["code"], row["count"], row["last_at"]) == ("bad_json", 1, 5.0)


# -- log lines -----------------------------------------------------------------------------------------

class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_repeated_condition_is_logged_once_per_interval():
    logger = logging.getLogger("test.limiter")
    h = Lines()
    logger.addHandler(h)
    now = [0.0]
    try:
        lim = LogLimiter(logger, interval_s=60, clock=lambda: now[0])
        for i in range(160_000):
            now[0] = i * 1e-4  # 16 s
            lim.log(logging.WARNING, ("silent", i % 8), "sensor silent %d", i % 8)
        assert len(h.lines) == 8 and lim.suppressed == 160_000 - 8
        now[0] = 100.0
        lim.log(logging.WARNING, ("silent", 0), "sensor silent %d", 0)
        assert "suppressed" in h.lines[-1]
        for i in range(50_000):  # ever-new keys: the limiter's memory stays bounded
            lim.log(logging.INFO, ("asset", i), "new %d", i)
        assert len(lim._keys) <= 4096
    finally:
        logger.removeHandler(h)


def test_thousands_of_silent_sensors_are_a_few_lines():
    logger = logging.getLogger("test.silent")
    h = Lines()
    logger.addHandler(h)
    try:
        changes = [SensorHealth(f"asset{i}", f"s{j}", True, 0.0, 1.0) for i in range(20_001) for j in range(8)]
        log_sensor_changes(logger, changes, limit=10)
        assert len(h.lines) == 11
        assert h.lines[-1].startswith("sensor silent: 159998 more sensors of")
    finally:
        logger.removeHandler(h)


# -- routing memory ------------------------------------------------------------------------------------

def test_route_cache_is_bounded():
    router = TopicRouter([TopicRoute("plant/{asset}/{sensor}")])
    for i in range(20_000):
        assert router.route(f"plant/a{i}/Current").asset == f"a{i}"
    assert len(router._cache) <= 4096
    assert router.route("elsewhere/x") is None and router.route("elsewhere/x") is None


# -- OPC-UA: the same physical range ---------------------------------------------------------------

def test_opcua_values_outside_the_node_range_or_the_default_bound_are_dead_lettered():
    import asyncio
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from asyncua import ua

    from appliance.connections.config import OpcuaEndpointConfig
    from appliance.connectors.opcua.config import OpcuaInputConfig, OpcuaNode
    from appliance.connectors.opcua.connector import OpcuaConnector
    from tests.support.fakes import MemorySink

    cfg = OpcuaInputConfig(enabled=True, nodes=[
        OpcuaNode(node="ns=2;s=P.Current", asset="p", sensor="Current", min_value=0.0, max_value=50.0),
        OpcuaNode(node="ns=2;s=P.Voltage", asset="p", sensor="Voltage")])
    conn = OpcuaConnector(cfg, OpcuaEndpointConfig())
    conn._mapped = {1: cfg.nodes[0], 2: cfg.nodes[1]}
    sink = MemorySink()
    conn._sink = sink
    t0 = datetime.now(timezone.utc)

    def change(handle, value, k):
        dv = ua.DataValue(ua.Variant(value), SourceTimestamp=t0 + timedelta(seconds=k))
        return SimpleNamespace(data=SimpleNamespace(monitored_item=SimpleNamespace(ClientHandle=handle, Value=dv)),
                               value=value)

    async def run():
        for k, (handle, value) in enumerate([(1, 12.5), (1, 51.0), (1, -0.5), (2, 230.0), (2, 1e308),
                                             (2, -1e18), (2, 1e12)]):
            conn._on_datachange(change(handle, value, k))
        await asyncio.sleep(0)

    asyncio.run(run())
    assert [(r.sensor, r.value) for r in sink.readings] == [("Current", 12.5), ("Voltage", 230.0),
                                                          ("Voltage", 1e12)]
    assert [d.code.value for d in sink.dead] == ["out_of_range"] * 4
    assert "configured for p/Current" in sink.dead[0].detail and "max_abs_value" in sink.dead[2].detail
    assert conn.status()["counters"]["out_of_range"] == 4
