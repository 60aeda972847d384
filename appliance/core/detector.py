"""What the runtime, the lifecycle and the shadow run need of a detector: :class:`Detector`.

The ONNX detector (:class:`appliance.detector.scorer.Detector`) implements it, and
so does every stand-in of the tests (``tests/support/detector.py``), so nothing on
the live path probes a detector for what it may lack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from appliance.core.records import Score, Window


@runtime_checkable
class BundleInfo(Protocol):
    """Where a detector's model came from: its folder, and the grid staleness it was trained with."""

    path: Path
    staleness_s: float | None  # None for bundles older than the field


@runtime_checkable
class Detector(Protocol):
    """A model that scores windows of one grid.

    ``window`` is the rows of a scored window, ``stride`` the rows between two,
    ``horizon`` how many steps its errors are averaged over (1 for most models),
    ``threshold`` the score at which a window is at alarm level, ``version`` the
    model version shown and recorded. ``bundle`` is None for a model not loaded
    from a bundle (a stand-in): it is then never remembered as the model to load
    at the next start, and the grid keeps the configured staleness.
    """

    sensors: Sequence[str]
    period_s: float
    window: int
    stride: int
    horizon: int
    threshold: float
    version: str
    bundle: BundleInfo | None

    def score_one(self, window: Window) -> Score:
        """Score one complete window (raises on a window it cannot score)."""
        ...

    def allow_held(self, rows: int) -> None:
        """The live grid may hold a value over ``rows`` missing reports: such a repeat is never frozen."""
        ...
