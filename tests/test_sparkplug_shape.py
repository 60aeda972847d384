"""DATA read by a learned layout (appliance/connectors/sparkplug/shape.py) means what protobuf's reading means.

Each case feeds the same messages to two hosts: one that learns layouts and one that
never does (every message through protobuf), and compares everything they say:
readings, dead letters, rebirth requests and counters.
"""

from __future__ import annotations

import math

import pytest

from appliance.connections.sparkplug import DataType, Payload
from appliance.connectors.sparkplug.config import SparkplugInputConfig
from appliance.connectors.sparkplug.host import SparkplugHost
from appliance.connectors.sparkplug.shape import DataShape, fields, varint

NOW = 1_700_000_000.0
MS = int(NOW * 1000)
G, N, D = "plant1", "gw7", "pump3"
TYPES = {"d": (DataType.Double, "double_value"), "f": (DataType.Float, "float_value"),
         "i16": (DataType.Int16, "int_value"), "i64": (DataType.Int64, "long_value"),
         "u32": (DataType.UInt32, "int_value"), "b": (DataType.Boolean, "boolean_value")}
BIRTH = [("d0", "d"), ("f1", "f"), ("i2", "i16"), ("l3", "i64"), ("u4", "u32"), ("b5", "b")]


class ProtobufOnly(SparkplugHost):
    """The reference: never learns a layout, so every DATA goes through protobuf."""

    def _learn_shape(self, birth, payload) -> None:
        return None


def msg(seq, metrics, ts=MS, **extra) -> bytes:
    p = Payload(timestamp=ts, seq=seq, **extra) if ts is not None else Payload(seq=seq, **extra)
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def births() -> list[tuple[str, bytes]]:
    nb = msg(0, [{"name": "bdSeq", "datatype": DataType.UInt64, "long_value": 0}])
    metrics = [{"name": name, "alias": a, "datatype": TYPES[t][0], TYPES[t][1]: 0} for a, (name, t) in enumerate(BIRTH)]
    return [(f"spBv1.0/{G}/NBIRTH/{N}", nb), (f"spBv1.0/{G}/DBIRTH/{N}/{D}", msg(1, metrics))]


def metric(alias: int, value, **kw) -> dict:
    t = BIRTH[alias][1]
    return {"alias": alias, "datatype": TYPES[t][0], TYPES[t][1]: value, **kw}


def data(seq: int, metrics, **kw) -> tuple[str, bytes]:
    return f"spBv1.0/{G}/DDATA/{N}/{D}", msg(seq % 256, metrics, **kw)


def said(h: SparkplugHost, messages) -> list:
    out = []
    for topic, payload in messages:
        o = h.handle(topic, payload, NOW)
        out.append(([(r.asset, r.sensor, r.ts, "nan" if math.isnan(r.value) else r.value, r.quality, r.historical)
                     for r in o.readings], [(d.code, d.reason, d.count) for d in o.dead], o.rebirths))
    return out


def both(messages, **cfg) -> tuple[SparkplugHost, SparkplugHost]:
    known = [name for name, _ in BIRTH]
    fast = SparkplugHost(SparkplugInputConfig(**cfg), known_sensors=known, clock=lambda: 100.0)
    slow = ProtobufOnly(SparkplugInputConfig(**cfg), known_sensors=known, clock=lambda: 100.0)
    messages = births() + list(messages)
    assert said(fast, messages) == said(slow, messages)
    counters = dict(fast.counters.values)
    assert counters.pop("data_shapes_learned", 0) >= 1
    assert counters == dict(slow.counters.values)
    assert dict(fast.ignored_by_type.values) == dict(slow.ignored_by_type.values)
    return fast, slow


def repeated(make, n=6, start=2):
    """``n`` DATA messages of one layout: the first is read by protobuf and teaches it, the rest by shape."""
    return [data(start + i, make(i)) for i in range(n)]


def test_every_numeric_type_reads_the_same_including_negatives_and_wide_varints():
    values = [(1.5, 0.25, 0xFFFF_FFFE, 2**64 - 5, 0xFFFF_FFF0, True), (-3.25, -1.5, 0xFFFF_FF00, 2**63, 2**32 - 1, False),
              (1e300, 3.4e38, 0xFFFF_8000, 2**64 - 1, 0xF000_0000, True)]
    msgs = [data(2 + k, [metric(a, v) for a, v in enumerate(row)]) for k, row in enumerate(values * 2)]
    # A uint32 field whose varint carries more than 32 bits: protobuf keeps the low 32.
    topic, payload = data(9, [metric(a, v) for a, v in enumerate(values[0])])
    wide = b"\x50\xf0\xff\xff\xff\x0f"  # the UInt32 0xFFFF_FFF0
    assert wide in payload
    msgs.append((topic, payload.replace(wide, wide[:-1] + b"\x7f")))
    fast, _ = both(msgs)
    assert fast.counters.values["data_shapes_learned"] >= 1


