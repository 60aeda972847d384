"""Which bundle loads at the next start: ``active_model.json`` in the data directory.

A promotion or a rollback records the bundle that scores now (:func:`remember_active`);
at start the runtime loads it again (:func:`active_bundle`), after the same
verification against its signed record as at install. A bundle that fails it is not
loaded and the configured ``detector.bundle`` is used instead, with the reason logged.

Only a signed release is ever promoted (a commissioned or fleet bundle travels as
one too), so the active bundle must carry its signed record: one without it (the
record deleted beside edited thresholds) is refused like an edited one, never
loaded unchecked. A rollback to the configured ``detector.bundle`` forgets the
file instead of recording an unsigned bundle; that one is loaded, as at every
start, through the loader's sanity bounds alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from appliance.sync.trust import RELEASE_RECORD, verify_installed

log = logging.getLogger(__name__)

ACTIVE_FILE = "active_model.json"


def bundle_to_load(cfg) -> Path:
    """The bundle a start loads: the one a promotion made active if it still verifies, else ``detector.bundle``."""
    promoted, why = active_bundle(cfg.path("."), cfg.path(cfg.outputs.sync.updates.trusted_root))
    if why is not None:
        log.error("promoted model not loaded, using detector.bundle instead: %s", why)
    return promoted or cfg.path(cfg.detector.bundle)


def remember_active(data_dir: str | Path, bundle_dir: str | Path | None) -> None:
    """Record which bundle scores now (written atomically; None forgets it)."""
    path = Path(data_dir) / ACTIVE_FILE
    if bundle_dir is None or not (Path(bundle_dir) / RELEASE_RECORD).exists():
        # Not a signed release (the configured bundle, rolled back to): the next start loads
        # detector.bundle anyway, and active_model.json names only what it can verify.
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
    if not (bundle / RELEASE_RECORD).exists():
        return None, (f"{bundle}: no {RELEASE_RECORD}: a promoted bundle is a signed release and must keep "
                      f"its signed record (deleted, or not installed by the updater)")
    if trusted_root is None or not Path(trusted_root).exists():
        return None, f"{bundle}: signed release, but no trusted root to verify it (outputs.sync.updates)"
    why = verify_installed(bundle, trusted_root)
    if why is not None:
        return None, f"{bundle}: {why}"
    return bundle, None
