"""What a sweep optimises: a reported metric and its direction, constraints on other metrics (hard, or
as a penalty the scheduler sees), and the extra objectives of a multi-objective search. No Ray here.

``Objective.parse("dev/emp_f1", "max", constraints=["rollout/kl<=2"], penalty=5)`` checks every name
against what a trial reports: the dev metrics and the PPO rows every report, ``eval/*`` only at the end
(so a scheduler cannot compare trials on them, but a constraint can hold on them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from pipeline.config.schema import ConfigError

Mode = Literal["max", "min"]

DEV_METRICS = ("dev/emp_f1", "dev/er_f1", "dev/ip_f1", "dev/ex_f1", "dev/perplexity", "dev/dist2")
"""Reported every ``report_every`` iterations (and last): what a scheduler can compare trials on."""
PPO_PREFIXES = ("reward/", "rollout/", "ppo/", "perf/")
"""PPO metric rows, also in every report."""
PENALISED = "objective"
"""The reported key of the penalised metric, which the scheduler and search use when ``penalty > 0``."""

_CONSTRAINT = re.compile(r"^\s*([\w/.\-]+)\s*(<=|>=)\s*([-+0-9.eE]+|inf)\s*$")


class ObjectiveError(ConfigError):
    """A metric, mode or constraint of a sweep that no trial reports or that cannot be read."""


def check_reported(metric: str, *, option: str = "--metric", final_ok: bool = False) -> None:
    """``metric`` must be in every report (a scheduler compares trials mid-run); ``eval/*`` only when
    ``final_ok`` (read once, at the end).

    Raises:
        ObjectiveError: naming the option, the metric and what to use instead.
    """
    if metric in DEV_METRICS or metric.startswith(PPO_PREFIXES):
        return
    if metric.startswith("eval/"):
        if final_ok:
            return
        raise ObjectiveError(
            f"{option} {metric}: the full evaluation is reported once, at the end, but the scheduler compares "
            f"trials every report. Fix: use {metric.replace('eval/', 'dev/')} (the same measure on a fixed "
            "dev slice, reported every time); the table still shows the eval/ columns."
        )
    raise ObjectiveError(
        f"{option} {metric}: not reported by a trial. Fix: one of {list(DEV_METRICS)}, a PPO metric "
        f"({', '.join(p + '*' for p in PPO_PREFIXES)}, e.g. reward/score, rollout/kl)"
        + (" or eval/* (the final evaluation)." if final_ok else ".")
    )


def _mode(value: str, option: str) -> Mode:
    if value not in ("max", "min"):
        raise ObjectiveError(f"{option} {value!r}: the mode is max or min.")
    return cast(Mode, value)


@dataclass(frozen=True)
class Constraint:
    """``key <= bound`` or ``key >= bound`` on a trial's reported value."""

    key: str
    op: Literal["<=", ">="]
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """``"rollout/kl<=2"`` (spaces allowed); the key is checked with :func:`check_reported`.

        Raises:
            ObjectiveError: not of the form ``KEY<=NUMBER`` / ``KEY>=NUMBER``, or a key no trial reports.
        """
        match = _CONSTRAINT.match(text)
        if match is None:
            raise ObjectiveError(
                f"--constraint {text!r}: write KEY<=NUMBER or KEY>=NUMBER, e.g. rollout/kl<=2 or "
                "eval/perplexity<=500."
            )
        key, op, bound = match.groups()
        check_reported(key, option="--constraint", final_ok=True)
        value = float(bound)
        if math.isnan(value):
            raise ObjectiveError(f"--constraint {text!r}: the bound must be a number.")
        return cls(key, cast(Literal["<=", ">="], op), value)

    def violation(self, value: Any) -> float:
        """How far ``value`` is on the wrong side of the bound (0 when it holds; inf when not a number)."""
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return math.inf
        gap = value - self.bound if self.op == "<=" else self.bound - value
        return max(0.0, float(gap))

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Objective:
    """The sweep's target: ``metric`` in ``mode``, subject to ``constraints``; with ``penalty > 0`` each
    report also carries :data:`PENALISED` = metric worsened by ``penalty`` × the violations known so far,
    and the scheduler ranks trials on that. ``also`` are extra objectives of a multi-objective search."""

    metric: str
    mode: Mode = "max"
    constraints: tuple[Constraint, ...] = ()
    penalty: float = 0.0
    also: tuple[tuple[str, Mode], ...] = ()

    @classmethod
    def parse(
        cls,
        metric: str,
        mode: str = "max",
        *,
        constraints: Iterable[str] = (),
        penalty: float = 0.0,
        also: Iterable[str] = (),
    ) -> Objective:
        """Check every name and build the objective; ``also`` items are ``METRIC:MODE``.

        Raises:
            ObjectiveError: an unreported metric, a bad mode or constraint, a negative penalty, or a
                penalty without constraints.
        """
        check_reported(metric)
        extra: list[tuple[str, Mode]] = []
        for item in also:
            name, _, extra_mode = item.partition(":")
            check_reported(name, option="--objective")
            extra.append((name, _mode(extra_mode or "max", f"--objective {item}")))
        if not math.isfinite(penalty) or penalty < 0:
            raise ObjectiveError(f"--penalty {penalty}: must be a finite number >= 0.")
        parsed = tuple(Constraint.parse(c) for c in constraints)
        if penalty > 0 and not parsed:
            raise ObjectiveError(
                f"--penalty {penalty}: a penalty weighs constraint violations, and there is no --constraint. "
                "Fix: add e.g. --constraint rollout/kl<=2, or drop --penalty."
            )
        return cls(metric, _mode(mode, "--mode"), parsed, float(penalty), tuple(extra))

    @property
    def ranked_metric(self) -> str:
        """What the scheduler and a single-objective search rank trials on."""
        return PENALISED if self.penalty > 0 else self.metric

    @property
    def metrics(self) -> list[str]:
        """The search's metrics: the ranked one, then the extra objectives."""
        return [self.ranked_metric, *(m for m, _ in self.also)]

    @property
    def modes(self) -> list[Mode]:
        """The directions of :attr:`metrics`."""
        return [self.mode, *(m for _, m in self.also)]

    def penalised(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """``{PENALISED: value}`` for a report (empty without a penalty): the metric made worse by
        ``penalty`` × the summed violations of the constraints whose key the report has (``eval/*``
        constraints count from the final report on)."""
        if self.penalty <= 0:
            return {}
        value = float(metrics[self.metric])
        violations = sum(min(c.violation(metrics[c.key]), 1e9) for c in self.constraints if c.key in metrics)
        sign = -1.0 if self.mode == "max" else 1.0
        return {PENALISED: value + sign * self.penalty * violations}

    def feasible(self, row: Mapping[str, Any]) -> bool:
        """Whether every constraint holds on ``row`` (a missing or non-numeric value does not hold)."""
        return all(c.violation(row.get(c.key)) == 0 for c in self.constraints)

    def best(self, rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The completed, feasible row with the best finite :attr:`metric`, or None."""
        candidates = [
            r
            for r in rows
            if r.get("status") == "completed" and self.feasible(r) and _finite(r.get(self.metric))
        ]
        if not candidates:
            return None
        pick = max if self.mode == "max" else min
        return pick(candidates, key=lambda r: float(r[self.metric]))

    def describe(self) -> str:
        """``dev/emp_f1 (max) subject to rollout/kl <= 2 (penalty 5)``."""
        text = f"{self.metric} ({self.mode})"
        if self.also:
            text += " and " + ", ".join(f"{m} ({d})" for m, d in self.also)
        if self.constraints:
            text += " subject to " + ", ".join(str(c) for c in self.constraints)
            if self.penalty > 0:
                text += f" (penalty {self.penalty:g} per unit of violation)"
        return text


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
