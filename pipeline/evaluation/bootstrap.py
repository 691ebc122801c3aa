"""Paired bootstrap resampling (Koehn, 2004) for comparing two systems scored on the same items.

One resample draws N item indices with replacement and scores *both* systems on them, so item
difficulty cancels out. Works for item-level metrics (mean reward) and corpus-level ones (Dist-n,
BLEU from per-item statistics, weighted F1); :func:`paired_bootstrap_mean` is the vectorised mean case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import TypedDict, TypeVar

import numpy as np
import numpy.typing as npt

from pipeline.progress import Progress

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

SystemData = TypeVar("SystemData", bound=Sized)

_BLOCK_ELEMENTS = 1 << 22
"""Resample indices are drawn in (rows, N) blocks of at most this many entries (32 MiB of int64)."""


class BootstrapResult(TypedDict):
    """Outcome of a paired bootstrap; all metric values are in the metric's own units."""

    metric_a: float
    """metric(a) on all N items."""
    metric_b: float
    """metric(b) on all N items."""
    difference: float
    """Observed ``metric_b − metric_a`` on all N items."""
    ci_low: float
    """``alpha/2`` quantile of the resampled differences (percentile interval, linear interpolation)."""
    ci_high: float
    """``1 − alpha/2`` quantile of the resampled differences."""
    std_error: float
    """Standard deviation of the resampled differences."""
    p_value: float
    """Fraction of resamples whose difference is ``<= 0`` when ``difference > 0``, ``>= 0`` when
    ``difference < 0``, and 1.0 when ``difference == 0``: how often b fails to beat a (ties count)."""
    n_items: int
    n_resamples: int
    alpha: float
    seed: int


def paired_bootstrap(
    metric_fn: Callable[[SystemData, IntArray], float],
    a: SystemData,
    b: SystemData,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Observed ``metric_fn(b) − metric_fn(a)`` with a percentile CI and sign-flip p-value.

    ``a`` and ``b`` hold one entry per item, aligned (``len(a) == len(b) == N``): arrays of per-item
    scores, lists of responses, :func:`pipeline.evaluation.text.bleu_stats` matrices ``(N, 10)``, stacked
    predicted levels ``(N, 3)``. ``metric_fn(data, indices)`` scores one system on the items
    ``indices`` (``(N,)`` int64, repeats allowed) and must treat a repeated index as a repeated item,
    e.g. ``lambda texts, idx: distinct_n([texts[i] for i in idx], 2)`` or
    ``lambda stats, idx: bleu_from_stats(stats[idx])["bleu4"]``. Shared inputs (references, gold
    levels) go in the closure.

    Each of the ``n_resamples`` resamples draws N indices uniformly with replacement from a
    ``numpy.random.default_rng(seed)`` stream and computes ``d* = metric(b, idx) − metric(a, idx)``;
    the CI is ``quantile(d*, [alpha/2, 1 − alpha/2])`` and the p-value is defined in
    :class:`BootstrapResult`. Non-additive metrics (Dist-n) drop under resampling because repeated
    items repeat n-grams; both systems share each resample, so the difference stays comparable.
    """
    n_items = _check_args(a, b, n_resamples=n_resamples, alpha=alpha)
    everything = np.arange(n_items, dtype=np.int64)
    metric_a, metric_b = float(metric_fn(a, everything)), float(metric_fn(b, everything))
    scores = np.empty((2, n_resamples), dtype=np.float64)
    row = 0
    with Progress("paired bootstrap", n_resamples, unit="resample") as progress:
        for block in _index_blocks(np.random.default_rng(seed), n_items, n_resamples):
            for indices in block:
                scores[0, row], scores[1, row] = metric_fn(a, indices), metric_fn(b, indices)
                row += 1
                progress.update()
    bad = np.argwhere(~np.isfinite(scores))
    if bad.size:
        system, resample = bad[0]
        raise ValueError(
            f"metric_fn returned {scores[system, resample]} for system {'ab'[system]} on resample {resample}; "
            "it must be finite on every resample (return 0.0 where the metric is undefined)"
        )
    return _summarise(metric_a, metric_b, scores[1] - scores[0], n_items=n_items, seed=seed, alpha=alpha)


def paired_bootstrap_mean(
    a: Sequence[float] | FloatArray,
    b: Sequence[float] | FloatArray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """:func:`paired_bootstrap` of the mean of per-item scores ``(N,)``, vectorised over resamples.

    Draws the same resamples as ``paired_bootstrap(lambda x, idx: x[idx].mean(), a, b)`` with the
    same seed, so the two agree up to float rounding.
    """
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, arr in (("a", a_arr), ("b", b_arr)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be one score per item, shape (N,), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} has a non-finite score at item {int(np.argmin(np.isfinite(arr)))}")
    n_items = _check_args(a_arr, b_arr, n_resamples=n_resamples, alpha=alpha)
    delta = b_arr - a_arr
    diffs = np.concatenate(
        [
            delta[block].mean(axis=1)
            for block in _index_blocks(np.random.default_rng(seed), n_items, n_resamples)
        ]
    )
    return _summarise(
        float(a_arr.mean()), float(b_arr.mean()), diffs, n_items=n_items, seed=seed, alpha=alpha
    )


def bootstrap_std_error(
    metric_fn: Callable[[IntArray], float],
    n_items: int,
    *,
    size: int | None = None,
    n_resamples: int = 200,
    seed: int = 0,
) -> float:
    """The standard error of a metric on ``size`` items like these ``n_items`` (default: as many): the
    standard deviation of ``metric_fn(indices)`` over ``n_resamples`` draws of ``size`` item indices with
    replacement (``size == n_items``: the bootstrap standard error of the metric on these items; a smaller
    or larger ``size`` predicts it for a slice of that size). NaN below 2 items."""
    size = n_items if size is None else size
    if n_items < 2 or size < 2:
        return math.nan
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    values = [float(metric_fn(rng.integers(0, n_items, size=size))) for _ in range(n_resamples)]
    return float(np.std(values, ddof=1))


def _check_args(a: Sized, b: Sized, *, n_resamples: int, alpha: float) -> int:
    if len(a) != len(b):
        raise ValueError(
            f"a has {len(a)} items but b has {len(b)}; score both systems on the same items, in the same order"
        )
    if len(a) == 0:
        raise ValueError("a and b are empty; the bootstrap needs at least one item")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1 (1000 is usual), got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (0.05 for a 95% interval), got {alpha}")
    return len(a)


def _index_blocks(rng: np.random.Generator, n_items: int, n_resamples: int) -> Iterator[IntArray]:
    """Resample indices ``(rows, n_items)`` block by block; both public functions share this stream."""
    rows = max(1, _BLOCK_ELEMENTS // n_items)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n_items, size=(min(rows, n_resamples - start), n_items), dtype=np.int64)


def _summarise(
    metric_a: float, metric_b: float, diffs: FloatArray, *, n_items: int, seed: int, alpha: float
) -> BootstrapResult:
    observed = metric_b - metric_a
    if observed > 0:
        p_value = float(np.mean(diffs <= 0))
    elif observed < 0:
        p_value = float(np.mean(diffs >= 0))
    else:
        p_value = 1.0
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(
        metric_a=metric_a,
        metric_b=metric_b,
        difference=observed,
        ci_low=float(low),
        ci_high=float(high),
        std_error=float(diffs.std()),
        p_value=p_value,
        n_items=n_items,
        n_resamples=int(diffs.size),
        alpha=alpha,
        seed=seed,
    )
