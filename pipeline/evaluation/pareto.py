"""Pareto fronts of sweep trials: which trials no other beats on two (or more) metrics at once, and the
readable names of the metrics a sweep reports. Rows are ``trials.parquet`` records."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["max", "min"]

NAMES: dict[str, tuple[str, int]] = {
    "emp_f1": ("Emp-F1", 2),
    "er_f1": ("ER F1", 2),
    "ip_f1": ("IP F1", 2),
    "ex_f1": ("EX F1", 2),
    "perplexity": ("perplexity", 2),
    "dist2": ("Dist-2", 4),
    "kl": ("KL per response (nats)", 3),
    "kl_k3": ("KL per response, k3 (nats)", 3),
    "kl_coef": ("KL coefficient", 4),
    "score": ("reward score", 3),
}
"""Readable name and decimals of a metric, by the part of its key after the namespace."""

SPLITS = {"eval": "valid", "dev": "dev slice"}
"""What ``eval/`` and ``dev/`` metrics were measured on (the full evaluation, the fixed dev slice)."""

OBJECTIVE: tuple[str, Mode] = ("eval/emp_f1", "max")
AGAINST: tuple[tuple[str, Mode], ...] = (("rollout/kl_k3", "min"), ("eval/perplexity", "min"))
"""The Pareto pairs of the report: :data:`OBJECTIVE` against each of these. KL is the k3 estimate, which every
trial measures whatever estimator shapes its reward (``rollout/kl`` is that estimator's: k1 and k3 of one policy
differ, so trials with different estimators are not comparable on it)."""


@dataclass(frozen=True)
class Front:
    """The Pareto front of ``y`` against ``x``, the row keys after the dev fallback (``fallbacks`` are
    the ones that replaced an ``eval/`` key): ``points`` index the rows with both values, ``front`` those
    on the front."""

    y: str
    y_mode: Mode
    x: str
    x_mode: Mode
    fallbacks: tuple[str, ...]
    points: tuple[int, ...]
    front: tuple[int, ...]

    def label(self, key: str) -> str:
        """The axis label of ``key`` (``x`` or ``y``), saying when it is a dev fallback."""
        return metric_label(key, fallback=key in self.fallbacks)


def pareto_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, Mode]]) -> list[int]:
    """Indices (ascending) of the rows not dominated on ``objectives`` (``(key, "max" | "min")``).

    A row is dominated when another is at least as good on every objective and strictly better on one;
    identical rows are both kept. Rows with a missing or non-finite objective value are never on it.

    Raises:
        ValueError: a mode other than ``max`` or ``min``.
    """
    signs = []
    for key, mode in objectives:
        if mode not in ("max", "min"):
            raise ValueError(f"objective {key}: mode {mode!r} is not 'max' or 'min'")
        signs.append(1.0 if mode == "max" else -1.0)
    points = {
        i: [sign * float(r[key]) for sign, (key, _) in zip(signs, objectives, strict=True)]
        for i, r in enumerate(rows)
        if all(is_finite(r.get(key)) for key, _ in objectives)
    }
    return [i for i, p in points.items() if not any(_dominates(q, p) for q in points.values())]


def pareto_fronts(
    rows: Sequence[Mapping[str, Any]],
    *,
    objective: tuple[str, Mode] = OBJECTIVE,
    against: Sequence[tuple[str, Mode]] = AGAINST,
) -> list[Front]:
    """The front of ``objective`` against each ``against`` metric that some row has both values of.

    An ``eval/`` key no row has a value for (stopped trials report ``dev/*`` only) falls back to its
    ``dev/`` twin."""
    fronts = []
    for key, mode in against:
        y, x = _resolve(rows, objective[0]), _resolve(rows, key)
        points = tuple(i for i, r in enumerate(rows) if is_finite(r.get(y)) and is_finite(r.get(x)))
        if points:
            fallbacks = tuple(k for k, asked in ((y, objective[0]), (x, key)) if k != asked)
            front = tuple(pareto_front(rows, [(y, objective[1]), (x, mode)]))
            fronts.append(Front(y, objective[1], x, mode, fallbacks, points, front))
    return fronts


def metric_label(key: str, *, fallback: bool = False) -> str:
    """A readable name of a metric key, e.g. ``eval/emp_f1`` -> ``Emp-F1 (valid)``; ``fallback`` adds
    that the ``dev/`` value stands in for a missing ``eval/`` one."""
    namespace, _, name = key.partition("/")
    label = NAMES.get(name, (name or key, 3))[0]
    split = SPLITS.get(namespace)
    if split is None:
        return label
    return f"{label} ({split}{'; no valid scores' if fallback else ''})"


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def _resolve(rows: Sequence[Mapping[str, Any]], key: str) -> str:
    if key.startswith("eval/") and not any(is_finite(r.get(key)) for r in rows):
        return "dev/" + key.removeprefix("eval/")
    return key


def is_finite(value: Any) -> bool:
    """A real number (not bool), neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
