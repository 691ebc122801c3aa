"""A sweep's confirmation: after the search, its top configurations and the control are evaluated again on
rows of the split that the search never used (:func:`~actors.sweep.trial.partition`: no dev slice, no
trial's final evaluation), each against the control with the evaluate stage's paired bootstrap (the same
examples, the same resamples for every metric). ``best/`` is then chosen by a stated rule: the highest
confirmed Emp-F1 gain whose 95 % interval over the control excludes 0 and whose gold-perplexity cost stays
within the budget; when no configuration passes, ``best/`` is the control and the report says so."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.stages.evaluate import evaluate_stage, load_evaluation_inputs
from jobs.stages.tune.trial import TrialSetup
from pipeline.config.objective import Objective
from pipeline.evaluation.pareto import is_finite, pareto_fronts
from pipeline.evaluation.suite import LabeledSplit
from pipeline.layout import PPODir
from pipeline.storage import fetch

logger = logging.getLogger(__name__)

CONFIRMED = ("emp_f1", "er_f1", "ip_f1", "ex_f1", "perplexity", "dist2")
"""Metrics whose paired difference from the control the confirmation reports."""


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation found: one row per confirmed trial (``trial_id``, ``confirm/<metric>`` with
    ``_low``/``_high``, ``confirm/perplexity_pct``, ``confirm/passes``), the control's and the chosen
    trial's ids (the control when none passed), the rule, and where the evaluation is."""

    split: str
    n_examples: int
    control_id: str
    best_id: str
    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    rule: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether a configuration beat the control under the rule."""
        return self.best_id != self.control_id


def rule_text(budget: float) -> str:
    """The rule ``best/`` is chosen by, as the report states it."""
    return (
        "the highest confirmed Emp-F1 gain over the control whose 95 % paired-bootstrap interval excludes 0 "
        f"and whose gold perplexity is at most {budget:g} % above the control's; none passing: the control"
    )


def candidates(rows: Sequence[Mapping[str, Any]], objective: Objective, top: int) -> list[Mapping[str, Any]]:
    """The trials to confirm: completed, feasible, not the control; the ``top`` best by the objective, then
    the Pareto fronts' trials (Emp-F1 against KL and against perplexity) by Emp-F1, at most ``top`` more."""
    pool = [
        r for r in rows if r.get("status") == "completed" and not r.get("control") and r.get("feasible", True)
    ]
    key, sign = objective.ranked_metric, (-1.0 if objective.mode == "max" else 1.0)
    ranked = sorted(
        (r for r in pool if is_finite(r.get(key))), key=lambda r: (sign * float(r[key]), str(r["trial_id"]))
    )
    picked = ranked[:top]
    eligible = {str(r["trial_id"]) for r in pool} - {str(r["trial_id"]) for r in picked}
    on_fronts = {i for front in pareto_fronts(rows) for i in front.front}
    front_rows = sorted(
        (rows[i] for i in on_fronts if str(rows[i]["trial_id"]) in eligible),
        key=lambda r: (-float(r.get("eval/emp_f1", -math.inf)), str(r["trial_id"])),
    )
    return picked + front_rows[:top]


def decide(
    comparisons: Sequence[Mapping[str, Any]], budget: float
) -> tuple[list[dict[str, Any]], str | None]:
    """The confirmation rows of the evaluate stage's ``comparisons`` (each policy against the control) and
    the trial the rule picks (``None``: none passed)."""
    rows = []
    for comparison in comparisons:
        metrics = comparison["metrics"]
        row: dict[str, Any] = {"trial_id": comparison["policy"]}
        for name in CONFIRMED:
            result = metrics.get(name)
            row[f"confirm/{name}"] = result["difference"] if result else math.nan
            row[f"confirm/{name}_low"] = result["ci_low"] if result else math.nan
            row[f"confirm/{name}_high"] = result["ci_high"] if result else math.nan
        ppl = metrics.get("perplexity")
        cost = 100.0 * ppl["difference"] / ppl["metric_a"] if ppl and ppl["metric_a"] else math.nan
        row["confirm/perplexity_pct"] = cost
        row["confirm/passes"] = bool(row["confirm/emp_f1_low"] > 0 and is_finite(cost) and cost <= budget)
        rows.append(row)
    passing = [r for r in rows if r["confirm/passes"]]
    best = max(passing, key=lambda r: float(r["confirm/emp_f1"]), default=None)
    return rows, None if best is None else str(best["trial_id"])


def confirm_sweep(
    rows: Sequence[Mapping[str, Any]], setup: TrialSetup, confirmation: LabeledSplit
) -> Confirmation | None:
    """Evaluates the control and the :func:`candidates` on ``confirmation`` (rows the search never used)
    into ``sweep/confirm`` and applies the rule; ``None`` when the control did not complete (nothing to
    confirm against: the search's best stands, and the log says so)."""
    started = time.perf_counter()
    settings, sweep = setup.settings, setup.sweep
    control = next((r for r in rows if r.get("control")), None)
    if control is None or control.get("status") != "completed":
        logger.warning(
            "sweep: the control trial did not complete (%s): no confirmation; best/ is the search's best",
            "absent" if control is None else control.get("status"),
        )
        return None
    picked = candidates(rows, setup.objective, settings.confirm_top)
    control_id = str(control["trial_id"])
    policies = [
        (str(r["trial_id"]), fetch(PPODir(sweep.trial(str(r["trial_id"])).ppo).policy))
        for r in [control, *picked]
    ]
    logger.info(
        "sweep: confirming %d configuration(s) against the control %s on %d held-out %s examples",
        len(picked), control_id, len(confirmation), settings.split,
    )  # fmt: skip
    inputs = load_evaluation_inputs(setup.layout, policies=policies, data=confirmation)
    metrics: dict[str, Any] = {}
    evaluate_stage(
        setup.cfg,
        setup.layout.moved(evaluate=sweep.confirm),
        inputs,
        n_resamples=settings.confirm_resamples,
        sinks=[metrics.update],
    )
    confirmed, best = decide(metrics["comparisons"], settings.perplexity_budget)
    return Confirmation(
        split=confirmation.name,
        n_examples=len(confirmation),
        control_id=control_id,
        best_id=best or control_id,
        rows=confirmed,
        rule=rule_text(settings.perplexity_budget),
        folder=sweep.confirm,
        seconds=time.perf_counter() - started,
    )
