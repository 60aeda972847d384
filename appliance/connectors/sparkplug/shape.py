"""An edge node's DATA read from its bytes by a layout learned once, without protobuf's object model.

A device's DATA messages repeat one layout: the same metrics, by alias, in the same
order and types; only the values, timestamps and ``seq`` change. Reading each metric
through protobuf's Python objects costs a wrapper per metric and a call per field
(most of the input's time on an eight-metric DDATA). So once a DATA message was read
the ordinary way, its bytes are turned into a :class:`DataShape`: a regular expression
of the message with the layout's bytes literal (tags, aliases, datatypes, each metric's
length) and the changing parts captured (the payload's timestamp and ``seq``, each
metric's value and timestamp). A later message that matches it whole has that exact
layout, so the captures are its fields and nothing else is in it; one that does not
match is read by protobuf as before.

Exactness: a metric's captures have the widths seen when the shape was made, so its
body is as long as its literal length prefix says (a malformed length cannot be read
differently from how protobuf reads it); a varint holds at most 64 bits (a longer one,
and anything else unusual, is left to protobuf; the payload's timestamp and ``seq`` at
most 63). Only metrics the common path
takes qualify: an alias its birth declared for a sensor the model knows, a value in
the field of the birth's datatype, and no name, properties, ``is_null``,
``is_historical`` or other field. Their values are converted as
:meth:`~appliance.connectors.sparkplug.host.SparkplugHost` converts protobuf's.

>>> from appliance.connections.sparkplug import Payload
>>> from appliance.connectors.sparkplug.host import MetricDef
>>> d = MetricDef("t", 10, "t", field="double_value", bits=-1, known=True)
>>> p = Payload(timestamp=1_700_000_000_000, seq=7)
>>> _ = p.metrics.add(alias=3, datatype=10, double_value=21.5)
>>> shape = DataShape.learn(p.SerializeToString(), {3: d})
>>> p.seq, p.metrics[0].double_value = 8, 22.25
>>> ts_ms, seq, items = shape.read(p.SerializeToString())
>>> ts_ms, seq, [(m.name, value, mts) for m, value, mts, _, _ in items]
(1700000000000, 8, [('t', 22.25, None)])
>>> p.metrics[0].is_historical = True      # another layout: left to protobuf
>>> shape.read(p.SerializeToString()) is None
True
"""

from __future__ import annotations

import re
import struct
from typing import Callable, Mapping, Protocol

from appliance.connections.sparkplug.metrics import twos_complement


class MetricDef(Protocol):
    """What a shape needs of a birth's metric (``host.MetricDef``)."""

    name: str
    field: str | None
    bits: int
    known: bool | None

MAX_METRICS = 64  # a larger DATA message is read by protobuf: the expression stays small
_MAX_VARINT = 10  # a 64-bit value; its tenth byte holds one bit, anything more is left to protobuf
_TOP_VARINT = rb"([\x80-\xff]{0,8}[\x00-\x7f])"  # the payload's timestamp and seq: any width up to 9 bytes
_TS, _METRICS, _SEQ = 1, 2, 3
_ALIAS, _MTS, _DATATYPE = 2, 3, 4
_VARINT_WT, _FIXED64_WT, _LEN_WT, _FIXED32_WT = 0, 1, 2, 5
# value field number -> (wire type, its name in the schema, width in bytes for fixed ones)
_VALUE_FIELDS = {10: (_VARINT_WT, "int_value"), 11: (_VARINT_WT, "long_value"), 12: (_FIXED32_WT, "float_value"),
                 13: (_FIXED64_WT, "double_value"), 14: (_VARINT_WT, "boolean_value")}
_DOUBLE_FIELD = 13
_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1
# A metric's place in a shape: its def, the group of its value, how that becomes a number, the group of
# its timestamp (0: none), and its value's field number.
_Slot = tuple[MetricDef, int, Callable[[bytes], float], int, int]
# What a message's metric gives the host: (def, value, timestamp ms or None, historical, quality code or None).
Item = tuple[MetricDef, float, "int | None", bool, "int | None"]
_FLOAT = struct.Struct("<f").unpack
_DOUBLE = struct.Struct("<d").unpack


