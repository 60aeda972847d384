"""The technician dashboard: one page, its data comes from the JSON API by polling."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("pages", __name__)

POLL_MS = 2000


@bp.get("/")
def dashboard():
    return render_template("dashboard.html", poll_ms=POLL_MS)
