"""The technician dashboard: one page, its data comes from the JSON API by polling."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, current_app, render_template, url_for

bp = Blueprint("pages", __name__)

POLL_MS = 2000


@lru_cache(maxsize=32)
def _digest(path: str, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


@bp.app_template_global()
def static_url(filename: str) -> str:
    """URL of a static file with its content hash, so browsers cache it safely."""
    path = Path(current_app.static_folder) / filename
    try:
        version = _digest(str(path), path.stat().st_mtime_ns)
    except OSError:
        version = "missing"
    return url_for("static", filename=filename, v=version)


@bp.get("/")
def dashboard():
    return render_template("dashboard.html", poll_ms=POLL_MS)
