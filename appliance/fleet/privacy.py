"""The privacy a fleet run spends: an exact accountant for the Gaussian mechanism, no sampling.

What is protected: one gateway's whole contribution to a round (client-level,
add/remove-one-gateway adjacency). Flower's client-side fixed clipping wrapper
clips each update to L2 norm ``C`` and adds Gaussian noise of standard deviation
``z * C / m`` to the average of ``m`` updates, so one gateway moves the average
by at most ``C / m``: a Gaussian mechanism with noise multiplier ``z``. When only
``k < m`` clients replied, the average of ``k`` moves by ``C / k`` while the noise
stays ``z * C / m``: the round is accounted with the effective multiplier
``z * k / m``.

Accountant: Gaussian differential privacy (Dong, Roth and Su, 2019). A Gaussian
mechanism with multiplier ``z`` is exactly ``mu``-GDP with ``mu = 1 / z``;
``T`` of them compose exactly to ``mu = sqrt(sum mu_i^2)``; and ``mu``-GDP is
``(epsilon, delta)``-DP for every epsilon with
``delta = Phi(-eps/mu + mu/2) - exp(eps) * Phi(-eps/mu - mu/2)`` (their
Corollary 2.13), solved here for epsilon. No amplification by sampling is
claimed: every available gateway takes part in every round. Rounds whose
aggregate was not released (Flower's wrapper discards a round with failures)
spend nothing.

>>> round(epsilon(1.0, 1e-5), 2)
4.38
>>> epsilon(1.0, 1e-5) < epsilon(2.0, 1e-5)
True
>>> round(gdp_mu([1.0] * 4), 3)
2.0
"""

from __future__ import annotations

import math
from typing import Iterable

from scipy.optimize import brentq
from scipy.stats import norm


def gdp_mu(noise_multipliers: Iterable[float]) -> float:
    """The ``mu`` of the composition of Gaussian mechanisms with these noise multipliers."""
    total = 0.0
    for z in noise_multipliers:
        if z <= 0:
            return math.inf
        total += 1.0 / (z * z)
    return math.sqrt(total)


def _delta(eps: float, mu: float) -> float:
    return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))


def epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with ``(epsilon, delta)``-DP for a ``mu``-GDP mechanism (``inf`` without noise)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if mu == 0:
        return 0.0
    if not math.isfinite(mu):
        return math.inf
    if _delta(0.0, mu) <= delta:
        return 0.0
    hi = 1.0
    while _delta(hi, mu) > delta:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    return float(brentq(lambda e: _delta(e, mu) - delta, 0.0, hi, xtol=1e-10))


def round_multiplier(noise_multiplier: float, sampled: int, replied: int) -> float:
    """Effective noise multiplier of a round where ``replied`` of ``sampled`` clients' updates were averaged."""
    if replied <= 0:
        raise ValueError("a released round has at least one update")
    return noise_multiplier * min(1.0, replied / sampled)
