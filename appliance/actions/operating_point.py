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

While the status is on, the alarm threshold follows the episode's own score
level (:meth:`OperatingPointWatch.alarm_score`): a window is judged against
``rise`` times the median score ratio of the episode's last ``leave_n`` windows
(never below the bundle's threshold). The score level the new operating point
explains (the model is far off everywhere, steadily) raises nothing; a fault on
top of it, a score that rises fast to ``rise`` times that level, is still raised
as an anomaly. The threshold follows only in an episode the model was already
off for before the level left the envelope, or that the data starts in (a
commissioned model started at a point it never saw): the median ratio of the
entering windows at 1 or more, and that of the windows before them (when there
are any) too. Otherwise the episode keeps the bundle's own threshold for its
whole length: a level that leaves the envelope *together* with a jump of the
score is a sudden move, which may be a fault (a step), and is raised as an
anomaly as before; one that leaves while the model still scores normally is a
point the model copes with, and a fault that follows is judged as without the status. What is given up: a fault that grows as slowly as the
median follows, while the point is unseen. The windows over the bundle's threshold
not raised are counted on the episode (``held_windows``).

>>> from appliance.core import Score
>>> w = OperatingPointWatch(enter_k=2, enter_n=3, leave_n=2)
>>> s = lambda t, unseen: Score("p1", t, 5.0, 1.0, {"a": 1.0}, unseen=unseen)
>>> [c.event if c else None for c in (w.update(s(t, u)) for t, u in enumerate(
...     [("a",), (), ("a",), ("a",), (), ("a",), (), ()]))]
[None, None, 'entered', None, None, None, None, 'left']
>>> w = OperatingPointWatch(enter_k=1, enter_n=1, leave_n=3, rise=2.0)
>>> judged = []
>>> for t, value in enumerate([5.0, 6.0, 5.0, 30.0]):  # a steady 5-6x, then a fault on top
...     score = Score("p1", t, value, 1.0, {}, unseen=("a",))
...     _ = w.update(score)
...     judged.append(round(w.alarm_score(score).ratio, 2))
>>> judged  # ratios against the threshold in force: under 1 while steady, over 1 for the fault
[0.5, 0.6, 0.5, 3.0]
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import replace

from appliance.core import OperatingPointChange, Score


class OperatingPointWatch:
    """The status of one asset's operating point, with hysteresis to enter and to leave."""

    def __init__(self, enter_k: int = 3, enter_n: int = 5, leave_n: int = 30, rise: float = 2.0):
        if not 1 <= enter_k <= enter_n:
            raise ValueError(f"need 1 <= enter_k <= enter_n, got {enter_k}, {enter_n}")
        if leave_n < 1:
            raise ValueError(f"leave_n must be >= 1, got {leave_n}")
        if rise <= 1:
            raise ValueError(f"rise must be > 1, got {rise}")
        self.enter_k, self.enter_n, self.leave_n, self.rise = enter_k, enter_n, leave_n, rise
        self._recent: deque[bool] = deque(maxlen=enter_n)
        # Score ratios of the last windows: the entering ones, then the episode's (its running level).
        self._ratios: deque[float] = deque(maxlen=max(enter_n, leave_n))
        self._inside = 0
        self.since: float | None = None
        self.sensors: set[str] = set()
        self.held = 0
        self.follows = False  # whether this episode's threshold follows its score level (see the module doc)

    @classmethod
    def from_config(cls, cfg) -> "OperatingPointWatch":
        return cls(cfg.unseen_enter_k, cfg.unseen_enter_n, cfg.unseen_leave_n, cfg.unseen_rise)

    @property
    def active(self) -> bool:
        return self.since is not None

    def update(self, score: Score) -> OperatingPointChange | None:
        """Take the next window's score; return the change of status, if any."""
        unseen = bool(score.unseen)
        self._recent.append(unseen)
        if not self.active:
            self._ratios.append(score.ratio)
            if sum(self._recent) >= self.enter_k:
                self.since, self.sensors, self.held, self._inside = score.t_end, set(score.unseen), 0, 0
                seen = list(self._ratios)
                entering, before = seen[-self.enter_n:], seen[:-self.enter_n]
                self.follows = statistics.median(entering) >= 1.0 and (not before or statistics.median(before) >= 1.0)
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

    def level(self) -> float:
        """The factor on the bundle's threshold in force now: 1 outside the status or in an episode entered
        with normal scores, else ``rise`` x the median ratio of the episode's recent windows, at least 1."""
        if not self.active or not self.follows or not self._ratios:
            return 1.0
        return max(1.0, self.rise * statistics.median(self._ratios))

    def alarm_score(self, score: Score) -> Score:
        """The score as the alarm point judges it: against the threshold in force (:meth:`level`)."""
        if not self.active:
            return score
        level = self.level()
        self._ratios.append(score.ratio)
        if level == 1.0:
            return score
        if score.ratio >= 1.0 and score.ratio < level:
            self.held += 1
        return replace(score, threshold=score.threshold * level)


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

    def alarm_score(self, score: Score) -> Score:
        """The score against the threshold in force for its asset (see :meth:`OperatingPointWatch.alarm_score`)."""
        w = self._watches.get(score.asset)
        return score if w is None else w.alarm_score(score)

    def forget(self, asset: str) -> None:
        self._watches.pop(asset, None)

    def status(self) -> dict:
        """The assets in the status now: since when, which sensors, how many anomaly windows held."""
        return {a: {"since": w.since, "sensors": sorted(w.sensors), "held_windows": w.held, "follows": w.follows,
                    "threshold_factor": round(w.level(), 3)}
                for a, w in self._watches.items() if w.active}
