"""Compressed Sparkplug B payloads: the body inflated, within a bound chosen by the reader.

An edge node may send a payload whose ``uuid`` is ``SPBV1.0_COMPRESSED``: its
``body`` is another payload, serialized and compressed, and its one metric
``algorithm`` says how (``DEFLATE``: zlib's format, as Eclipse Tahu's Java and
JavaScript encoders write it; ``GZIP``). The edge node chose the body's size and
could have chosen a small body that inflates to gigabytes, so the reader gives
the most bytes it accepts and inflating stops there (a decompression bomb costs
that many bytes of memory and no more).

>>> import gzip, zlib
>>> from appliance.connections.sparkplug.schema import Payload
>>> inner = Payload(seq=4)
>>> _ = inner.metrics.add(name="t", alias=1, datatype=10, double_value=20.5)
>>> outer = compressed(inner.SerializeToString(), "GZIP")
>>> Payload.FromString(inflate(outer, limit=1000)).metrics[0].double_value
20.5
>>> try:
...     inflate(compressed(b"x" * 5000, "DEFLATE"), limit=1000)
... except CompressionError as e:
...     print(e, e.too_large)
the compressed body inflates past 1000 bytes True
"""

from __future__ import annotations

import gzip
import zlib

COMPRESSED_UUID = "SPBV1.0_COMPRESSED"
ALGORITHMS = ("DEFLATE", "GZIP")
_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS  # either header, detected
_RAW = -zlib.MAX_WBITS  # a DEFLATE stream without the zlib header (some encoders write that)


class CompressionError(ValueError):
    """A compressed payload that cannot be read: unknown algorithm, corrupt body, or inflating too far."""

    def __init__(self, why: str, too_large: bool = False):
        super().__init__(why)
        self.too_large = too_large


def algorithm(p) -> str | None:
    """The ``algorithm`` metric's value, upper-cased (None when absent: DEFLATE, the specification's default)."""
    for m in p.metrics:
        if m.name == "algorithm" and m.WhichOneof("value") == "string_value":
            return m.string_value.upper()
    return None


def inflate(p, limit: int) -> bytes:
    """The serialized payload a compressed payload ``p`` carries in its body, at most ``limit`` bytes."""
    algo = algorithm(p) or "DEFLATE"
    if algo not in ALGORITHMS:
        raise CompressionError(f"compression algorithm {algo[:40]!r} is not one of {', '.join(ALGORITHMS)}")
    body = p.body
    try:
        return _inflate(body, _ZLIB_OR_GZIP, limit)
    except zlib.error as e:
        if algo == "GZIP":
            raise CompressionError(f"the GZIP body does not inflate: {e}") from None
    try:
        return _inflate(body, _RAW, limit)
    except zlib.error as e:
        raise CompressionError(f"the DEFLATE body does not inflate: {e}") from None


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)  # never more than one byte past the bound
    if len(out) > limit:
        raise CompressionError(f"the compressed body inflates past {limit} bytes", too_large=True)
    if not d.eof:
        raise zlib.error("the compressed stream is cut short")
    return out


def compressed(serialized: bytes, algo: str = "DEFLATE"):
    """A compressed payload carrying ``serialized`` (for tests and simulators: the format Tahu writes)."""
    from appliance.connections.sparkplug.metrics import DataType
    from appliance.connections.sparkplug.schema import Payload

    body = gzip.compress(serialized) if algo == "GZIP" else zlib.compress(serialized)
    p = Payload(uuid=COMPRESSED_UUID, body=body)
    p.metrics.add(name="algorithm", datatype=DataType.String, string_value=algo)
    return p
