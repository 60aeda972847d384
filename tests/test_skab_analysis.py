"""The SKAB analysis benchmark's bookkeeping: every error row in exactly one kind, the per-file oracle exact."""

from __future__ import annotations

import itertools

import numpy as np

from benchmarks.skab_analysis import ERROR_KINDS, SCALES, Trace, error_kinds, f1_of, per_file_oracle


def test_every_error_row_falls_in_exactly_one_kind():
    #        head (FP at 1)  | anomaly 4..9, first alarm at 6, dropout at 8 | hang-over 10..13, re-raise 16
    label = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    pred = np.array([0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 0])
    kinds = error_kinds(label, pred, structural_hangover=2)
    assert kinds["d_normal_head"].nonzero()[0].tolist() == [1]
    assert kinds["a_start_delay"].nonzero()[0].tolist() == [4, 5]
    assert kinds["a2_dropout"].nonzero()[0].tolist() == [8]
    assert kinds["b_hangover_window"].nonzero()[0].tolist() == [10, 11]
    assert kinds["b_hangover_beyond"].nonzero()[0].tolist() == [12, 13]
    assert kinds["e_after_episode"].nonzero()[0].tolist() == [16]
    assert not kinds["c_missed_episode"].any()
    counts = sum(kinds[k].astype(int) for k in ERROR_KINDS)
    assert (counts == (label != pred)).all()


def test_a_missed_episode_is_all_its_rows():
    label = np.array([0, 1, 1, 1, 0])
    kinds = error_kinds(label, np.zeros(5, dtype=np.uint8), structural_hangover=3)
    assert kinds["c_missed_episode"].nonzero()[0].tolist() == [1, 2, 3]


def test_per_file_oracle_finds_the_best_pooled_f1():
    rng = np.random.default_rng(3)
    # Three files, four multipliers each: (tp, fp, fn, tn) per multiplier.
    counts = []
    for _ in range(3):
        tp = rng.integers(0, 50, 4)
        fp = rng.integers(0, 50, 4)
        counts.append(np.stack([tp, fp, 50 - tp, 50 - fp], axis=1).astype(float))
    _, best = per_file_oracle(counts)
    brute = max(f1_of(dict(zip(("tp", "fp", "fn", "tn"), sum(c[i] for c, i in zip(counts, pick)))))
                for pick in itertools.product(range(4), repeat=3))
    assert abs(best["f1"] - round(brute, 4)) < 1e-4


def test_replayed_decisions_follow_the_threshold_multiplier():
    t_end = np.arange(10.0, 40.0)
    ratio = np.where((t_end >= 20) & (t_end < 30), 1.5, 0.5)
    trace = Trace("f", t_end, ratio, np.arange(10.0, 40.0), (ratio > 1).astype(np.uint8))
    assert trace.decided(1.0).sum() > 0
    assert trace.decided(2.0).sum() == 0
    assert SCALES[0] < 1.0 < SCALES[-1]
