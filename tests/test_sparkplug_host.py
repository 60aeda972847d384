"""The Sparkplug B input's host state, without a broker: births, aliases, seq, deaths, rebirths, bounds.

The same logic against Mosquitto and Eclipse Tahu's edge node: tests/test_sparkplug_tahu.py.
"""

from __future__ import annotations

import math

import pytest

from appliance.connections.sparkplug import DataType, Payload
from appliance.connectors.guard import Admission
from appliance.connectors.sparkplug.config import MappingRule, SparkplugInputConfig
from appliance.connectors.sparkplug.host import TOO_BIG_MAX, SparkplugHost
from appliance.core import DeadLetterCode, Quality
from appliance.ingest_health import GapDetector
from appliance.watchdog import SensorWatchdog

NOW = 1_700_000_000.0
MS = int(NOW * 1000)
G, N, D = "plant1", "gw7", "pump3"


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def host(clock=None, known=(), **cfg) -> SparkplugHost:
    return SparkplugHost(SparkplugInputConfig(**cfg), known_sensors=known, clock=clock or Clock())


def payload(seq=None, ts=MS, metrics=()):
    p = Payload(timestamp=ts)
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def dbl(name=None, alias=None, value=1.0, **kw):
    m = {"datatype": DataType.Double, "double_value": value, **kw}
    if name is not None:
        m["name"] = name
    if alias is not None:
        m["alias"] = alias
    return m


def nbirth(h, seq=0, bdseq=0, metrics=()):
    bd = {"name": "bdSeq", "datatype": DataType.UInt64, "long_value": bdseq}
    ctl = {"name": "Node Control/Rebirth", "datatype": DataType.Boolean, "boolean_value": False}
    return h.handle(f"spBv1.0/{G}/NBIRTH/{N}", payload(seq, metrics=[*metrics, bd, ctl]), NOW)


def dbirth(h, seq=1, device=D, metrics=None):
    metrics = metrics if metrics is not None else [dbl("Current", 1, 2.0), dbl("Voltage", 2, 230.0)]
    return h.handle(f"spBv1.0/{G}/DBIRTH/{N}/{device}", payload(seq, metrics=metrics), NOW)


def ddata(h, seq, metrics, device=D, ts=MS):
    return h.handle(f"spBv1.0/{G}/DDATA/{N}/{device}", payload(seq, ts=ts, metrics=metrics), NOW)


def born(clock=None, **cfg) -> SparkplugHost:
    h = host(clock, **cfg)
    nbirth(h)
    dbirth(h)
    return h


def test_births_then_data_by_alias_map_device_to_asset_and_metric_to_sensor():
    h = host()
    out = nbirth(h, metrics=[dbl("CPU", 10, 12.5)])
    assert [(r.asset, r.sensor, r.value) for r in out.readings] == [(N, "CPU", 12.5)]  # node-level: asset = node
    out = dbirth(h)
    assert {(r.asset, r.sensor, r.value) for r in out.readings} == {(D, "Current", 2.0), (D, "Voltage", 230.0)}
    out = ddata(h, 2, [dbl(alias=1, value=2.5), dbl(alias=2, value=231.0, timestamp=MS + 500)])
    assert [(r.asset, r.sensor, r.ts, r.value, r.quality) for r in out.readings] == [
        (D, "Current", NOW, 2.5, Quality.GOOD), (D, "Voltage", NOW + 0.5, 231.0, Quality.GOOD)]
    assert out.dead == [] and out.rebirths == []


def test_rules_map_node_and_device_to_asset_and_the_metric_leaf_to_sensor():
    h = host(rules=(MappingRule(group="plant*", node="gw?", device="*", asset="{node}-{device}", sensor="{leaf}"),))
    nbirth(h)
    out = dbirth(h, metrics=[dbl("Motor/Current", 1, 3.0)])
    assert [(r.asset, r.sensor) for r in out.readings] == [(f"{N}-{D}", "Current")]


