"""Bounds on what one fleet client can do to the fleet model: pure checks the server applies.

A fleet client is a process on a gateway the server does not control (and, in
Flower's one-process mode, does not authenticate), so nothing a client sends is
taken on its word. Each round, the server:

1. **checks** every update (:func:`checked_weights`): as many arrays as the model
   has, each of its shape, a real floating dtype, every value finite. A result that
   fails is dropped, counted and logged; the round goes on with the others.
2. **clips** it (:func:`clip_update`): the update (client weights minus the round's
   global weights) is scaled down to L2 norm ``max_update_norm`` when longer, so a
   client that skipped its own clipping moves nothing further than one that did.
3. **weighs** it (:func:`client_weight`): ``equal`` (every accepted client counts
   once) or ``windows`` (its claimed training windows, capped at ``max_windows``).
   With ``equal``, one client among n moves the global model by at most
   ``max_update_norm / n``; with ``windows`` by at most ``max_update_norm * cap /
   (cap + the others' windows)``.
4. **checks the aggregate** (:func:`aggregate_problem`): finite, and its change from
   the round's global weights within ``max_update_norm`` (a weighted mean of updates
   clipped to that norm cannot be longer; under SecAgg+, where the server sees only
   the sum, this is the check that remains: ``README.md``).

The fleet threshold (:func:`robust_threshold`) is a median with the clients'
values first clamped to ``[current / f, current * f]`` around the seed bundle's
threshold; with fewer than three clients the current threshold votes too, so
with two clients one of them cannot drag it to their mean. Before a bundle is
written, :func:`drift_problem` checks the final weights against the seed: finite
and within ``rounds released x max_update_norm`` (plus DP noise).

Nothing here imports Flower: the server adapts Flower's types to these arrays.
"""

from __future__ import annotations

import math
import statistics
from typing import Literal, Mapping, Sequence

import numpy as np

Weighting = Literal["equal", "windows"]
# A client's name goes into logs and the run report; a longer one is cut.
MAX_NAME_CHARS = 64
# Votes a median needs before one outlier cannot move it past an honest value.
MIN_CLIENTS_FOR_MEDIAN = 3


class UpdateRejected(ValueError):
    """Why one client's result is dropped from the round."""


