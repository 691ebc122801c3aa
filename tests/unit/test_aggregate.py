"""Seed aggregates: hand-computed cases, the scipy functions rliable calls, a reference loop, invariants and
coverage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from pipeline.evaluation.aggregate import iqm, probability_of_improvement, stratified_bootstrap


def test_iqm_by_hand() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # 1, 2 and 7, 8 cut: mean of 3..6
    assert iqm([1, 2, 3, 100]) == 2.5  # the outlier cut
    assert iqm([[1, 2], [3, 4]]) == 2.5  # over runs and tasks together
    assert iqm([7.0]) == 7.0


def test_probability_of_improvement_by_hand() -> None:
    # pairs (x, y): (1, 0) win, (1, 2) loss, (2, 0) win, (2, 2) tie: (1 + 0 + 1 + 0.5) / 4
    assert probability_of_improvement([1, 2], [0, 2]) == 0.625
    assert probability_of_improvement([1, 2], [1, 2]) == 0.5
    assert probability_of_improvement([5, 6, 7], [1, 2]) == 1.0
    # two tasks: 1.0 on the first, 0.0 on the second
    assert probability_of_improvement([[3, 0], [4, 1]], [[1, 5], [2, 6]]) == 0.5


@pytest.mark.parametrize("shape", [(5,), (4, 3), (10, 2), (7, 1)])
def test_against_scipy(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    x, y = rng.normal(size=shape).round(1), rng.normal(0.3, size=(shape[0] + 2, *shape[1:])).round(1)
    assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25, axis=None))
    xm, ym = x.reshape(shape[0], -1), y.reshape(shape[0] + 2, -1)
    u = [
        scipy.stats.mannwhitneyu(xm[:, t], ym[:, t], alternative="greater").statistic
        for t in range(xm.shape[1])
    ]
    assert probability_of_improvement(x, y) == pytest.approx(np.mean(u) / (len(xm) * len(ym)))


def _reference_interval(statistic, matrices, n_resamples, seed, alpha):  # type: ignore[no-untyped-def]
    """rliable's stratified scheme written out: per resample, per matrix, per task, runs drawn one by one."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        resampled = []
        for m in matrices:
            out = np.empty_like(m)
            rows = rng.integers(0, m.shape[0], size=m.shape)
            for run in range(m.shape[0]):
                for task in range(m.shape[1]):
                    out[run, task] = m[rows[run, task], task]
            resampled.append(out)
        values.append(statistic(*resampled))
    return np.quantile(values, [alpha / 2, 1 - alpha / 2])


def test_bootstrap_against_a_reference_loop() -> None:
    """(rliable 1.2.0 itself does not install beside pandas 3: the arch < 8 it pins fails to import
    there, and arch 8 no longer takes its ``random_state``. Its IQM and probability of improvement are
    the scipy functions of ``test_against_scipy``; its intervals are this stratified percentile scheme.)"""
    rng = np.random.default_rng(3)
    trial, control = rng.normal(58, 2, size=(5, 2)), rng.normal(56, 2, size=(4, 2))
    for statistic, matrices in ((iqm, [trial]), (probability_of_improvement, [trial, control])):
        ours = stratified_bootstrap(statistic, *matrices, n_resamples=300, seed=5, alpha=0.1)
        low, high = _reference_interval(statistic, matrices, 300, 5, 0.1)
        assert (ours.low, ours.high) == pytest.approx((low, high))
        assert ours.estimate == pytest.approx(statistic(*matrices))


def test_bootstrap_invariants() -> None:
    same = stratified_bootstrap(iqm, [[3.0, 3.0]] * 4, n_resamples=200)
    assert (same.estimate, same.low, same.high) == (3.0, 3.0, 3.0) and not same.excludes(3.0)
    one_run = stratified_bootstrap(iqm, [[1.0, 9.0]], n_resamples=200)  # nothing to resample
    assert (one_run.low, one_run.high) == (5.0, 5.0)
    scores = np.random.default_rng(0).normal(size=(6, 3))
    a, b = stratified_bootstrap(np.mean, scores, seed=4), stratified_bootstrap(np.mean, scores, seed=4)
    assert a == b  # seeded
    assert a.low < a.estimate < a.high
    # tasks are strata: a task's resampled runs come from that task only (column means stay in its range)
    columns = stratified_bootstrap(lambda s: float(s[:, 1].min()), scores, n_resamples=300)
    assert columns.low >= scores[:, 1].min()


def test_a_95_percent_interval_covers_the_mean_about_95_times_in_100() -> None:
    rng = np.random.default_rng(11)
    covered = sum(
        not stratified_bootstrap(np.mean, rng.normal(size=30), n_resamples=400, seed=k).excludes(0.0)
        for k in range(200)
    )
    assert 180 <= covered <= 198, covered  # percentile intervals run a little narrow at n = 30


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iqm([]), "at least one"),
        (lambda: iqm([1.0, float("nan")]), "non-finite"),
        (lambda: probability_of_improvement([[1, 2]], [[1, 2, 3]]), "same tasks"),
        (lambda: stratified_bootstrap(iqm, [1.0], n_resamples=0), "n_resamples"),
        (lambda: stratified_bootstrap(iqm, [1.0], alpha=1.5), "alpha"),
        (lambda: stratified_bootstrap(iqm), "at least one score matrix"),
    ],
)
def test_bad_input_is_named(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