def test_every_numeric_datatype_is_a_number_and_the_others_are_counted_not_dead_lettered():
    h = host(max_abs_value=1e15)  # a DateTime is milliseconds since 1970: past the default 1e12
    nbirth(h)
    metrics = [
        {"name": "i8", "alias": 1, "datatype": DataType.Int8, "int_value": 0xFFFFFFFF},          # -1
        {"name": "i16", "alias": 2, "datatype": DataType.Int16, "int_value": 0xFFFFFF85},        # -123
        {"name": "i32", "alias": 3, "datatype": DataType.Int32, "int_value": 2**31},             # -2**31
        {"name": "i64", "alias": 4, "datatype": DataType.Int64, "long_value": 2**64 - 7},        # -7
        {"name": "u8", "alias": 5, "datatype": DataType.UInt8, "int_value": 200},
        {"name": "u16", "alias": 6, "datatype": DataType.UInt16, "int_value": 65000},
        {"name": "u32", "alias": 7, "datatype": DataType.UInt32, "int_value": 4_000_000_000},
        {"name": "u64", "alias": 8, "datatype": DataType.UInt64, "long_value": 2**40},
        {"name": "f", "alias": 9, "datatype": DataType.Float, "float_value": 1.5},
        {"name": "d", "alias": 10, "datatype": DataType.Double, "double_value": -2.25},
        {"name": "b", "alias": 11, "datatype": DataType.Boolean, "boolean_value": True},
        {"name": "dt", "alias": 12, "datatype": DataType.DateTime, "long_value": MS},
        {"name": "s", "alias": 13, "datatype": DataType.String, "string_value": "running"},
        {"name": "t", "alias": 14, "datatype": DataType.Text, "string_value": "long"},
        {"name": "by", "alias": 15, "datatype": DataType.Bytes, "bytes_value": b"\x00"},
        {"name": "ds", "alias": 16, "datatype": DataType.DataSet, "dataset_value": {"num_of_columns": 1}},
        {"name": "tp", "alias": 17, "datatype": DataType.Template, "template_value": {"version": "1"}},
    ]
    out = dbirth(h, metrics=metrics)
    got = {r.sensor: r.value for r in out.readings}
    assert got == {"i8": -1.0, "i16": -123.0, "i32": -2.0**31, "i64": -7.0, "u8": 200.0, "u16": 65000.0,
                   "u32": 4e9, "u64": 2.0**40, "f": 1.5, "d": -2.25, "b": 1.0, "dt": float(MS)}
    assert out.dead == []
    # DATA leaves the datatype out: the birth's is used (Int16 -5 in two's complement).
    out = ddata(h, 2, [{"alias": 2, "int_value": 0xFFFFFFFB}, {"alias": 13, "string_value": "stopped"}])
    assert [(r.sensor, r.value) for r in out.readings] == [("i16", -5.0)]
    assert h.status()["ignored_non_numeric"] == {"String": 2, "Text": 1, "Bytes": 1, "DataSet": 1, "Template": 1}


def test_quality_null_and_historical_are_honoured():
    h = born()
    bad_q = {"keys": ["Quality"], "values": [{"type": DataType.Int32, "int_value": 0}]}
    unc_q = {"keys": ["quality"], "values": [{"type": DataType.Int32, "int_value": 64}]}
    out = ddata(h, 2, [dbl(alias=1, value=2.0, properties=bad_q), dbl(alias=2, value=230.0, properties=unc_q)])
    assert [r.quality for r in out.readings] == [Quality.BAD, Quality.UNCERTAIN]
    out = ddata(h, 3, [{"alias": 1, "datatype": DataType.Double, "is_null": True},
                       dbl(alias=2, value=229.0, is_historical=True, timestamp=MS - 3_600_000)])
    null, hist = out.readings
    assert math.isnan(null.value) and null.quality is Quality.BAD and not null.historical
    assert hist.historical and hist.ts == NOW - 3600 and hist.value == 229.0


