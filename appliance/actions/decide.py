"""From scores to decisions: level, debounce to raise, hysteresis to clear.

One :class:`Decider` follows one stream of scores (one asset). A single window
over the threshold does not raise: ``raise_k`` of the last ``raise_n`` windows
must be. Once raised, the alarm clears only after ``clear_n`` consecutive
windows below ``clear_ratio * threshold``, so a score hovering at the threshold
does not chatter. The level only escalates while an alarm is active (anomaly ->
critical); it is reset when the alarm clears.

>>> d = Decider(raise_k=2, raise_n=3, clear_n=2, clear_ratio=0.8, critical_ratio=2.0)
>>> changes = [d.update_ratio(r).change for r in (1.2, 0.5, 1.1, 3.0, 0.9, 0.7, 0.7)]
>>> [c.name if c else None for c in changes]
[None, None, 'RAISED', 'ESCALATED', None, None, 'CLEARED']
>>> changes[2] is EventKind.RAISED
True
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from appliance.core import EventKind, Level, Score


@dataclass(frozen=True, slots=True)
class Decision:
    level: Level
    active: bool
    change: EventKind | None  # RAISED, ESCALATED, CLEARED, or None when nothing changed


class Decider:
    def __init__(self, raise_k: int = 3, raise_n: int = 5, clear_n: int = 5,
                 clear_ratio: float = 0.8, critical_ratio: float = 2.0):
        if not 1 <= raise_k <= raise_n:
            raise ValueError(f"need 1 <= raise_k <= raise_n, got {raise_k}, {raise_n}")
        if clear_n < 1:
            raise ValueError(f"clear_n must be >= 1, got {clear_n}")
        if not 0 < clear_ratio <= 1:
            raise ValueError(f"clear_ratio must be in (0, 1], got {clear_ratio}")
        if critical_ratio <= 1:
            raise ValueError(f"critical_ratio must be > 1, got {critical_ratio}")
        self.raise_k, self.raise_n, self.clear_n = raise_k, raise_n, clear_n
        self.clear_ratio, self.critical_ratio = clear_ratio, critical_ratio
        self._over: deque[bool] = deque(maxlen=raise_n)
        self._below = 0
        self.active = False
        self.level = Level.NORMAL

    @classmethod
    def from_config(cls, cfg) -> "Decider":
        return cls(cfg.raise_k, cfg.raise_n, cfg.clear_n, cfg.clear_ratio, cfg.critical_ratio)

    def level_of(self, ratio: float) -> Level:
        if ratio >= self.critical_ratio:
            return Level.CRITICAL
        return Level.ANOMALY if ratio >= 1.0 else Level.NORMAL

    def update(self, score: Score) -> Decision:
        return self.update_ratio(score.ratio)

    def update_ratio(self, ratio: float) -> Decision:
        """Take the score of the next window as ``value / threshold``."""
        level_now = self.level_of(ratio)
        self._over.append(level_now >= Level.ANOMALY)
        change = None
        if not self.active:
            if sum(self._over) >= self.raise_k:
                self.active, change = True, EventKind.RAISED
                self.level = max(level_now, Level.ANOMALY)
                self._below = 0
        else:
            self._below = self._below + 1 if ratio < self.clear_ratio else 0
            if self._below >= self.clear_n:
                self.active, change = False, EventKind.CLEARED
                self.level = Level.NORMAL
                self._over.clear()
            elif level_now > self.level:
                self.level, change = level_now, EventKind.ESCALATED
        return Decision(self.level, self.active, change)
