"""Thresholds calibrated on errors of windows a model never saw (training only).

The rules (:func:`calibrate_threshold`, :func:`next_block_threshold`,
:func:`matched_threshold`) are plain functions of error arrays. A training run
applies them through one :class:`BlockCalibrator`: every model of the bundle
(the autoencoder in FP32 and INT8, each member) is calibrated on the same
unseen time blocks (the out-of-fold blocks, then the held-back part) by the same
rule, and each :class:`Calibration` says what its threshold promises on them
(:func:`expected_exceedance` combines them for ``bundle.json``).

Training only, like :mod:`appliance.detector.train`: the live path reads the
thresholds from ``bundle.json`` and never imports this module.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from appliance.actions.decide import Decider

logger = logging.getLogger(__name__)


def calibrate_threshold(errors: np.ndarray, method: str = "pot", risk: float = 1e-3,
                        init_quantile: float = 0.98, margin: float = 1.1,
                        min_peaks: int = 20, max_shape: float = 0.5) -> tuple[float, dict]:
    """Threshold on held-back normal errors and a record of how it was found.

    ``pot`` (peaks over threshold, Siffer et al. 2017): fit a generalized Pareto
    distribution to the errors above their ``init_quantile`` and take the level
    exceeded with probability ``risk``. It extrapolates the tail instead of
    trusting the single largest held-back error. With fewer than ``min_peaks``
    peaks the fit is not trustworthy and ``quantile`` is used instead: the
    ``1 - risk`` quantile (at most the maximum) times ``margin``.

    >>> e = np.random.default_rng(0).exponential(1.0, 5000)
    >>> t, info = calibrate_threshold(e, risk=1e-3)
    >>> info["method"], 5.5 < t < 8.5
    ('pot', True)
    >>> calibrate_threshold(np.array([1.0, 2.0, 3.0]))[1]["method"]
    'quantile'
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 1 or len(e) == 0 or not np.isfinite(e).all():
        raise ValueError("threshold calibration needs a non-empty 1-D array of finite errors")
    if method not in ("pot", "quantile"):
        raise ValueError(f"threshold method must be 'pot' or 'quantile', got {method!r}")
    if not 0 < risk < 1:
        raise ValueError(f"risk must be in (0, 1), got {risk!r}")
    info: dict = {"n_errors": int(len(e)), "risk": risk, "holdout_max": float(e.max()),
                  "holdout_p99": float(np.quantile(e, 0.99))}
    if method == "pot":
        t0 = float(np.quantile(e, init_quantile))
        peaks = e[e > t0] - t0
        if len(peaks) >= min_peaks and peaks.std() > 0:
            c, _, sigma = stats.genpareto.fit(peaks, floc=0.0)
            r = risk * len(e) / len(peaks)
            z = t0 - sigma * math.log(r) if abs(c) < 1e-9 else t0 + sigma / c * (r ** (-c) - 1.0)
            if math.isfinite(z) and z > 0 and c <= max_shape:
                info.update(method="pot", init_quantile=init_quantile, init_threshold=t0,
                            n_peaks=int(len(peaks)), gpd_shape=float(c), gpd_scale=float(sigma))
                return float(z), info
        logger.info("pot fit not usable peaks=%d; falling back to quantile", len(peaks))
    q = float(min(np.quantile(e, 1.0 - risk), e.max()))
    info.update(method="quantile", quantile=1.0 - risk, margin=margin)
    threshold = q * margin
    if threshold <= 0:
        raise ValueError("held-back errors are all zero; the model cannot separate anything")
    return threshold, info


def next_block_threshold(blocks: Sequence[np.ndarray], risk: float = 0.01,
                         confidence: float = 0.95) -> tuple[float, dict]:
    """Upper prediction bound for the ``1 - risk`` error quantile of one more block of normal data.

    ``blocks`` are errors of windows a model did not see, one array per time block.
    With ``q_k`` each block's quantile, ``log q_k`` is treated as a sample from the
    blocks a process produces (day to day, run to run); the bound is
    ``exp(mean + t(confidence, K-1) * sd * sqrt(1 + 1/K))``, the classical
    prediction interval for one new draw. A new stretch of normal operation then
    has at most ``risk`` of its windows over the threshold with probability about
    ``confidence``, as far as the training blocks show how stretches differ.

    >>> b = [np.full(50, v) for v in (1.0, 1.0, 1.0, 1.0)]
    >>> round(next_block_threshold(b)[0], 6)
    1.0
    >>> t, info = next_block_threshold([np.full(50, v) for v in (1.0, 2.0, 1.0, 2.0)])
    >>> t > 2.0, info["blocks"]
    (True, 4)
    """
    q = np.array([float(np.quantile(np.asarray(b, dtype=np.float64), 1.0 - risk)) for b in blocks if len(b)])
    if len(q) < 3 or not (q > 0).all():
        raise ValueError("next-block threshold needs >= 3 blocks with positive errors")
    logs = np.log(q)
    k = len(logs)
    t = float(stats.t.ppf(confidence, k - 1))
    bound = float(np.exp(logs.mean() + t * logs.std(ddof=1) * math.sqrt(1.0 + 1.0 / k)))
    return bound, {"blocks": int(k), "block_quantiles": [round(float(v), 6) for v in q], "block_risk": risk,
                   "confidence": confidence, "student_t": round(t, 4), "log_sd": round(float(logs.std(ddof=1)), 5)}