def test_data_before_birth_asks_for_a_rebirth_at_a_bounded_rate():
    clock = Clock()
    h = host(clock, rebirth_interval_s=10.0)
    out = ddata(h, 5, [dbl(alias=1)])
    assert out.readings == [] and out.rebirths == [(G, N)]
    assert ddata(h, 6, [dbl(alias=1)]).rebirths == []          # asked 0 s ago
    clock.t += 10.0
    assert ddata(h, 7, [dbl(alias=1)]).rebirths == [(G, N)]
    s = h.status()
    assert s["before_birth"] == 3 and s["rebirth_requests"] == 2 and s["rebirths_held"] == 1
    assert s["rebirth_requests_by_reason"] == {"data_before_birth": 2}


BIG = [dbl(f"m{i}", i, 1.0) for i in range(10)]  # over max_metrics_per_birth = 5 below


def rebirth_with_a_device_birth_too_many_metrics(h):
    nbirth(h)
    return dbirth(h, metrics=BIG)


def rebirth_with_a_node_birth_too_many_bytes(h):
    h.birth_too_large(f"spBv1.0/{G}/NBIRTH/{N}")  # what the session does with a birth refused from its header


@pytest.mark.parametrize("rebirth", [rebirth_with_a_device_birth_too_many_metrics,
                                     rebirth_with_a_node_birth_too_many_bytes])
def test_a_birth_refused_for_its_size_backs_the_rebirth_requests_off_to_the_cap_until_one_is_taken(rebirth):
    """An edge node answers every rebirth request with the same birth, refused for its size, then sends data
    each second: without a backoff it would be asked every rebirth_interval_s for as long as it runs."""
    clock = Clock()
    h = host(clock, rebirth_interval_s=10.0, max_rebirth_backoff_s=80.0, max_metrics_per_birth=5)
    start = clock.t
    rebirth(h)
    asked, seq = [], 1
    for _ in range(600):
        seq = (seq + 1) % 256
        if h.handle(f"spBv1.0/{G}/DDATA/{N}/{D}", payload(seq, metrics=[dbl(alias=1)]), NOW).rebirths:
            asked.append(clock.t - start)
            rebirth(h)
            seq = 1
        clock.t += 1.0
    assert asked == [0, 20, 60, 140, 220, 300, 380, 460, 540]  # 10 s, doubled per refusal, up to 80 s
    s = h.status()
    assert s["rebirth_requests"] == 9 and s["rebirths_backed_off"] == 10 + 30 + 70 * 6 + 50
    # Its birth is fixed (a smaller one is taken): the next request waits rebirth_interval_s again (60 s since
    # the last one, less than the 80 s the backoff had reached).
    nbirth(h)
    assert dbirth(h).dead == []
    assert ddata(h, 2, [dbl(alias=1)], device="not-born").rebirths == [(G, N)]


def test_a_birth_refused_from_its_header_is_only_a_birth_on_a_birth_topic():
    h = host()
    h.birth_too_large(f"spBv1.0/{G}/NDATA/{N}")
    h.birth_too_large("not/sparkplug")
    assert h.nodes == {}
    h.birth_too_large(f"spBv1.0/{G}/DBIRTH/{N}/{D}")
    assert h.nodes[(G, N)].too_big == {D}
    for i in range(1000):  # a publisher inventing device names: the node remembers a bounded few
        h.birth_too_large(f"spBv1.0/{G}/DBIRTH/{N}/dev{i}")
    assert len(h.nodes[(G, N)].too_big) == TOO_BIG_MAX and h.nodes[(G, N)].refusals == 1001


def test_rebirth_requests_to_all_nodes_together_are_bounded():
    h = host(max_rebirths_per_min=3)
    asked = [h.handle(f"spBv1.0/{G}/NDATA/node{i}", payload(1, metrics=[dbl(alias=1)]), NOW).rebirths
             for i in range(10)]
    assert sum(len(a) for a in asked) == 3 and h.status()["rebirths_held"] == 7


def test_an_unknown_alias_asks_for_a_rebirth_and_the_known_ones_still_read():
    h = born()
    out = ddata(h, 2, [dbl(alias=1, value=3.0), dbl(alias=99, value=4.0)])
    assert [r.sensor for r in out.readings] == ["Current"]
    assert out.rebirths == [(G, N)] and h.status()["rebirth_requests_by_reason"] == {"unknown_alias": 1}


