"""The birth/death sequence number (``bdSeq``), kept across restarts.

Each MQTT session of the edge node registers its NDEATH as the will, carrying the
``bdSeq`` of the NBIRTH that session will publish; a host pairs the two by it. A new
session takes the next number (0-255, wrapping), also after a restart: the number
in use is written (atomically: a temporary file renamed over the old) before the
session that uses it connects, so a crash can never make two sessions share one.

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "bdseq.json"
>>> BdSeqFile(f).take_next(), BdSeqFile(f).take_next()
(0, 1)
>>> _ = f.write_text('{"bdseq": 255}'); BdSeqFile(f).take_next()
0
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from appliance.core.durable import fsync_dir

log = logging.getLogger(__name__)


class BdSeqFile:
    def __init__(self, path: Path):
        self.path = Path(path)

    def last(self) -> int | None:
        """The bdSeq of the last session, or None (no file yet, or one that cannot be read: logged)."""
        try:
            value = json.loads(self.path.read_text())["bdseq"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("sparkplug: bdSeq file unreadable path=%s error=%s; starting again from 0", self.path, e)
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            log.warning("sparkplug: bdSeq file holds %r, not 0-255 path=%s; starting again from 0", value, self.path)
            return None
        return value

    def take_next(self) -> int:
        """The bdSeq for a new session, written before it is used."""
        last = self.last()
        value = 0 if last is None else (last + 1) % 256
        self.write(value)
        return value

    def write(self, value: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"bdseq": value}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
