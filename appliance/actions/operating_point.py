"""\"Operating point not seen in training\": a status of its own, raised once and held, not an alarm flood.

A model trained at commissioning on one operating point scores every window of
another far over its threshold (SKAB's next run: 95 % of normal rows in alarm,
``benchmarks/skab_next_run.py``). Telling an operator "anomaly" on every window
there is wrong twice: it is not a fault, and it teaches the operator to ignore the
alarm. What the operator needs is one message: *the model does not know this
operating point; if it is the new normal, re-commission*.

One :class:`OperatingPointWatch` follows one asset's scores (``Score.unseen``: the
sensors whose window level lies outside the bundle's training envelope, see
:mod:`appliance.detector.envelope`). It **enters** the status when ``enter_k`` of
the last ``enter_n`` windows are unseen and **leaves** it after ``leave_n``
consecutive windows inside the envelope, so a level that hovers at the edge does
not chatter: each episode is one ``entered`` and one ``left``
(:class:`~appliance.core.OperatingPointChange`), stored and counted per day.

While the status is on, a new anomaly alarm is *held* (:attr:`OperatingPointWatch.holds`):
a window over the threshold there says "new operating point" more than "fault".
An alarm already raised before the point became unseen is not touched: it clears
by its own hysteresis. The held windows are counted on the episode.

>>> from appliance.core import Score
>>> w = OperatingPointWatch(enter_k=2, enter_n=3, leave_n=2)
>>> s = lambda t, unseen: Score("p1", t, 5.0, 1.0, {"a": 1.0}, unseen=unseen)
>>> [c.event if c else None for c in (w.update(s(t, u)) for t, u in enumerate(
...     [("a",), (), ("a",), ("a",), (), ("a",), (), ()]))]
[None, None, 'entered', None, None, None, None, 'left']
"""

from __future__ import annotations

from collections import deque

from appliance.core import OperatingPointChange, Score


class OperatingPointWatch:
    """The status of one asset's operating point, with hysteresis to enter and to leave."""

    def __init__(self, enter_k: int = 3, enter_n: int = 5, leave_n: int = 30):
        if not 1 <= enter_k <= enter_n:
            raise ValueError(f"need 1 <= enter_k <= enter_n, got {enter_k}, {enter_n}")
        if leave_n < 1:
            raise ValueError(f"leave_n must be >= 1, got {leave_n}")
        self.enter_k, self.enter_n, self.leave_n = enter_k, enter_n, leave_n
        self._recent: deque[bool] = deque(maxlen=enter_n)
        self._inside = 0
        self.since: float | None = None
        self.sensors: set[str] = set()
        self.held = 0

    @classmethod
    def from_config(cls, cfg) -> "OperatingPointWatch":
        return cls(cfg.unseen_enter_k, cfg.unseen_enter_n, cfg.unseen_leave_n)

    @property
    def active(self) -> bool:
        return self.since is not None

    def update(self, score: Score) -> OperatingPointChange | None:
        """Take the next window's score; return the change of status, if any."""
        unseen = bool(score.unseen)
        self._recent.append(unseen)
        if not self.active:
            if sum(self._recent) >= self.enter_k:
                self.since, self.sensors, self.held, self._inside = score.t_end, set(score.unseen), 0, 0
                return OperatingPointChange(score.asset, "entered", score.t_end, score.t_end, tuple(score.unseen),
                                            score.model_version)
            return None
        self.sensors |= set(score.unseen)
        self._inside = 0 if unseen else self._inside + 1
        if self._inside < self.leave_n:
            return None
        change = OperatingPointChange(score.asset, "left", score.t_end, self.since, tuple(sorted(self.sensors)),
                                      score.model_version, self.held)
        self.since, self.sensors = None, set()
        self._recent.clear()
        return change

    def holds(self, score: Score) -> bool:
        """True if an anomaly this window would raise is held (counted, not raised): the status is on."""
        if self.active and score.ratio >= 1.0:
            self.held += 1
        return self.active


class OperatingPoints:
    """One :class:`OperatingPointWatch` per asset; ``enabled=False`` never enters the status."""

    def __init__(self, cfg, enabled: bool = True):
        self._cfg = cfg
        self.enabled = enabled
        self._watches: dict[str, OperatingPointWatch] = {}

    def update(self, score: Score) -> OperatingPointChange | None:
        if not self.enabled:
            return None
        w = self._watches.get(score.asset)
        if w is None:
            w = self._watches[score.asset] = OperatingPointWatch.from_config(self._cfg)
        return w.update(score)

    def holds(self, score: Score) -> bool:
        w = self._watches.get(score.asset)
        return w is not None and w.holds(score)

    def forget(self, asset: str) -> None:
        self._watches.pop(asset, None)

    def status(self) -> dict:
        """The assets in the status now: since when, which sensors, how many anomaly windows held."""
        return {a: {"since": w.since, "sensors": sorted(w.sensors), "held_windows": w.held}
                for a, w in self._watches.items() if w.active}
