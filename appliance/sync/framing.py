"""The uplink's batches on the wire: :func:`frame` packs queued items, :func:`unframe` reads them back.

Wire format of a batch::

    b"AEU2" then zlib of, per item:  u16 key length | key (UTF-8) | u32 length | JSON
    (or b"AEU1" then, per item:  u16 key length | key | u32 body length | body, each body zlib JSON)

big-endian; the JSON documents are described in :mod:`appliance.sync.episodes`.
The cloud intake (``firmware-sim/cloud_intake.py``) reads both.
"""

from __future__ import annotations

import struct
import zlib
from typing import Sequence

from appliance.sync.episodes import ZLIB_LEVEL
from appliance.sync.queue import Item, Queued

MAGIC = b"AEU1"        # items compressed one by one
MAGIC_JOINT = b"AEU2"  # the batch compressed as one stream


def _records(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"".join((struct.pack(">H", len(k)), k, struct.pack(">I", len(b)), b)) for k, b in pairs)


def frame(batch: Sequence[Queued | Item], room: int | None = None) -> bytes:
    """One batch on the wire, as small as it gets within ``room`` bytes.

    ``AEU2``: the items' JSON, length-prefixed, compressed as one stream, so what
    items share (sensor names, keys, the shape of a column) is paid for once: a
    quarter less than compressing each on its own. ``AEU1``: each item's own
    compressed body as queued; never larger than the sizes the queue packed the
    batch by, so it is the fallback when the joint stream does not fit ``room``.

    >>> from appliance.sync.episodes import compress
    >>> items = [Item(f"e:{i}", 1, "readings", "e", compress({"id": f"e:{i}", "v": [1, 2, 3]})) for i in range(3)]
    >>> [k for k, _ in unframe(frame(items))] == ["e:0", "e:1", "e:2"]
    True
    >>> frame(items)[:4], frame(items, room=10)[:4]
    (b'AEU2', b'AEU1')
    """
    joint = MAGIC_JOINT + zlib.compress(_records([(q.key.encode(), zlib.decompress(q.body)) for q in batch]),
                                        ZLIB_LEVEL)
    if room is None or len(joint) <= room:
        return joint
    return MAGIC + _records([(q.key.encode(), q.body) for q in batch])


def _split_records(payload: bytes, start: int) -> list[tuple[str, bytes]]:
    out, i = [], start
    while i < len(payload):
        if i + 2 > len(payload):
            raise ValueError("truncated batch")
        (klen,) = struct.unpack_from(">H", payload, i)
        key = payload[i + 2:i + 2 + klen].decode()
        i += 2 + klen
        if i + 4 > len(payload):
            raise ValueError("truncated batch")
        (blen,) = struct.unpack_from(">I", payload, i)
        body = payload[i + 4:i + 4 + blen]
        if len(body) != blen:
            raise ValueError("truncated batch")
        out.append((key, body))
        i += 4 + blen
    return out


def unframe(payload: bytes) -> list[tuple[str, bytes]]:
    """The (key, compressed body) pairs of a batch; ValueError if it is not one."""
    if payload[:4] == MAGIC:
        return _split_records(payload, 4)
    if payload[:4] == MAGIC_JOINT:
        try:
            records = zlib.decompress(payload[4:])
        except zlib.error as e:
            raise ValueError(f"damaged batch: {e}") from None
        return [(k, zlib.compress(body)) for k, body in _split_records(records, 0)]
    raise ValueError("not an uplink batch (bad magic)")
