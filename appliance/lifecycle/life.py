"""The model's life on a gateway, in one place: shadow, promotion, probation, rollback, updates and refusals.

Whatever brings a model (the sync's signed releases, a fleet model released through
them, a bundle commissioned on the gateway and released the same way) ends here:

* :meth:`ModelLifecycle.consider` judges a verified candidate on the gateway's own
  labelled history first (:mod:`appliance.lifecycle.backtest`, off the event loop):
  one that misses more labelled faults or raises more false alarms than the current
  model, beyond ``[outputs.sync.backtest]``, is rejected there with the episodes
  named; with too little labelled history the shadow run alone decides;
* :meth:`ModelLifecycle.begin_shadow` runs a verified candidate beside the live
  model (:class:`~appliance.lifecycle.shadow.ShadowRun`); the runtime forwards every
  scored window (:meth:`~ModelLifecycle.observe`), and when the run is over the
  candidate is promoted or rejected. A run that would promote while an alarm is
  active on an asset waits for it to clear: a verdict taken during a fault, when
  both models are over their thresholds, says nothing about false alarms;
* a promotion hands the candidate to the runtime, whose only part is one assignment
  on its loop thread (``swap``), keeps the old model for a rollback and watches the
  new one in :class:`~appliance.lifecycle.shadow.Probation`; the runtime forwards
  every live raise (:meth:`~ModelLifecycle.on_raise`), and too many roll back;
* the engineer's commands (:data:`MODEL_COMMANDS`) promote, reject or roll back by hand;
* every step is a :class:`~appliance.core.ModelChange` handed to the outputs (the
  store journals it), and the bundle that scores now is remembered for the next
  start (:mod:`appliance.lifecycle.active`);
* every update pass and every refusal, by the updater before install (tampered,
  bad signature, expired ...) or after it (does not verify or load, incompatible,
  rejected in shadow), is kept for the status API and the model page.

Everything here runs on the runtime's event loop. Nothing here trains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from appliance.actions.decide import Decider
from appliance.core import Detector, ModelChange, Score, Window
from appliance.lifecycle.active import remember_active
from appliance.lifecycle.shadow import ModelCommandError, Probation, ShadowBounds, ShadowRun, compatibility

if TYPE_CHECKING:
    from appliance.lifecycle.backtest import BacktestReport
    from appliance.lifecycle.config import BacktestBounds

log = logging.getLogger(__name__)

MODEL_COMMANDS = ("promote_model", "reject_model", "rollback_model")


class ModelLifecycle:
    """See the module docstring.

    What the runtime lends it: ``current()`` the model scoring now, ``swap(new)`` its
    one assignment, ``publish(change)`` to every output, ``spawn(coro)`` for disk work
    off the loop. ``held_rows`` is what the live grid may hold (every candidate learns
    it, as the running model did); ``data_dir`` holds ``active_model.json``.
    ``history(candidate, current, bounds)`` back-tests a candidate on the store (a
    :class:`~appliance.lifecycle.backtest.HistoryJudge`; None: no back-test), and
    ``active_alarms()`` names the assets with an alarm active now.
    """

    def __init__(self, *, current: Callable[[], Detector], swap: Callable[[Detector], None],
                 publish: Callable[[ModelChange], None], spawn: Callable[[Coroutine[Any, Any, Any]], None],
                 new_decider: Callable[[], Decider], held_rows: int, data_dir: str | Path,
                 clock: Callable[[], float] = time.time,
                 history: Callable[[Detector, Detector, "BacktestBounds"], "BacktestReport"] | None = None,
                 active_alarms: Callable[[], list[str]] = list):
        self._current, self._swap, self._publish, self._spawn = current, swap, publish, spawn
        self._new_decider = new_decider
        self.held_rows = held_rows
        self.data_dir = Path(data_dir)
        self._clock = clock
        self._history = history
        self._active_alarms = active_alarms
        self.last_backtest: dict | None = None
        self._waiting_for: list[str] = []  # assets in alarm that a shadow run ready to promote waits for
        # A candidate in shadow, the model kept for a rollback, the watch after a promotion.
        self._shadow: ShadowRun | None = None
        self._previous: Detector | None = None
        self._probation: Probation | None = None
        self.last_update: dict | None = None
        self.last_refusal: dict | None = None

    # -- a candidate --------------------------------------------------------------------------------------------
    async def consider(self, candidate: Detector, bounds: ShadowBounds, history: "BacktestBounds | None" = None,
                       user: str = "appliance") -> None:
        """Back-test ``candidate`` on the labelled history (``history`` bounds), then run it in shadow.

        Raises ModelCommandError with the one-line reason when it is incompatible or the
        back-test rejects it (both recorded as a ``rejected`` model change).
        """
        why = compatibility(self._current(), candidate)
        note = ""
        if why is None and history is not None and history.enabled and self._history is not None:
            ok, reason = await self._backtest(candidate, history)
            if ok is False:
                self._change("rejected", candidate, reason, user, stage="backtest")
                raise ModelCommandError(reason)
            note = f"; {reason}"
        self.begin_shadow(candidate, bounds, user, note)

    async def _backtest(self, candidate: Detector, bounds: "BacktestBounds") -> tuple[bool | None, str]:
        """The back-test's ``(ok, line)``, off the event loop; a back-test that fails (an unreadable store ...)
        leaves the candidate to its shadow run, which also refuses a model that cannot score."""
        current = self._current()
        try:
            report = await asyncio.to_thread(self._history, candidate, current, bounds)
            ok, reason = report.ok, report.reason
        except Exception as e:
            log.warning("model backtest failed candidate=%s error=%r", candidate.version, e)
            ok, reason = None, f"back-test failed ({type(e).__name__}: {e}): judged by its shadow run alone"
        self.last_backtest = {"at": self._clock(), "candidate": candidate.version, "current": current.version,
                              "ok": ok, "reason": reason}
        return ok, reason

    def begin_shadow(self, candidate: Detector, bounds: ShadowBounds, user: str = "appliance",
                     note: str = "") -> None:
        """Run ``candidate`` in shadow; promoted or rejected when the run ends (ModelCommandError if it cannot)."""
        why = compatibility(self._current(), candidate)
        candidate.allow_held(self.held_rows)
        if why is not None:
            self._change("rejected", candidate, why, user)
            raise ModelCommandError(why)
        if self._shadow is not None:
            self._change("rejected", self._shadow.candidate, "replaced by a newer candidate", user)
        self._shadow = ShadowRun(candidate, bounds, self._new_decider)
        self._change("shadow_started", candidate, f"for {bounds.duration_s:g} s and "
                     f"at least {bounds.min_windows} windows{note}", user)

    def observe(self, window: Window, score: Score) -> None:
        """A window the live model scored: the candidate in shadow scores it too; its run may end here."""
        run = self._shadow
        if run is None:
            return
        run.observe(window, score)
        if run.done() and not self._waits_for_alarms(run):
            self._conclude()

    def _waits_for_alarms(self, run: ShadowRun) -> bool:
        """A run that would promote waits while an alarm is active: a verdict taken then is not "within bounds"."""
        busy = self._active_alarms()
        self._waiting_for = busy if busy and run.result().verdict(run.bounds)[0] else []
        return bool(self._waiting_for)

    def _conclude(self, user: str = "appliance", force: bool | None = None) -> None:
        run, self._shadow, self._waiting_for = self._shadow, None, []
        ok, why = run.result().verdict(run.bounds)
        if force is not None:
            ok, why = force, f"by hand ({why})"
        if ok:
            self._install(run.candidate, "promoted", why, user)
            self._probation = Probation(run.bounds)
        else:
            self._change("rejected", run.candidate, why, user)

    # -- the live model -----------------------------------------------------------------------------------------
    def _install(self, new: Detector, event: str, why: str, user: str) -> None:
        old = self._current()
        self._swap(new)
        self._previous = old
        self._change(event, new, why, user, previous=old)
        if new.bundle is not None:  # the next start loads the model that scores now
            self._spawn(asyncio.to_thread(remember_active, self.data_dir, new.bundle.path))

    def rollback(self, reason: str, user: str = "appliance") -> None:
        if self._previous is None:
            raise ModelCommandError("no previous model to roll back to")
        previous, self._probation = self._previous, None
        self._install(previous, "rolled_back", reason, user)
        self._previous = None

    def on_raise(self) -> None:
        """A live (not replayed) alarm was raised: counted against a promoted model's probation."""
        if self._probation is None:
            return
        if self._probation.over():
            self._probation = None
            return
        breach = self._probation.on_raise()
        if breach is not None:
            self.rollback(breach)

    # -- the engineer's commands --------------------------------------------------------------------------------
    def command(self, name: str, user: str, note: str = "") -> list[dict]:
        """``promote_model`` or ``reject_model`` the candidate in shadow, or ``rollback_model``; on the loop."""
        if name not in MODEL_COMMANDS:
            raise ValueError(f"unknown model command {name!r}")
        if name == "rollback_model":
            self.rollback(note or "rolled back by hand", user)
        elif self._shadow is None:
            raise ModelCommandError("no candidate model is running in shadow")
        else:
            self._conclude(user, force=(name == "promote_model"))
        return [{"model": self._current().version}]

    # -- what the sync reports ----------------------------------------------------------------------------------
    def note_update(self, outcome: str, line: str) -> None:
        """How an update pass ended, as one line (the model page's "last update")."""
        self.last_update = {"at": self._clock(), "outcome": outcome, "line": line}

    def note_refusal(self, reason: str, kind: str, stage: str) -> None:
        """A release not used: ``stage`` is ``updater`` (refused before install), ``install`` (refused after
        it: does not verify or load, no runtime), ``backtest`` (rejected on the labelled history) or ``shadow``
        (incompatible, or rejected by its run)."""
        self.last_refusal = {"at": self._clock(), "stage": stage, "kind": kind, "reason": reason}

    # -- records and views --------------------------------------------------------------------------------------
    def _change(self, event: str, model: Detector, reason: str, user: str, previous: Detector | None = None,
                stage: str = "shadow") -> None:
        prev = previous if previous is not None else self._current()
        change = ModelChange(ts=self._clock(), event=event, version=model.version, previous=prev.version,
                             reason=reason, user=user)
        log.warning("model %s version=%s previous=%s reason=%s user=%s", event, change.version, change.previous,
                    reason, user)
        if event == "rejected":
            self.note_refusal(f"{model.version}: {reason}", stage, stage)
        self._publish(change)

    @property
    def shadow(self) -> ShadowRun | None:
        return self._shadow

    @property
    def previous(self) -> Detector | None:
        return self._previous

    def status(self) -> dict:
        """The lifecycle's part of the status API's ``model`` section."""
        shadow = None if self._shadow is None else {**self._shadow.status(), "waiting_for_alarms": self._waiting_for}
        return {"shadow": shadow,
                "previous": self._previous.version if self._previous is not None else None,
                "probation": (None if self._probation is None else
                              {"raises": self._probation.raises,
                               "allowed": self._probation.bounds.max_probation_alarms}),
                "last_update": self.last_update,
                "last_refusal": self.last_refusal,
                "last_backtest": self.last_backtest}
