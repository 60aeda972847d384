"""Sparkplug B metric values: datatypes, which of them are numbers, and a metric's quality.

A reading is a number. The numeric datatypes (integers of every width, floats,
doubles, booleans, and DateTime as milliseconds) give one; strings, text, UUIDs,
bytes, files, data sets, templates, property sets and arrays do not, and
:func:`numeric_value` answers ``None`` for them so the caller counts them instead
of refusing the message.

>>> from appliance.connections.sparkplug.schema import Metric
>>> numeric_value(Metric(datatype=DataType.Int16, int_value=0xFFFFFFFE))   # two's complement in a uint32
-2.0
>>> numeric_value(Metric(datatype=DataType.Boolean, boolean_value=True))
1.0
>>> numeric_value(Metric(datatype=DataType.String, string_value="run")) is None
True
>>> quality_of(Metric(datatype=DataType.Double, double_value=1.0)), QUALITY_BAD
(192, 0)
"""

from __future__ import annotations

import enum
import math

GOOD_QUALITY = 192   # the "Quality" property's value for good data (OPC DA codes, used by Ignition and Tahu)
QUALITY_BAD = 0
QUALITY_STALE = 500


class DataType(enum.IntEnum):
    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21


_SIGNED_BITS = {DataType.Int8: 8, DataType.Int16: 16, DataType.Int32: 32, DataType.Int64: 64}
NUMERIC = frozenset({*_SIGNED_BITS, DataType.UInt8, DataType.UInt16, DataType.UInt32, DataType.UInt64,
                     DataType.Float, DataType.Double, DataType.Boolean, DataType.DateTime})


def numeric_value(metric) -> float | None:
    """The metric's value as a float, or ``None`` if its datatype is not a number or it carries no value.

    A null metric (``is_null``) is a number that is missing: ``nan``.
    """
    return value_as(metric, metric.datatype)


# Signed widths by datatype number, for the hot path (no enum construction per metric).
_SIGNED_BY_NUMBER = {int(k): v for k, v in _SIGNED_BITS.items()}
_NUMERIC_NUMBERS = frozenset(int(k) for k in NUMERIC)


def value_as(metric, datatype: int) -> float | None:
    """:func:`numeric_value` with the datatype given: a DATA metric may leave it out, its birth declared it.

    >>> from appliance.connections.sparkplug.schema import Metric
    >>> value_as(Metric(alias=4, long_value=2**64 - 5), DataType.Int64), value_as(Metric(alias=4), DataType.Float)
    (-5.0, None)
    """
    if datatype not in _NUMERIC_NUMBERS:
        return None
    field = metric.WhichOneof("value")
    if field is None:
        return math.nan if metric.is_null else None
    if metric.is_null:
        return math.nan
    raw = getattr(metric, field)
    if field in ("int_value", "long_value"):
        bits = _SIGNED_BY_NUMBER.get(datatype)
        if bits is not None:
            return float(_signed(raw, bits))
    return float(raw)


# The value field each numeric datatype travels in (the specification's table, and Tahu's encoders).
VALUE_FIELD: dict[int, str] = {
    **{int(t): "int_value" for t in (DataType.Int8, DataType.Int16, DataType.Int32, DataType.UInt8, DataType.UInt16,
                                     DataType.UInt32)},
    **{int(t): "long_value" for t in (DataType.Int64, DataType.UInt64, DataType.DateTime)},
    int(DataType.Float): "float_value", int(DataType.Double): "double_value", int(DataType.Boolean): "boolean_value",
}


def signed_bits(datatype: int) -> int:
    """How a raw value of ``datatype`` becomes a number: its signed width (8..64), 0 for an unsigned or
    boolean one (``float(raw)``), -1 for a float or double (the raw value is one already)."""
    if datatype in (DataType.Float, DataType.Double):
        return -1
    return _SIGNED_BITS.get(datatype, 0)  # type: ignore[call-overload]


def twos_complement(raw: int, bits: int) -> int:
    """A signed integer of ``bits`` from the unsigned field it travels in (see :func:`_signed`).

    >>> twos_complement(0xFFFFFFFE, 16), twos_complement(2**64 - 1, 64)
    (-2, -1)
    """
    return _signed(raw, bits)


def _signed(raw: int, bits: int) -> int:
    """A negative Int8/16/32 travels in the uint32 field as its 32-bit two's complement, an Int64 in the
    uint64 field as its 64-bit one (the specification, and Tahu's encoders)."""
    width = 32 if bits <= 32 else 64
    raw &= (1 << width) - 1
    return raw - (1 << width) if raw >= 1 << (width - 1) else raw


def quality_of(metric) -> int:
    """The metric's ``Quality`` property (192 good, 0 bad, 500 stale); good when the metric has none."""
    if not metric.HasField("properties"):
        return GOOD_QUALITY
    props = metric.properties
    for key, value in zip(props.keys, props.values):
        if key.lower() == "quality" and value.WhichOneof("value") in ("int_value", "long_value"):
            return _signed(getattr(value, value.WhichOneof("value")), 32)
    return GOOD_QUALITY
