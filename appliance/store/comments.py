"""Alarm comments: a technician's notes on one alarm occurrence, kept in the store beside its transitions.

A comment is part of the alarm's journal (what was found, what was done), so it
lives with the alarm in the store, the gateway's source of truth, and not in the
dashboard's accounts file. It is written by the store's writer thread like every
other record (the dashboard sends it as the ``add_comment`` command of the store
output) and read back through :meth:`~appliance.store.store.StoreReader.alarm_comments`.

>>> c = AlarmComment.new("a1b2", "pump1", "ana", "  greased the bearing ", ts=5.0)
>>> c.text, c.to_dict()["user"]
('greased the bearing', 'ana')
>>> AlarmComment.new("a1b2", "pump1", "ana", "   ")
Traceback (most recent call last):
...
appliance.store.comments.CommentError: a comment has 1 to 1000 characters
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX_COMMENT = 1000  # characters, after surrounding white space is taken off


class CommentError(ValueError):
    """A comment refused before it reaches the store (empty, too long, no author or alarm)."""


@dataclass(frozen=True)
class AlarmComment:
    alarm_id: str
    asset: str
    ts: float
    user: str
    text: str

    @classmethod
    def new(cls, alarm_id: str, asset: str, user: str, text: str, ts: float | None = None) -> "AlarmComment":
        """A checked comment by ``user`` on ``alarm_id``, dated now unless ``ts`` is given."""
        text = text.strip() if isinstance(text, str) else ""
        if not text or len(text) > MAX_COMMENT:
            raise CommentError(f"a comment has 1 to {MAX_COMMENT} characters")
        if not alarm_id or not user:
            raise CommentError("a comment needs its alarm and its author")
        return cls(alarm_id, asset or "", time.time() if ts is None else float(ts), user, text)

    def to_dict(self) -> dict:
        return {"ts": self.ts, "alarm_id": self.alarm_id, "asset": self.asset, "user": self.user, "text": self.text}
