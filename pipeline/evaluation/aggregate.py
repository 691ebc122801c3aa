"""Aggregates over seeds with their uncertainty, as rliable computes them (Agarwal et al., "Deep
Reinforcement Learning at the Edge of the Statistical Precipice", NeurIPS 2021).

Scores are ``(runs, tasks)`` matrices: one row per run (a PPO seed), one column per task (here one
metric, or one per evaluation set); a 1-D array is ``(runs,)``, one task. :func:`iqm` is the
interquartile mean over every score, :func:`probability_of_improvement` the chance that a run of X beats
a run of Y (Mann-Whitney's U over ``n_x * n_y`` pairs, ties half, averaged over tasks), and
:func:`stratified_bootstrap` the percentile interval of any such statistic: each resample redraws the
runs of every task (a stratum) with replacement, independently per score matrix. Comparing two systems on
the *same items* is :mod:`pipeline.evaluation.bootstrap`'s paired bootstrap instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Scores = npt.ArrayLike


@dataclass(frozen=True)
class Interval:
    """A statistic on the observed scores and its stratified-bootstrap percentile interval."""

    estimate: float
    low: float
    """``alpha/2`` quantile of the resampled statistic (linear interpolation)."""
    high: float
    """``1 − alpha/2`` quantile."""
    n_resamples: int
    alpha: float

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside ``[low, high]``."""
        return not self.low <= value <= self.high


def score_matrix(scores: Scores, name: str = "scores") -> FloatArray:
    """``scores`` as a finite ``(runs, tasks)`` float matrix (a 1-D array is one task)."""
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must be (runs, tasks) with at least one of each, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(
            f"{name} has a non-finite score at (run, task) {tuple(np.argwhere(~np.isfinite(matrix))[0])}"
        )
    return matrix


def iqm(scores: Scores) -> float:
    """The interquartile mean: the mean of every score after ``floor(n / 4)`` of the ``n`` are cut from
    each end of their sorted order (``scipy.stats.trim_mean(scores, 0.25, axis=None)``, rliable's
    ``aggregate_iqm``). Robust to one outlying seed, unlike the mean; less noisy than the median."""
    flat = np.sort(score_matrix(scores).ravel())
    cut = int(0.25 * flat.size)
    return float(flat[cut : flat.size - cut].mean())


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """``P(X > Y) + ½ P(X = Y)`` for a run X of ``x`` and a run Y of ``y`` on the same task, averaged
    over tasks: per task ``U / (n_x * n_y)`` with Mann-Whitney's ``U`` counting the pairs where x wins
    (ties ½). 0.5: neither is better; rliable's ``probability_of_improvement``."""
    xm, ym = score_matrix(x, "x"), score_matrix(y, "y")
    if xm.shape[1] != ym.shape[1]:
        raise ValueError(f"x has {xm.shape[1]} tasks but y has {ym.shape[1]}; score both on the same tasks")
    # (n_x, n_y, tasks): every pair of runs, task by task
    wins = (xm[:, None, :] > ym[None, :, :]) + 0.5 * (xm[:, None, :] == ym[None, :, :])
    return float(wins.mean(axis=(0, 1)).mean())


def stratified_bootstrap(
    statistic: Callable[..., float],
    *scores: Scores,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """``statistic(*scores)`` with its percentile interval over ``n_resamples`` stratified resamples.

    Each resample redraws, for every score matrix independently and for every task (column) of it, as
    many runs as it has, with replacement from that task's runs; ``statistic`` gets the resampled
    matrices in the order given (e.g. ``stratified_bootstrap(iqm, seeds)``,
    ``stratified_bootstrap(probability_of_improvement, trial, control)``). Seeded, so the same call gives
    the same interval. With one run per task every resample is the observed matrix (a zero-width
    interval: the data say nothing about the spread).
    """
    if not scores:
        raise ValueError("give at least one score matrix")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1 (2000 is usual), got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (0.05 for a 95% interval), got {alpha}")
    matrices = [score_matrix(s, f"scores[{i}]") for i, s in enumerate(scores)]
    rng = np.random.default_rng(seed)
    columns = [np.arange(m.shape[1])[None, :] for m in matrices]
    values = np.empty(n_resamples, dtype=np.float64)
    for r in range(n_resamples):
        resampled = [
            m[rng.integers(0, m.shape[0], size=m.shape), c] for m, c in zip(matrices, columns, strict=True)
        ]
        values[r] = statistic(*resampled)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return Interval(
        estimate=float(statistic(*matrices)),
        low=float(low),
        high=float(high),
        n_resamples=n_resamples,
        alpha=alpha,
    )