def varint(b: bytes) -> int:
    """The value of a protobuf varint (its bytes, least significant group first).

    >>> varint(b"\\x96\\x01"), varint(b"\\x07")
    (150, 7)
    """
    if len(b) == 1:
        return b[0]
    v = 0
    for i, c in enumerate(b):
        v |= (c & 0x7F) << (7 * i)
    return v


def _read_varint(buf: bytes, i: int) -> tuple[int, int] | None:
    """(value, index after it) of the varint at ``i``, or None if it is cut short or past 64 bits."""
    for k in range(_MAX_VARINT):
        if i + k >= len(buf):
            return None
        if buf[i + k] < 0x80:
            if k == _MAX_VARINT - 1 and buf[i + k] > 1:
                return None
            return varint(buf[i:i + k + 1]), i + k + 1
    return None


def fields(buf: bytes) -> list[tuple[int, int, bytes, bytes]] | None:
    """Each field of a protobuf message: (number, wire type, its tag [and length] bytes, its value bytes),
    in order; None for a message this module does not read (groups, cut short, varints past 9 bytes).

    >>> fields(b"\\x08\\x96\\x01\\x12\\x02\\x10\\x03")
    [(1, 0, b'\\x08', b'\\x96\\x01'), (2, 2, b'\\x12\\x02', b'\\x10\\x03')]
    """
    out = []
    i, n = 0, len(buf)
    while i < n:
        tag = _read_varint(buf, i)
        if tag is None:
            return None
        number, wire = tag[0] >> 3, tag[0] & 7
        j = tag[1]
        if wire == _VARINT_WT:
            v = _read_varint(buf, j)
            if v is None:
                return None
            head, end = buf[i:j], v[1]
        elif wire in (_FIXED64_WT, _FIXED32_WT):
            head, end = buf[i:j], j + (8 if wire == _FIXED64_WT else 4)
        elif wire == _LEN_WT:
            length = _read_varint(buf, j)
            if length is None:
                return None
            head, j, end = buf[i:length[1]], length[1], length[1] + length[0]
        else:
            return None
        if end > n:
            return None
        out.append((number, wire, head, buf[j:end]))
        i = end
    return out


def _decoder(number: int, d: MetricDef) -> Callable[[bytes], float]:
    """How a captured value becomes the reading's number: as protobuf reads the field (a uint32 keeps its
    low 32 bits, a bool is any non-zero), then as the host converts it (``d.bits``)."""
    bits = d.bits
    if number == _DOUBLE_FIELD:
        return lambda b: _DOUBLE(b)[0]
    if number == 12:
        return lambda b: _FLOAT(b)[0]
    if number == 14:
        return lambda b: 1.0 if varint(b) else 0.0
    mask = _U32 if number == 10 else _U64
    if bits > 0:
        return lambda b: float(twos_complement(varint(b) & mask, bits))
    return lambda b: float(varint(b) & mask)


