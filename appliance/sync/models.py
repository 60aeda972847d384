"""Signed model releases in, during connectivity windows: verify, load, hand to the model's lifecycle.

Each window the :class:`ModelSync` asks the :class:`~appliance.sync.updates.ModelUpdater`
for the newest signed release (resuming a download the last window left). A newly
installed bundle is checked once more against its signed record
(:func:`~appliance.sync.trust.verify_installed`), loaded, and handed to the
model's lifecycle (:mod:`appliance.lifecycle`), which back-tests it on the gateway's
labelled history (``[outputs.sync.backtest]``), then runs it in shadow beside the
current model and promotes or rejects it. Every pass and every refusal, by the
updater before install (tampered, bad signature, expired ...) or after it, is one
line in ``status()`` and is recorded in the lifecycle, whose state the status
API's ``model`` section and the dashboard's model page show.

Which bundle loads at the next start is the lifecycle's (:mod:`appliance.lifecycle.active`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from appliance.core import ModelDesk, OutputContext
from appliance.lifecycle.config import BacktestBounds
from appliance.lifecycle.shadow import ShadowBounds
from appliance.sync.trust import verify_installed

log = logging.getLogger(__name__)


class ModelSync:
    """See the module docstring. ``updater`` is a ModelUpdater; precision and threads load the candidate."""

    def __init__(self, updater: Any, bounds: ShadowBounds, precision: str = "int8", threads: int = 1,
                 history: BacktestBounds | None = None):
        self.updater = updater
        self.bounds = bounds
        self.history = history if history is not None else BacktestBounds()
        self.precision = precision
        self.threads = threads
        self.last_result: str | None = None
        self.last_refusal: str | None = None
        self.last_at: float | None = None

    async def run_window(self, ctx: OutputContext | None, deadline_mono: float | None) -> None:
        """One update attempt within the window; never raises (a failure is a status line)."""
        from appliance.detector.scorer import Detector

        models = ctx.models if ctx is not None else None
        try:
            result = await asyncio.to_thread(self.updater.update, deadline=deadline_mono)
        except Exception as e:  # the updater reports its own refusals; this is the unexpected
            self.last_result = f"model update failed: {type(e).__name__}: {e}"
            log.exception("model update failed")
            if models is not None:
                models.note_update("failed", self.last_result)
            return
        self.last_result, self.last_at = result.line(), time.time()
        if models is not None:
            models.note_update(result.outcome, self.last_result)
        if result.outcome == "refused":  # before install: the updater's line says what and why
            self._refuse(models, result.reason, result.kind or "refused", "updater")
            return
        if result.outcome != "installed":
            return
        why = verify_installed(result.bundle_dir, self.updater.trusted_root)
        if why is not None:
            self._refuse(models, f"installed bundle {result.bundle_dir} refused: {why}", "verify", "install")
            return
        try:
            candidate = await asyncio.to_thread(Detector.load, result.bundle_dir, self.precision, self.threads)
        except Exception as e:
            self._refuse(models, f"bundle {result.bundle_dir} does not load: {e}", "load", "install")
            return
        if models is None:
            self._refuse(None, "no runtime to run the candidate in shadow", "runtime", "install")
            return
        try:
            await models.consider(candidate, self.bounds, self.history)
        except ValueError as e:  # incompatible, or rejected by the back-test: the lifecycle recorded it already
            self._refuse(None, str(e), "refused", "lifecycle")

    def _refuse(self, models: ModelDesk | None, why: str, kind: str, stage: str) -> None:
        self.last_refusal = why
        log.warning("model release not used: %s", why)
        if models is not None:
            models.note_refusal(why, kind, stage)

    def status(self) -> dict:
        return {"last_result": self.last_result, "last_refusal": self.last_refusal, "last_at": self.last_at,
                "updater": self.updater.status()}