def moving_mean(errors: np.ndarray, horizon: int) -> np.ndarray:
    """The mean of every ``horizon`` consecutive errors: the live score of a bundle with that horizon.

    >>> moving_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist(), len(moving_mean(np.ones(2), 3))
    ([1.5, 2.5, 3.5], 0)
    """
    e = np.asarray(errors, dtype=np.float64)
    if horizon == 1:
        return e
    if len(e) < horizon:
        return e[:0]
    total = np.cumsum(np.concatenate([[0.0], e]))
    return (total[horizon:] - total[:-horizon]) / horizon


def matched_threshold(e32: np.ndarray, e8: np.ndarray, threshold_fp32: float) -> float:
    """The INT8 threshold that puts the most windows on the same side as FP32 does at ``threshold_fp32``.

    INT8 adds a roughly constant error floor to small reconstruction errors, so
    a multiplicative carry-over of the FP32 threshold can land far off when the
    normal errors are small (few training rows). Matching decisions on paired
    windows (held-back ones and probes around the threshold) avoids that.

    >>> e32 = np.linspace(0.0, 2.0, 201); e8 = e32 + 0.3
    >>> 1.29 < matched_threshold(e32, e8, 1.0) < 1.32
    True
    """
    e32, e8 = np.asarray(e32, dtype=np.float64), np.asarray(e8, dtype=np.float64)
    over = e32 > threshold_fp32
    order = np.argsort(e8)
    # Threshold just above the k smallest INT8 errors: disagreements = over among them + not over above them.
    over_sorted = over[order]
    over_below = np.concatenate([[0], np.cumsum(over_sorted)])
    under_above = (~over_sorted)[::-1].cumsum()[::-1]
    under_above = np.concatenate([under_above, [0]])
    k = int(np.argmin(over_below + under_above))
    sorted_e8 = e8[order]
    if k == 0:
        return float(sorted_e8[0] * 0.999) if sorted_e8[0] > 0 else float(threshold_fp32)
    if k == len(sorted_e8):
        return float(sorted_e8[-1] * 1.001)
    return float((sorted_e8[k - 1] + sorted_e8[k]) / 2)


# ---------------------------------------------------------------- one training run's calibration

@dataclass(frozen=True)
class ThresholdPolicy:
    """How a threshold is found from unseen errors: the threshold fields of ``TrainSettings``.

    >>> ThresholdPolicy(method="quantile", risk=0.5, margin=1.0).pooled(np.array([1.0, 2.0, 3.0]))[0]
    2.0
    """

    method: Literal["pot", "quantile"] = "pot"
    risk: float = 1e-3
    init_quantile: float = 0.98
    margin: float = 1.1
    rule: Literal["pooled", "next_block"] = "next_block"
    block_risk: float = 0.01
    block_confidence: float = 0.95

    def pooled(self, errors: np.ndarray) -> tuple[float, dict]:
        """The tail rule on all ``errors`` together (:func:`calibrate_threshold`)."""
        return calibrate_threshold(errors, self.method, self.risk, self.init_quantile, self.margin)

    def next_block(self, blocks: Sequence[np.ndarray]) -> tuple[float, dict]:
        """The bound for one more block (:func:`next_block_threshold`)."""
        return next_block_threshold(blocks, self.block_risk, self.block_confidence)


@dataclass(frozen=True)
class Calibration:
    """One model's threshold, how it was found, and the unseen blocks it was found on.

    ``info`` is what ``bundle.json`` records under ``threshold_calibration``;
    ``blocks`` and ``block_thresholds`` stay in training, where the promise of
    several models alarming together is worked out (:func:`expected_exceedance`).
    """

    threshold: float                      # scaled: the one the bundle uses
    info: dict
    blocks: list[np.ndarray]              # each unseen block's errors, averaged over the horizon
    block_thresholds: list[float] | None  # each block's threshold calibrated without it (>= 3 blocks)

    def with_threshold(self, threshold: float, **info) -> Calibration:
        """The same calibration with another threshold, ``info`` appended to its record."""
        return Calibration(threshold, {**self.info, **info}, self.blocks, self.block_thresholds)


