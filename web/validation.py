"""Input checks at the edge of the web API.

Every bad value becomes an :class:`ApiError` that names the field and says what
was expected; the API turns it into a JSON 400. Nothing from a request reaches
the store or the alarm book unchecked.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from appliance.core import DeadLetterCode, PointMode

MAX_LIMIT = 1000
MAX_NAME = 256  # asset, sensor, user names, alarm and proposal ids
MAX_NOTE = 500
MAX_SHELVE_S = 7 * 86400  # the alarm book's own limit, checked here for a clear 400


class ApiError(Exception):
    """A client error: HTTP ``status`` with a JSON body ``{"error": message, "field": field}``."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status

    def to_dict(self) -> dict:
        out = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


def limit_arg(args: Mapping[str, str], default: int = 100, field: str = "limit") -> int:
    raw = args.get(field)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"{field} must be an integer between 1 and {MAX_LIMIT}, got {raw!r}", field) from None
    if not 1 <= value <= MAX_LIMIT:
        raise ApiError(f"{field} must be between 1 and {MAX_LIMIT}, got {value}", field)
    return value


def float_arg(args: Mapping[str, str], field: str) -> float | None:
    raw = args.get(field)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(f"{field} must be a number (UNIX seconds), got {raw!r}", field) from None
    if not math.isfinite(value):
        raise ApiError(f"{field} must be a finite number, got {raw!r}", field)
    return value


def bool_arg(args: Mapping[str, str], field: str) -> bool | None:
    raw = args.get(field)
    if raw is None or raw == "":
        return None
    low = raw.strip().lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise ApiError(f"{field} must be 1 or 0 (true/false), got {raw!r}", field)


def name_arg(args: Mapping[str, str], field: str) -> str | None:
    raw = args.get(field)
    if raw is None or raw == "":
        return None
    return check_name(raw, field)


def code_arg(args: Mapping[str, str], field: str = "code") -> DeadLetterCode | None:
    """A dead letter reason code, one of :class:`~appliance.core.DeadLetterCode`."""
    raw = args.get(field)
    if raw is None or raw == "":
        return None
    try:
        return DeadLetterCode(raw.strip())
    except ValueError:
        codes = ", ".join(c.value for c in DeadLetterCode)
        raise ApiError(f"{field} must be one of {codes}; got {raw[:MAX_NAME]!r}", field) from None


def check_name(value: Any, field: str, max_len: int = MAX_NAME) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"{field} must be a non-empty string", field)
    value = value.strip()
    if len(value) > max_len:
        raise ApiError(f"{field} must be at most {max_len} characters", field)
    if any(ord(c) < 32 for c in value):
        raise ApiError(f"{field} must not contain control characters", field)
    return value


def json_body(request) -> dict:
    """The request's JSON object.

    Commands must be sent as ``application/json``: a browser cannot send that
    cross-origin without a CORS preflight we never grant, so another web page
    open on the technician's tablet cannot acknowledge alarms behind their back.
    """
    if not request.is_json:
        raise ApiError("the body must be JSON (Content-Type: application/json)", "body", status=415)
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError("the body must be a JSON object", "body")
    return data


def user_field(body: Mapping[str, Any]) -> str:
    if "user" not in body:
        raise ApiError("user is required: the name of the person giving the command", "user")
    return check_name(body["user"], "user")


def note_field(body: Mapping[str, Any]) -> str:
    note = body.get("note", "")
    if note is None:
        return ""
    if not isinstance(note, str):
        raise ApiError("note must be a string", "note")
    if len(note) > MAX_NOTE:
        raise ApiError(f"note must be at most {MAX_NOTE} characters", "note")
    return note.strip()


def duration_field(body: Mapping[str, Any]) -> float:
    if "duration_s" not in body:
        raise ApiError("duration_s is required (seconds to shelve)", "duration_s")
    value = body["duration_s"]
    # bool is an int in Python; "duration_s": true is a client bug, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError("duration_s must be a number of seconds", "duration_s")
    if not 0 < value <= MAX_SHELVE_S:
        raise ApiError(f"duration_s must be > 0 and at most {MAX_SHELVE_S} (7 days), got {value}", "duration_s")
    return float(value)


# Shelving is its own command: it needs a duration.
COMMAND_MODES = tuple(m for m in PointMode if m is not PointMode.SHELVED)


def mode_field(body: Mapping[str, Any]) -> PointMode:
    mode = body.get("mode")
    if not isinstance(mode, str) or mode not in COMMAND_MODES:
        raise ApiError(f"mode must be one of {', '.join(COMMAND_MODES)}; got {mode!r}", "mode")
    return PointMode(mode)