def test_a_seq_that_arrives_within_the_reorder_wait_is_no_gap():
    clock = Clock()
    h = born(clock, reorder_timeout_s=2.0)
    assert ddata(h, 3, [dbl(alias=1)]).rebirths == []   # 2 is missing
    clock.t += 1.0
    assert ddata(h, 2, [dbl(alias=1)]).rebirths == []   # ... and arrives late
    clock.t += 5.0
    assert h.tick().rebirths == []
    s = h.status()
    assert s["seq_skip"] == 1 and s["seq_late"] == 1 and "seq_gaps" not in s


def test_a_seq_gap_that_outlasts_the_reorder_wait_asks_for_a_rebirth():
    clock = Clock()
    h = born(clock, reorder_timeout_s=2.0)
    out = ddata(h, 5, [dbl(alias=1, value=7.0)])       # 2, 3, 4 missing; its data is read at once
    assert [r.value for r in out.readings] == [7.0] and out.rebirths == []
    clock.t += 1.0
    assert h.tick().rebirths == []
    clock.t += 1.5
    assert h.tick().rebirths == [(G, N)]
    s = h.status()
    assert s["seq_gaps"] == 1 and s["seq_lost"] == 3 and s["rebirth_requests_by_reason"] == {"seq_gap": 1}


def test_seq_wraps_from_255_to_0():
    h = host(reorder_timeout_s=0)
    nbirth(h, seq=0)
    dbirth(h, seq=1)
    for seq in range(2, 300):
        assert ddata(h, seq % 256, [dbl(alias=1)]).rebirths == []
    assert "seq_skip" not in h.status()


def test_a_death_silences_the_sensors_at_once_and_no_window_holds_a_value_across_it():
    h = born()
    ddata(h, 2, [dbl(alias=1, value=2.0), dbl(alias=2, value=230.0)], ts=MS + 4000)
    death = payload(metrics=[{"name": "bdSeq", "datatype": DataType.UInt64, "long_value": 0}])
    out = h.handle(f"spBv1.0/{G}/NDEATH/{N}", death, NOW + 10)
    marks = sorted((r.asset, r.sensor, r.ts, r.quality) for r in out.readings)
    assert marks == [(D, "Current", NOW + 4.001, Quality.BAD), (D, "Voltage", NOW + 4.001, Quality.BAD)]
    assert all(math.isnan(r.value) for r in out.readings)
    assert sorted(out.silenced) == [(D, "Current"), (D, "Voltage")]
    s = h.status()
    assert s["deaths"] == 1 and s["nodes_online"] == 0 and s["cached_metrics"] == 0
    # Data after the death and before a birth is not read; a rebirth is asked for.
    assert ddata(h, 3, [dbl(alias=1)]).readings == []


def test_a_death_of_an_older_session_is_stale_and_ignored():
    h = host()
    nbirth(h, bdseq=4)
    dbirth(h)
    death = payload(metrics=[{"name": "bdSeq", "datatype": DataType.UInt64, "long_value": 3}])
    out = h.handle(f"spBv1.0/{G}/NDEATH/{N}", death, NOW)
    assert out.readings == [] and h.status()["stale_deaths"] == 1 and h.status()["nodes_online"] == 1


def test_a_birth_under_a_new_bdseq_while_alive_is_the_old_sessions_death():
    h = born()
    out = nbirth(h, bdseq=1)
    assert {(r.sensor, math.isnan(r.value)) for r in out.readings} == {("Current", True), ("Voltage", True)}
    assert h.status()["deaths_implied"] == 1 and len(out.silenced) == 2
    # A rebirth of the same session (same bdSeq) silences nothing.
    dbirth(h)
    out = nbirth(h, bdseq=1)
    assert out.readings == [] and out.silenced == []