@dataclass(frozen=True)
class BlockCalibrator:
    """Calibrates every model of one training run on the same unseen time blocks.

    The blocks are the out-of-fold errors (``oof_sizes`` windows each, none
    without cross-validation) followed by the held-back part; a model's errors
    are averaged over ``horizon`` consecutive windows, as its live score is.

    >>> policy = ThresholdPolicy(method="quantile", risk=0.01, margin=1.0)
    >>> oof = np.concatenate([np.ones(50), np.full(50, 2.0)])  # two out-of-fold blocks, then the held-back
    >>> c = BlockCalibrator(policy, [50, 50], cross_validated=True).calibrate(np.ones(50), oof)
    >>> c.info["rule"], c.threshold > 2.0, c.info["calibration"], len(c.blocks)
    ('next_block', True, 'cv', 3)
    >>> c.block_thresholds, c.info["next_block_window_exceedance"]  # the 2.0 block over the others' threshold
    ([2.0, 1.0, 2.0], [0.0, 1.0, 0.0])
    """

    policy: ThresholdPolicy
    oof_sizes: list[int]
    cross_validated: bool
    scale: float = 1.0  # the drift allowance every threshold is multiplied by (threshold_scale)

    def calibrate(self, held_errors: np.ndarray, oof_errors: np.ndarray, horizon: int = 1,
                  scale: float | None = None) -> Calibration:
        """The threshold of a model whose held-back and out-of-fold errors these are (``scale``: its own
        allowance, default the run's)."""
        scale = self.scale if scale is None else scale
        blocks = self.unseen_blocks(held_errors, oof_errors, horizon)
        threshold, info = self._threshold(blocks)
        info.update(calibration="cv" if self.cross_validated else "holdout", horizon=horizon,
                    holdout_windows=int(len(held_errors)), oof_windows=int(len(oof_errors)),
                    cv_blocks=self.oof_sizes, threshold_scale=scale, unscaled_threshold=threshold)
        final = threshold * scale
        info.update(self._exceedance(blocks, final, info["rule"]))
        block_thresholds = None
        if len(blocks) >= 3:
            shares, block_thresholds = self._leave_one_block_out(blocks, scale)
            info["next_block_window_exceedance"] = [round(v, 5) for v in shares]
        return Calibration(final, info, blocks, block_thresholds)

    def unseen_blocks(self, held_errors: np.ndarray, oof_errors: np.ndarray, horizon: int) -> list[np.ndarray]:
        """Out-of-fold blocks, then the held-back part, each averaged over ``horizon`` windows (empty ones
        dropped)."""
        blocks = np.split(oof_errors, np.cumsum(self.oof_sizes)[:-1]) if len(oof_errors) else []
        blocks = [moving_mean(b, horizon) for b in [*blocks, held_errors]]
        return [b for b in blocks if len(b)]

    def _threshold(self, blocks: list[np.ndarray]) -> tuple[float, dict]:
        """The pooled threshold, raised to the next-block bound where that rule is asked for and higher."""
        threshold, info = self.policy.pooled(np.concatenate(blocks))
        info["rule"] = "pooled"
        if self.policy.rule == "next_block" and len(blocks) >= 3:
            bound, bound_info = self.policy.next_block(blocks)
            info.update(next_block_bound=bound_info, pooled_threshold=threshold)
            if bound > threshold:
                threshold, info["rule"] = bound, "next_block"
        return threshold, info

    def _exceedance(self, blocks: list[np.ndarray], threshold: float, rule: str) -> dict:
        # What the threshold promises on normal data the model did not see: the design rate
        # (the tail fit's risk) and the share over it of each unseen time block; their spread
        # shows how much a new day may differ.
        return {"expected_window_exceedance": self.policy.risk if rule == "pooled" else self.policy.block_risk,
                "unseen_window_exceedance": float(np.mean(np.concatenate(blocks) > threshold)),
                "block_window_exceedance": [round(float(np.mean(b > threshold)), 5) for b in blocks]}

    def _leave_one_block_out(self, blocks: list[np.ndarray], scale: float) -> tuple[list[float], list[float]]:
        """Each block against a threshold calibrated without it: how a threshold learned from some
        stretches of normal operation fares on the next one. Returns the shares over and the thresholds."""
        shares, thresholds = [], []
        for k in range(len(blocks)):
            others = [b for i, b in enumerate(blocks) if i != k]
            th_k = self.policy.pooled(np.concatenate(others))[0]
            if self.policy.rule == "next_block" and len(blocks) >= 4:
                th_k = max(th_k, self.policy.next_block(others)[0])
            shares.append(float(np.mean(blocks[k] > th_k * scale)))
            thresholds.append(th_k * scale)
        return shares, thresholds


