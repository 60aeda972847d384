"""A severity a technician can read: 0-100, where 50 is the calibrated threshold.

The raw ratio (reconstruction error / threshold) is unbounded: an unseen operating
point can read "416 x threshold", which says nothing beyond "far outside". Severity
squashes the ratio onto a fixed scale with named bands, so that the number on the
dashboard and in the alarm payload means the same thing for every model.

>>> severity(0.0), severity(1.0), severity(2.0), severity(4.0)
(0, 50, 75, 94)
>>> severity(416.0), severity(float("inf")), severity(float("nan"))
(100, 100, 100)
>>> band(severity(1.0)), band(severity(0.3)), band(severity(3.0))
('alarm', 'normal', 'high')
"""

from __future__ import annotations

import math

#: Shown beside the number in the dashboard and sent with alarms.
EXPLANATION = (
    "Severity 0-100: how far the machine's behaviour is from the normal the model learned. "
    "50 is the alarm threshold (calibrated on normal data for the stated false-alarm rate); "
    "each doubling of the deviation closes half the remaining distance to 100: "
    "75 at twice the threshold, 88 at three times, 94 at four."
)

#: (lower bound, name), highest first.
BANDS: tuple[tuple[int, str], ...] = ((90, "critical"), (75, "high"), (50, "alarm"), (35, "watch"), (0, "normal"))


def severity(ratio: float) -> int:
    """Map error/threshold onto 0-100: ``100 * (1 - 2**-ratio)``, 50 at the threshold.

    A non-finite ratio (a threshold of zero, an overflowing error) is the top of the scale.
    """
    if not math.isfinite(ratio):
        return 100
    if ratio <= 0:
        return 0
    return min(100, int(round(100.0 * (1.0 - 2.0 ** -ratio))))


def band(sev: int) -> str:
    """The named band a severity falls in."""
    for lower, name in BANDS:
        if sev >= lower:
            return name
    return "normal"
