"""Retained messages already refused: their dead letters are kept once, not once per connection.

The broker sends every retained message again on each new subscription, so on
every restart (and reconnect) of the appliance a retained message that was
refused the first time would be refused again: 20,000 retained topics added
19,000 dead-letter rows at each restart. A refusal of a retained message is
recorded by a key of its topic and payload (8 bytes of their SHA-256); a
retained message with the same key is still acknowledged, and its readings (if
any) still go to the store, which keeps them once, but its dead letters are
not kept again. A new payload on the topic is a new key, refused once in turn.

The keys live in a small append-only file beside the store (``data_dir``), at
most ``MAX_KEYS`` of them, the oldest forgotten first; written without
``fsync`` (a power cut forgets the last few, whose refusals are then kept once
more).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

log = logging.getLogger(__name__)

MAX_KEYS = 50_000  # ~4 MB of memory at most; far beyond the retained topics of one plant broker
_KEY = struct.Struct("<Q")


def refusal_key(topic: bytes, payload: bytes, oversize: int = 0) -> int:
    """The key of a retained message: its raw topic and payload (a message refused unread: its length)."""
    h = hashlib.sha256(struct.pack("<HQ", len(topic), oversize) + topic)
    h.update(payload)
    return _KEY.unpack(h.digest()[:8])[0]


class RetainedRefusals:
    """The keys of retained messages refused before, kept in ``path`` (None: in memory only)."""

    def __init__(self, path: Path | None, max_keys: int = MAX_KEYS):
        self.path = path
        self.max_keys = max_keys
        self._keys: dict[int, None] = {}  # insertion-ordered: the oldest first
        self._pending: list[int] = []
        self._on_disk = 0  # keys in the file, repeats and forgotten ones included
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        return len(self._keys)

    def first_time(self, key: int) -> bool:
        """True (and remembered) if no retained message with this key was refused before."""
        if key in self._keys:
            return False
        self._keys[key] = None
        self._pending.append(key)
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]
        return True

    def save(self) -> None:
        """Append the keys remembered since the last save (called after each burst read)."""
        if not self._pending or self.path is None:
            self._pending.clear()
            return
        pending, self._pending = self._pending, []
        try:
            if self._on_disk + len(pending) > 2 * self.max_keys:
                self._rewrite()
            else:
                with open(self.path, "ab") as f:
                    f.write(b"".join(_KEY.pack(k) for k in pending))
                self._on_disk += len(pending)
        except OSError as exc:  # the refusals are then kept again after a restart: noisy, not wrong
            log.warning("mqtt: cannot record refused retained messages in %s: %s", self.path, exc)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_bytes(b"".join(_KEY.pack(k) for k in self._keys))
        tmp.replace(self.path)
        self._on_disk = len(self._keys)

    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("mqtt: cannot read refused retained messages from %s: %s", path, exc)
            return
        usable = len(data) - len(data) % _KEY.size  # a torn last write is dropped
        for (key,) in _KEY.iter_unpack(data[:usable]):
            self._keys.pop(key, None)
            self._keys[key] = None
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]
        self._on_disk = usable // _KEY.size