def checked_weights(arrays: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """``arrays`` as float64 copies when they fit the model, else :class:`UpdateRejected`.

    >>> ok = checked_weights([np.ones((2, 3), np.float32), np.zeros(3, np.float32)], [(2, 3), (3,)])
    >>> [a.dtype.name for a in ok]
    ['float64', 'float64']
    >>> checked_weights([np.ones((3, 2), np.float32), np.zeros(3)], [(2, 3), (3,)])
    Traceback (most recent call last):
    ...
    appliance.fleet.robust.UpdateRejected: weight array 0 has shape (3, 2), the model needs (2, 3)
    >>> checked_weights([np.full((2, 3), np.nan), np.zeros(3)], [(2, 3), (3,)])
    Traceback (most recent call last):
    ...
    appliance.fleet.robust.UpdateRejected: weight array 0 holds 6 NaN or infinite values
    >>> checked_weights([np.ones((2, 3), np.int64), np.zeros(3)], [(2, 3), (3,)])
    Traceback (most recent call last):
    ...
    appliance.fleet.robust.UpdateRejected: weight array 0 has dtype int64, not a real floating type
    """
    if len(arrays) != len(shapes):
        raise UpdateRejected(f"{len(arrays)} weight arrays, the model has {len(shapes)}")
    out = []
    for i, (a, shape) in enumerate(zip(arrays, shapes)):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            dtype = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise UpdateRejected(f"weight array {i} has dtype {dtype}, not a real floating type")
        if a.shape != tuple(shape):
            raise UpdateRejected(f"weight array {i} has shape {a.shape}, the model needs {tuple(shape)}")
        a = a.astype(np.float64)
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise UpdateRejected(f"weight array {i} holds {bad} NaN or infinite values")
        out.append(a)
    return out


def norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm over all arrays, as one vector.

    >>> norm([np.array([3.0]), np.array([[4.0]])])
    5.0
    """
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def clip_update(weights: Sequence[np.ndarray], start: Sequence[np.ndarray], max_norm: float
                ) -> tuple[list[np.ndarray], float]:
    """``start`` plus the update ``weights - start`` scaled to L2 norm at most ``max_norm``; and its norm before.

    >>> clipped, before = clip_update([np.array([3.0, 4.0])], [np.zeros(2)], 1.0)
    >>> clipped[0].tolist(), before
    ([0.6000000000000001, 0.8], 5.0)
    >>> clip_update([np.array([0.3, 0.4])], [np.zeros(2)], 1.0)[0][0].tolist()
    [0.3, 0.4]
    """
    update = [np.asarray(w, np.float64) - np.asarray(s, np.float64) for w, s in zip(weights, start)]
    n = norm(update)
    scale = 1.0 if n <= max_norm else max_norm / n
    return [np.asarray(s, np.float64) + scale * u for s, u in zip(start, update)], n


def client_weight(claimed_windows: object, rule: Weighting, cap: int) -> float:
    """A client's share in the weighted mean; what it claims counts only up to ``cap``, and only for ``windows``.

    >>> client_weight(10**9, "equal", 1000), client_weight(10**9, "windows", 1000), client_weight(300, "windows", 1000)
    (1.0, 1000.0, 300.0)
    >>> client_weight(0, "windows", 1000)
    Traceback (most recent call last):
    ...
    appliance.fleet.robust.UpdateRejected: claims 0 training windows
    """
    if isinstance(claimed_windows, bool) or not isinstance(claimed_windows, (int, np.integer)) or claimed_windows < 1:
        raise UpdateRejected(f"claims {claimed_windows!r} training windows")
    return 1.0 if rule == "equal" else float(min(int(claimed_windows), cap))


def aggregate_problem(new: Sequence[np.ndarray], start: Sequence[np.ndarray], max_norm: float) -> str | None:
    """Why the round's aggregate must not be released (non-finite, or moved further than ``max_norm``), or None.

    >>> aggregate_problem([np.array([0.5])], [np.array([0.0])], 1.0) is None
    True
    >>> aggregate_problem([np.array([2.0])], [np.array([0.0])], 1.0)
    'the aggregate moved the weights by 2, more than the bound 1'
    >>> aggregate_problem([np.array([np.inf])], [np.array([0.0])], 1.0)
    'the aggregate holds NaN or infinite values'
    """
    if not all(np.isfinite(np.asarray(a, np.float64)).all() for a in new):
        return "the aggregate holds NaN or infinite values"
    moved = norm([np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(new, start)])
    # A weighted mean of updates clipped to max_norm is at most that long; the slack is float32 rounding.
    if moved > max_norm * (1 + 1e-4) + 1e-6:
        return f"the aggregate moved the weights by {moved:.4g}, more than the bound {max_norm:.4g}"
    return None


def drift_problem(final: Sequence[np.ndarray], seed: Sequence[np.ndarray], max_drift: float) -> str | None:
    """Why the fleet's final weights must not become a bundle (non-finite, or too far from the seed), or None.

    >>> drift_problem([np.array([1.0, 1.0])], [np.zeros(2)], 1.0)
    'the fleet model moved 1.414 from the seed model, more than the 1 its released rounds allow'
    """
    if not all(np.isfinite(np.asarray(a, np.float64)).all() for a in final):
        return "the fleet model holds NaN or infinite values"
    moved = norm([np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(final, seed)])
    if moved > max_drift * (1 + 1e-4) + 1e-6:
        return (f"the fleet model moved {moved:.4g} from the seed model, more than the {max_drift:.4g} its "
                f"released rounds allow")
    return None


def number(metrics: Mapping[str, object], key: str) -> float:
    """``metrics[key]`` as a float; NaN when missing or not a number (a client's metrics are not trusted).

    >>> number({"a": 2}, "a"), number({"a": "x"}, "a"), number({}, "a")
    (2.0, nan, nan)
    """
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return math.nan
    return float(v)


def client_name(metrics: Mapping[str, object], fallback: str) -> str:
    """The name a client gives itself, cut to :data:`MAX_NAME_CHARS`; ``fallback`` (its connection id) if none.

    >>> client_name({"name": "gw1"}, "c9"), client_name({"name": b"x"}, "c9"), client_name({}, "c9")
    ('gw1', 'c9', 'c9')
    """
    v = metrics.get("name")
    return v[:MAX_NAME_CHARS] if isinstance(v, str) and v else str(fallback)[:MAX_NAME_CHARS]


def usable_threshold(value: object) -> float | None:
    """A client's reported threshold when it is a finite positive number, else None.

    >>> usable_threshold(0.7), usable_threshold(float("nan")), usable_threshold(-1), usable_threshold("1")
    (0.7, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    v = float(value)
    return v if math.isfinite(v) and v > 0 else None


def robust_threshold(client_thresholds: Sequence[float], rule: str, current: float | None,
                     max_factor: float) -> tuple[float, dict]:
    """The fleet's threshold from the clients' ones, and how it was reached.

    Each value is clamped to ``[current / max_factor, current * max_factor]``; the
    rule (median or max) then runs over them, the current threshold voting too when
    fewer than :data:`MIN_CLIENTS_FOR_MEDIAN` clients reported. One client can move
    the result at most by the factor, and with two clients not past the other one.
    Without a current threshold (no seed bundle), the plain rule.

    The issue's case: seed threshold 0.66, an honest client at 0.66, one reporting 2.0:

    >>> robust_threshold([0.66, 2.0], "median", 0.66, 1.5)[0]
    0.66
    >>> robust_threshold([0.6, 0.7, 0.8], "median", 0.66, 1.5)[0]
    0.7
    >>> round(robust_threshold([100.0], "max", 0.66, 1.5)[0], 3)
    0.99
    """
    values = [v for v in (usable_threshold(t) for t in client_thresholds) if v is not None]
    if not values:
        raise ValueError("no client reported a usable threshold")
    info: dict = {"rule": rule, "clients": len(values)}
    if current is not None and current > 0:
        lo, hi = current / max_factor, current * max_factor
        clamped = [min(max(v, lo), hi) for v in values]
        info.update(current=current, band=[lo, hi], clamped=sum(1 for a, b in zip(values, clamped) if a != b))
        values = clamped
        if len(values) < MIN_CLIENTS_FOR_MEDIAN:
            values = values + [current]
            info["current_votes"] = True
    return (max(values) if rule == "max" else float(statistics.median(values))), info
