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


MAX_JSON_DEPTH = 16  # every command body is flat; deep nesting is an attack on the parser


def json_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``[`` and ``{`` nest in ``raw`` (strings skipped), counting no further than ``limit + 1``.

    >>> json_depth(b'{"a": [1, {"b": "[[[["}]}'), json_depth(b"[" * 30000, 16)
    (3, 17)
    """
    depth = deepest = 0
    in_string = escaped = False
    for c in raw:
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


def json_body(request) -> dict:
    """The request's JSON object.

    Commands must be sent as ``application/json`` with the session's CSRF token
    (checked before this); the body is at most ``MAX_CONTENT_LENGTH`` (413
    beyond) and nests at most ``MAX_JSON_DEPTH`` deep (400 beyond, before the
    parser sees it: Python's parser would otherwise recurse until it fails).
    The acting user is the one signed in: a ``user`` field is refused.
    """
    if not request.is_json:
        raise ApiError("the body must be JSON (Content-Type: application/json)", "body", status=415)
    raw = request.get_data(cache=True)
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels", "body")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # belt and braces: the depth check above should have caught it
        data = None
    if not isinstance(data, dict):
        raise ApiError("the body must be a JSON object", "body")
    if "user" in data:
        raise ApiError("commands are given in the name of the signed-in user; do not send a user field", "user")
    return data


def text_field(body: Mapping[str, Any], field: str = "text", max_len: int = 1000) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"{field} is required: a non-empty string", field)
    if len(value) > max_len:
        raise ApiError(f"{field} must be at most {max_len} characters", field)
    return value.strip()


def bool_field(body: Mapping[str, Any], field: str) -> bool:
    value = body.get(field)
    if not isinstance(value, bool):
        raise ApiError(f"{field} must be true or false", field)
    return value


def choice_arg(args: Mapping[str, str], field: str, choices, default: str) -> str:
    raw = args.get(field)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise ApiError(f"{field} must be one of {', '.join(choices)}; got {raw[:40]!r}", field)
    return raw


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