def expected_exceedance(autoencoder: Calibration, members: dict[str, Calibration]) -> dict:
    """``bundle.json``'s ``expected_window_exceedance``: the share of normal windows over the threshold.

    The detector alarms when any model is past its own threshold, so with
    members the unseen blocks' shares are those of windows over any threshold.
    """
    info = autoencoder.info
    expected = {"design": info["expected_window_exceedance"], "rule": info["rule"],
                "unseen_blocks": info["unseen_window_exceedance"],
                "worst_block": max(info["block_window_exceedance"]),
                "next_block": _mean_next_block(info), "next_block_worst": _worst_next_block(info)}
    if not members:
        return expected
    expected["by_model"] = {"autoencoder": dict(expected), **{
        name: {"unseen_blocks": m.info["unseen_window_exceedance"], "next_block": _mean_next_block(m.info)}
        for name, m in members.items()}}
    models = [autoencoder, *members.values()]
    n_blocks = len(autoencoder.blocks)  # the same blocks for every model, by construction
    either = [np.any([m.blocks[i] > m.threshold for m in models], axis=0) for i in range(n_blocks)]
    expected.update(unseen_blocks=float(np.mean(np.concatenate(either))),
                    worst_block=max(float(np.mean(e)) for e in either))
    if all(m.block_thresholds is not None for m in models):
        nb = [float(np.mean(np.any([m.blocks[i] > m.block_thresholds[i] for m in models], axis=0)))
              for i in range(n_blocks)]
        expected.update(next_block=float(np.mean(nb)), next_block_worst=max(nb))
    return expected


def _mean_next_block(info: dict) -> float | None:
    shares = info.get("next_block_window_exceedance")
    return None if shares is None else float(np.mean(shares))


def _worst_next_block(info: dict) -> float | None:
    shares = info.get("next_block_window_exceedance")
    return None if shares is None else max(shares)


def expected_false_episodes(autoencoder: Calibration, members: dict[str, Calibration], *, stride: int,
                            period_s: float, decider: Callable[[], "Decider"]) -> dict:
    """``bundle.json``'s ``expected_false_episodes``: alarms an operator would see per week of normal running.

    Each unseen block (see :class:`BlockCalibrator`) is replayed, one decided window
    every ``stride`` rows as the runtime decides, through a fresh ``decider`` (the
    appliance's debounce and clear level) on the score the live path computes: the
    largest ratio of any model to its threshold. Where every model has leave-one-block-out
    thresholds (>= 3 blocks) each block is judged against thresholds found without it, so
    the count is what a threshold learned from some days does on the next one; otherwise
    against the bundle's thresholds (optimistic, said in ``thresholds``). No label is used:
    the blocks are normal training data the models did not fit.

    >>> c = Calibration(1.0, {}, [np.r_[np.zeros(20), np.full(6, 2.0), np.zeros(20)]] * 3, [1.0] * 3)
    >>> from appliance.actions.decide import Decider
    >>> e = expected_false_episodes(c, {}, stride=1, period_s=3600.0, decider=Decider)
    >>> e["episodes"], e["per_week"], e["thresholds"]  # 3 in 138 h
    (3, 3.652, 'next_block')
    """
    models = [autoencoder, *members.values()]
    next_block = all(m.block_thresholds is not None for m in models)
    episodes, decided = [], 0
    for i in range(len(autoencoder.blocks)):
        ratio = np.max([m.blocks[i] / (m.block_thresholds[i] if next_block else m.threshold) for m in models],
                       axis=0)[::max(1, stride)]
        d = decider()
        episodes.append(sum(d.update_ratio(float(r)).change == "raised" for r in ratio))
        decided += len(ratio)
    hours = decided * max(1, stride) * period_s / 3600.0
    if hours <= 0:
        return {"episodes": 0, "by_block": [], "hours": 0.0, "per_week": None, "per_day": None,
                "per_week_upper95": None, "thresholds": "next_block" if next_block else "bundle"}
    n = int(sum(episodes))
    # A few hundred rows hold a day or so: zero episodes in it is weak evidence. The one-sided 95 %
    # Poisson bound says how many per week the same count could still come from.
    upper = float(stats.chi2.ppf(0.95, 2 * (n + 1)) / 2.0) * 168.0 / hours
    return {"episodes": n, "by_block": [int(e) for e in episodes], "hours": round(hours, 2),
            "per_week": round(n * 168.0 / hours, 3), "per_day": round(n * 24.0 / hours, 3),
            "per_week_upper95": round(upper, 3), "thresholds": "next_block" if next_block else "bundle"}
