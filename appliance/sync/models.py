"""Signed model releases in, during connectivity windows: verify, load, hand to the shadow run.

Each window the :class:`ModelSync` asks the :class:`~appliance.sync.updates.ModelUpdater`
for the newest signed release (resuming a download the last window left). A newly
installed bundle is checked once more against its signed record
(:func:`~appliance.sync.trust.verify_installed`), loaded, and handed to the
runtime, which runs it in shadow beside the current model and promotes or rejects
it (:mod:`appliance.sync.shadow`). Every refusal is one line in ``status()``.

Which bundle is active survives a restart through ``active_model.json`` in the
data directory (:func:`remember_active`, :func:`active_bundle`): a promoted
model is loaded again at start, after the same verification; a bundle that fails
it is not loaded and the configured one is used instead, with the reason logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from appliance.core import OutputContext
from appliance.sync.shadow import ShadowBounds
from appliance.sync.trust import RELEASE_RECORD, verify_installed

log = logging.getLogger(__name__)

ACTIVE_FILE = "active_model.json"


class ModelSync:
    """See the module docstring. ``updater`` is a ModelUpdater; precision and threads load the candidate."""

    def __init__(self, updater: Any, bounds: ShadowBounds, precision: str = "int8", threads: int = 1):
        self.updater = updater
        self.bounds = bounds
        self.precision = precision
        self.threads = threads
        self.last_result: str | None = None
        self.last_refusal: str | None = None
        self.last_at: float | None = None

    async def run_window(self, ctx: OutputContext | None, deadline_mono: float | None) -> None:
        """One update attempt within the window; never raises (a failure is a status line)."""
        from appliance.detector.scorer import Detector

        try:
            result = await asyncio.to_thread(self.updater.update, deadline=deadline_mono)
        except Exception as e:  # the updater reports its own refusals; this is the unexpected
            self.last_result = f"model update failed: {type(e).__name__}: {e}"
            log.exception("model update failed")
            return
        self.last_result, self.last_at = result.line(), time.time()
        if result.outcome != "installed":
            return
        why = verify_installed(result.bundle_dir, self.updater.trusted_root)
        if why is not None:
            self._refuse(f"installed bundle {result.bundle_dir} refused: {why}")
            return
        try:
            candidate = await asyncio.to_thread(Detector.load, result.bundle_dir, self.precision, self.threads)
        except Exception as e:
            self._refuse(f"bundle {result.bundle_dir} does not load: {e}")
            return
        if ctx is None or ctx.begin_shadow is None:
            self._refuse("no runtime to run the candidate in shadow")
            return
        try:
            ctx.begin_shadow(candidate, self.bounds)
        except ValueError as e:  # incompatible with the running model: recorded by the runtime too
            self._refuse(str(e))

    def _refuse(self, why: str) -> None:
        self.last_refusal = why
        log.warning("model release not used: %s", why)

    def status(self) -> dict:
        return {"last_result": self.last_result, "last_refusal": self.last_refusal, "last_at": self.last_at,
                "updater": self.updater.status()}


def remember_active(data_dir: str | Path, bundle_dir: str | Path | None) -> None:
    """Record which bundle scores now (written atomically; None forgets it)."""
    path = Path(data_dir) / ACTIVE_FILE
    if bundle_dir is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bundle": str(Path(bundle_dir).resolve()), "at": time.time()}))
    os.replace(tmp, path)


def active_bundle(data_dir: str | Path, trusted_root: str | Path | None) -> tuple[Path | None, str | None]:
    """The bundle a promotion made active, if any and still as signed: ``(path, None)`` or ``(None, why)``."""
    path = Path(data_dir) / ACTIVE_FILE
    if not path.exists():
        return None, None
    try:
        bundle = Path(json.loads(path.read_text())["bundle"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{path}: unreadable ({e})"
    if not (bundle / "bundle.json").exists():
        return None, f"{bundle}: the promoted bundle is gone"
    if (bundle / RELEASE_RECORD).exists():
        if trusted_root is None or not Path(trusted_root).exists():
            return None, f"{bundle}: signed release, but no trusted root to verify it (outputs.sync.updates)"
        why = verify_installed(bundle, trusted_root)
        if why is not None:
            return None, f"{bundle}: {why}"
    return bundle, None