class DataShape:
    """One DATA layout: the expression that matches it whole and, per metric, where its parts are."""

    __slots__ = ("_match", "_ts", "_seq", "_slots", "_doubles")

    def __init__(self, pattern: bytes, ts: int, seq: int, slots: list[_Slot]):
        self._match = re.compile(pattern, re.DOTALL).fullmatch
        self._ts, self._seq = ts, seq  # capture group index of each (0: absent)
        self._slots = tuple((d, vg, decode, tg) for d, vg, decode, tg, _ in slots)
        # Every metric a double without a timestamp of its own (the common DDATA): one unpack for all values.
        self._doubles = None
        if all(number == _DOUBLE_FIELD and not tg for _, _, _, tg, number in slots):
            self._doubles = (struct.Struct(f"<{len(slots)}d").unpack, tuple(s[0] for s in slots),
                             tuple(s[1] for s in slots))

    @classmethod
    def learn(cls, payload: bytes, by_alias: Mapping[int, MetricDef]) -> DataShape | None:
        """The shape of ``payload`` (a DATA message already read the ordinary way), or None if some part
        of it is not one the common path reads (see the module doc)."""
        top = fields(payload)
        if top is None:
            return None
        parts: list[bytes] = []
        slots: list[_Slot] = []
        group = 0
        seen: set[int] = set()
        ts = seq = 0
        for number, wire, head, body in top:
            if number == _METRICS and wire == _LEN_WT:
                metric = _metric_pattern(body, by_alias, group)
                if metric is None or len(slots) >= MAX_METRICS:
                    return None
                pattern, slot, used = metric
                parts.append(re.escape(head) + pattern)
                slots.append(slot)
                group += used
            elif number in (_TS, _SEQ) and wire == _VARINT_WT and number not in seen:
                seen.add(number)
                group += 1
                parts.append(re.escape(head) + _TOP_VARINT)
                if number == _TS:
                    ts = group
                else:
                    seq = group
            else:
                return None  # uuid, body, extensions, a repeated field: protobuf's to read
        if not slots:
            return None
        return cls(b"".join(parts), ts, seq, slots)

    def read(self, payload: bytes) -> tuple[int | None, int | None, list[Item]] | None:
        """``(timestamp ms, seq, items)`` of a message of this layout, an item ``(metric, value, its
        timestamp ms or None, historical, quality code)`` per metric (never historical, no quality
        property: such metrics are not in a shape); None if ``payload`` is not one."""
        m = self._match(payload)
        if m is None:
            return None
        g = m.groups()
        ts = varint(g[self._ts - 1]) if self._ts else None
        seq = varint(g[self._seq - 1]) if self._seq else None
        doubles = self._doubles
        if doubles is not None:
            unpack, defs, where = doubles
            values = unpack(b"".join([g[i - 1] for i in where]))
            return ts, seq, [(d, v, None, False, None) for d, v in zip(defs, values)]
        return ts, seq, [(d, decode(g[vi - 1]), varint(g[ti - 1]) if ti else None, False, None)
                         for d, vi, decode, ti in self._slots]


def _metric_pattern(body: bytes, by_alias: Mapping[int, MetricDef], group: int) -> tuple[bytes, _Slot, int] | None:
    """A metric's part of the expression, its slot and how many groups it captures; None unless it is an
    alias the birth declared for a known sensor, with its value in the datatype's field and nothing else
    but a datatype and a timestamp."""
    parts = fields(body)
    if parts is None or len({p[0] for p in parts}) != len(parts):
        return None  # a field twice: protobuf's last-one-wins is protobuf's to apply
    out: list[bytes] = []
    alias = value_number = None
    value_group = ts_group = 0
    used = 0
    for number, wire, head, raw in parts:
        if number == _ALIAS and wire == _VARINT_WT:
            alias = varint(raw)
            out.append(re.escape(head + raw))
        elif number == _DATATYPE and wire == _VARINT_WT:
            out.append(re.escape(head + raw))  # the birth's datatype rules, as on the common path
        elif number == _MTS and wire == _VARINT_WT:
            used += 1
            ts_group = group + used
            out.append(re.escape(head) + _fixed_varint(len(raw)))
        elif number in _VALUE_FIELDS and wire == _VALUE_FIELDS[number][0] and value_number is None:
            value_number = number
            used += 1
            value_group = group + used
            out.append(re.escape(head) + (_fixed_varint(len(raw)) if wire == _VARINT_WT else b"(.{%d})" % len(raw)))
        else:
            return None
    d = by_alias.get(alias) if alias is not None else None
    if d is None or value_number is None or d.known is not True or d.field != _VALUE_FIELDS[value_number][1]:
        return None
    return b"".join(out), (d, value_group, _decoder(value_number, d), ts_group, value_number), used


def _fixed_varint(width: int) -> bytes:
    """A varint of exactly ``width`` bytes, captured: a metric's length prefix stays true."""
    last = rb"[\x00-\x01]" if width == _MAX_VARINT else rb"[\x00-\x7f]"
    return rb"([\x80-\xff]{%d}%s)" % (width - 1, last)