def test_a_device_death_silences_that_device_only():
    h = born()
    dbirth(h, seq=2, device="fan1", metrics=[dbl("Speed", 5, 900.0)])
    out = h.handle(f"spBv1.0/{G}/DDEATH/{N}/{D}", payload(3), NOW)
    assert {(r.asset, r.sensor) for r in out.readings} == {(D, "Current"), (D, "Voltage")}
    assert ddata(h, 4, [dbl(alias=5, value=950.0)], device="fan1").readings[0].value == 950.0
    assert h.status()["devices_online"] == 1


def test_malformed_protobuf_and_foreign_topics_are_dead_lettered_with_a_reason():
    h = host()
    out = h.handle(f"spBv1.0/{G}/DDATA/{N}/{D}", b"\xff\xff\xff\xff", NOW)
    (dead,) = out.dead
    assert dead.code is DeadLetterCode.BAD_PROTOBUF and "not a Sparkplug B protobuf" in dead.detail
    (dead,) = h.handle("spBv1.0/plant1/XDATA/gw7", payload(), NOW).dead
    assert dead.code is DeadLetterCode.BAD_TOPIC
    assert h.handle("spBv1.0/STATE/scada", b'{"online":true}', NOW).dead == []


def test_out_of_range_and_absurd_timestamps_are_one_dead_letter_per_reason():
    h = born(ranges={"Current": (0.0, 50.0)})
    out = ddata(h, 2, [dbl(alias=1, value=51.0), dbl(alias=1, value=52.0), dbl(alias=2, value=1.0, timestamp=1000)])
    assert sorted((d.code.value, d.count) for d in out.dead) == [("out_of_range", 2), ("ts_too_old", 1)]
    assert out.readings == []


def test_a_birth_with_100000_metrics_is_refused_and_caches_nothing():
    h = host()
    nbirth(h)
    out = dbirth(h, metrics=[dbl(f"m{i}", i, 1.0) for i in range(100_000)])
    (dead,) = out.dead
    assert dead.code is DeadLetterCode.BAD_BIRTH and "100000 metrics" in dead.detail
    assert out.readings == [] and h.status()["births_refused"] == 1
    assert h.status()["cached_metrics"] == 2  # the node's own birth: bdSeq, Node Control/Rebirth


def test_the_cache_of_all_births_is_bounded():
    h = host(max_cached_metrics=5)
    nbirth(h)                                            # Node Control/Rebirth, bdSeq: 2 cached
    assert dbirth(h, metrics=[dbl("a", 1), dbl("b", 2)]).dead == []
    (dead,) = dbirth(h, device="other", metrics=[dbl("a", 1), dbl("b", 2)]).dead
    assert "max_cached_metrics" in dead.detail and h.status()["cached_metrics"] == 4


def test_colliding_aliases_are_never_resolved_to_a_wrong_sensor():
    h = host()
    nbirth(h)
    out = dbirth(h, metrics=[dbl("Current", 1, 2.0), dbl("Voltage", 1, 230.0), dbl("Temp", 2, 40.0)])
    assert [d.code for d in out.dead] == [DeadLetterCode.BAD_BIRTH]
    out = ddata(h, 2, [dbl(alias=1, value=9.0), dbl(alias=2, value=41.0), dbl(name="Voltage", value=231.0)])
    assert [(r.sensor, r.value) for r in out.readings] == [("Temp", 41.0), ("Voltage", 231.0)]
    assert out.rebirths == [] and h.status()["ambiguous_alias"] == 1


def test_a_node_rebirthing_100_times_a_second_is_muted_for_a_minute():
    clock = Clock()
    h = host(clock, max_births_per_min=120)
    for i in range(1000):
        clock.t += 0.01
        nbirth(h)
        dbirth(h)
    s = h.status()
    assert s["births_over_rate"] == 1 and s["muted_messages"] == 2 * 1000 - 121 - 120
    assert s["cached_metrics"] == 0 and s["nodes_online"] == 0
    clock.t += 61.0
    assert nbirth(h).dead == [] and h.status()["nodes_online"] == 1


def test_admission_bounds_assets_as_for_the_json_input():
    h = SparkplugHost(SparkplugInputConfig(), admission=Admission(max_assets=1), clock=Clock())
    nbirth(h)
    assert dbirth(h).dead == []
    (dead,) = dbirth(h, device="pump4").dead
    assert dead.code is DeadLetterCode.UNKNOWN_ASSET