def test_small_integers_of_another_width_are_another_layout():
    both(repeated(lambda i: [metric(2, 5 + 100 * i), metric(4, i)], n=4))


def test_per_metric_timestamps_seq_gaps_and_the_payload_without_a_timestamp():
    both(repeated(lambda i: [metric(0, float(i), timestamp=MS - 1000 + i), metric(1, 2.0, timestamp=MS + i)])
         + [data(30, [metric(0, 9.0)], ts=None), data(31, [metric(0, 9.5)], ts=None)]  # skip: a seq gap
         + [data(32, [metric(0, 9.5)], ts=0)])


def test_refusals_bad_quality_and_other_layouts_match():
    msgs = repeated(lambda i: [metric(0, float(i)), metric(1, 1.0)])
    msgs += [data(20, [metric(0, 2e12), metric(1, 1.0)]),                 # out of range: refused
             data(21, [metric(0, 1.0), metric(1, 1.0)], ts=MS + 10**9),    # far in the future: refused
             data(22, [metric(0, 1.0), metric(1, 1.0)], ts=1000),          # before min_timestamp
             data(23, [metric(0, 1.0, is_historical=True), metric(1, 1.0)]),  # another layout: protobuf
             data(24, [metric(0, math.nan), metric(1, 1.0)]),               # NaN: a bad, valueless reading
             data(25, [metric(0, 1.0), {"alias": 99, "double_value": 1.0}]),  # unknown alias: a rebirth
             data(26, [metric(0, 1.0), metric(1, 1.0)], uuid="x")]          # a uuid: protobuf
    both(msgs)


def test_a_layout_learned_before_a_rebirth_is_not_used_after_it():
    first = repeated(lambda i: [metric(0, float(i)), metric(1, 1.0)])
    # Same bytes, but the new birth declares alias 0 as another sensor and alias 1 no more.
    rebirth = births()[0:1] + [(f"spBv1.0/{G}/DBIRTH/{N}/{D}",
                                msg(1, [{"name": "f1", "alias": 0, "datatype": DataType.Double, "double_value": 0.0}]))]
    both(first + rebirth + repeated(lambda i: [metric(0, float(i)), metric(1, 1.0)], start=2))


@pytest.mark.parametrize("mangle", ["longer", "shorter", "truncated", "trailing"])
def test_a_malformed_message_of_a_learned_layout_is_what_protobuf_says_it_is(mangle):
    good = [data(2 + i, [metric(0, float(i)), metric(1, 1.0)]) for i in range(4)]
    topic, payload = data(6, [metric(0, 3.0), metric(1, 1.0)])
    top = fields(payload)
    assert top is not None
    metric_at = payload.index(top[1][2] + top[1][3])  # the first metric's tag, length and body
    if mangle == "longer":  # its length byte says one more than its body: the next tag is read into it
        payload = payload[:metric_at + 1] + bytes([payload[metric_at + 1] + 1]) + payload[metric_at + 2:]
    elif mangle == "shorter":
        payload = payload[:metric_at + 1] + bytes([payload[metric_at + 1] - 1]) + payload[metric_at + 2:]
    elif mangle == "truncated":
        payload = payload[:-3]
    else:
        payload = payload + b"\x08"
    both(good + [(topic, payload)])


def test_a_shape_matches_its_layout_whole_and_nothing_else():
    from appliance.connectors.sparkplug.host import MetricDef

    d = MetricDef("t", DataType.Double, "t", field="double_value", bits=-1, known=True)
    p = Payload(timestamp=MS, seq=3)
    p.metrics.add(alias=3, datatype=DataType.Double, double_value=1.0)
    shape = DataShape.learn(p.SerializeToString(), {3: d})
    assert shape is not None
    for seq in (4, 200):  # a seq of two varint bytes is the same layout
        p.seq = seq
        assert shape.read(p.SerializeToString())[1] == seq
    assert shape.read(p.SerializeToString() + b"\x18\x01") is None  # a field more
    p.metrics[0].alias = 4
    assert shape.read(p.SerializeToString()) is None  # another alias is another layout
    unknown = MetricDef("u", DataType.Double, "u", field="double_value", bits=-1, known=None)
    assert DataShape.learn(p.SerializeToString(), {4: unknown}) is None  # a sensor not known yet: no shape
    assert varint(b"\xff\xff\x03") == 65535