def test_sensors_the_model_does_not_name_are_counted_not_dead_lettered():
    h = host(known=("Current",))
    nbirth(h)
    out = dbirth(h)
    assert [r.sensor for r in out.readings] == ["Current"] and out.dead == []
    assert h.status()["unknown_sensor"] == 1


@pytest.mark.parametrize("seen_after", [False, True])
def test_the_watchdog_reports_a_silenced_sensor_at_once_until_it_sends_again(seen_after):
    wd = SensorWatchdog(("Current",), silence_s=60, clock=lambda: 0.0, wall=lambda: NOW)
    wd.seen(D, "Current", now=0.0)
    wd.silence(D, "Current", now=1.0)
    assert [(h.sensor, h.silent) for h in wd.check(now=1.0)] == [("Current", True)]
    if seen_after:
        wd.seen(D, "Current", now=2.0)
        assert [(h.sensor, h.silent) for h in wd.check(now=2.0)] == [("Current", False)]
    else:
        assert wd.check(now=2.0) == [] and wd.silent()[0]["sensor"] == "Current"


def test_the_gap_detector_shows_an_interruption_and_closes_it_with_a_gap_however_short():
    gd = GapDetector(min_samples=2)
    for t in range(10):
        gd.observe(D, "Current", float(t))
    gd.interrupt(D, "Current")
    assert gd.status()["interrupted"] == [{"asset": D, "sensor": "Current"}]
    gap = gd.observe(D, "Current", 10.5)  # shorter than a period: still a gap, the source said so
    assert gap is not None and gd.status()["interrupted_count"] == 0 and gd.gaps == 1


@pytest.mark.parametrize("algo", ["DEFLATE", "GZIP"])
def test_a_compressed_data_message_is_inflated_and_read_like_any_other(algo):
    from appliance.connections.sparkplug.compression import compressed

    h = born(known=("Current", "Voltage"))
    inner = payload(2, metrics=[dbl(alias=1, value=3.5), dbl(alias=2, value=231.0)])
    out = h.handle(f"spBv1.0/{G}/DDATA/{N}/{D}", compressed(inner, algo).SerializeToString(), NOW)
    assert [(r.sensor, r.value) for r in out.readings] == [("Current", 3.5), ("Voltage", 231.0)]
    assert not out.dead and h.counters.values["compressed_payloads"] == 1
    assert not h.counters.values.get("seq_skip")  # its seq (inside the body) was read


def test_a_compressed_payload_is_bounded_and_a_corrupt_one_dead_lettered_with_its_reason():
    import zlib

    from appliance.connections.sparkplug.compression import COMPRESSED_UUID, compressed

    h = born(known=("Current", "Voltage"), max_payload_bytes=4096)
    topic = f"spBv1.0/{G}/DDATA/{N}/{D}"
    bomb = compressed(b"\x00" * 10_000_000)  # ~10 kB on the wire, 10 MB inflated
    assert len(bomb.SerializeToString()) < 20_000
    out = h.handle(topic, bomb.SerializeToString(), NOW)
    assert [d.code for d in out.dead] == [DeadLetterCode.TOO_LARGE] and "past 4096 bytes" in out.dead[0].reason
    corrupt = Payload(uuid=COMPRESSED_UUID, body=b"not deflate at all")
    out = h.handle(topic, corrupt.SerializeToString(), NOW)
    assert [d.code for d in out.dead] == [DeadLetterCode.BAD_PROTOBUF] and "does not inflate" in out.dead[0].reason
    unknown = compressed(payload(3), "LZ4")
    unknown.body = zlib.compress(payload(3))
    out = h.handle(topic, unknown.SerializeToString(), NOW)
    assert "'LZ4' is not one of DEFLATE, GZIP" in out.dead[0].reason
    twice = compressed(compressed(payload(3)).SerializeToString())
    out = h.handle(topic, twice.SerializeToString(), NOW)
    assert "inside a compressed payload" in out.dead[0].reason
    assert not any(o.readings for o in [out])
