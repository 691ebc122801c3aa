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
from pipeline.evaluation.control import configuration_of
from pipeline.evaluation.pareto import is_finite, pareto_fronts
from pipeline.evaluation.suite import LabeledSplit
from pipeline.layout import PPODir
from pipeline.storage import fetch

logger = logging.getLogger(__name__)

CONFIRMED = ("emp_f1", "er_f1", "ip_f1", "ex_f1", "perplexity", "dist2")
"""Metrics whose paired difference from the control the confirmation reports."""


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation found: one row per confirmed configuration (``trial_id``: its name, the ids of
    its seeds' trials joined by ``+``; ``trials``: those ids; ``confirm/<metric>`` with ``_low``/``_high``,
    ``confirm/perplexity_pct``, ``confirm/passes``), the control's trials, the exported trial (the control's
    first when none passed: ``control_id``), the rule, and where the evaluation is."""

    split: str
    n_examples: int
    control_id: str
    best_id: str
    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    rule: str = ""
    seconds: float = 0.0
    control_trials: list[str] = field(default_factory=list)
    """The control's completed trials (one per seed), compared as one configuration."""

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


def candidates(
    rows: Sequence[Mapping[str, Any]], objective: Objective, top: int, keys: Sequence[str] = ()
) -> list[list[Mapping[str, Any]]]:
    """The configurations to confirm, each as its completed, feasible trials (its seeds; best by the
    objective first); never the control. The ``top`` best by the objective (a configuration's mean over its
    seeds), then those with a trial on a Pareto front (Emp-F1 against KL and against perplexity) by their
    best Emp-F1, at most ``top`` more. ``keys``: the swept keys (:func:`configuration_of`; none: every trial
    is its own configuration)."""
    pool = [
        r for r in rows if r.get("status") == "completed" and not r.get("control") and r.get("feasible", True)
    ]
    key, sign = objective.ranked_metric, (-1.0 if objective.mode == "max" else 1.0)
    configurations: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in pool:
        configurations.setdefault(_configuration(r, keys), []).append(r)
    groups = [
        sorted(members, key=lambda r: (sign * _score([r], key), str(r["trial_id"])))
        for members in configurations.values()
    ]
    ranked = sorted(
        (g for g in groups if math.isfinite(_score(g, key))),
        key=lambda g: (sign * _score(g, key), str(g[0]["trial_id"])),
    )
    picked = ranked[:top]
    on_fronts = {str(rows[i]["trial_id"]) for front in pareto_fronts(rows) for i in front.front}
    chosen = {id(g) for g in picked}
    front_groups = sorted(
        (g for g in groups if id(g) not in chosen and on_fronts & {str(r["trial_id"]) for r in g}),
        key=lambda g: (-max(float(r.get("eval/emp_f1", -math.inf)) for r in g), str(g[0]["trial_id"])),
    )
    return picked + front_groups[:top]


def _configuration(row: Mapping[str, Any], keys: Sequence[str]) -> tuple[Any, ...]:
    return configuration_of(row, keys) if keys else (str(row["trial_id"]),)


def _score(trials: Sequence[Mapping[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in trials if is_finite(r.get(key))]
    return sum(values) / len(values) if values else math.nan


def group_name(trials: Sequence[Mapping[str, Any]]) -> str:
    """A configuration's name in the confirmation: its trials' ids, in seed order, joined by ``+``."""
    return "+".join(sorted(str(r["trial_id"]) for r in trials))


def decide(
    comparisons: Sequence[Mapping[str, Any]], budget: float
) -> tuple[list[dict[str, Any]], str | None]:
    """The confirmation rows of the evaluate stage's ``comparisons`` (each configuration against the
    control) and the configuration the rule picks (``None``: none passed)."""
    rows = []
    for comparison in comparisons:
        metrics = comparison["metrics"]
        name = comparison["policy"]
        row: dict[str, Any] = {"trial_id": name, "trials": list(comparison.get("policy_members", [name]))}
        for metric in CONFIRMED:
            result = metrics.get(metric)
            row[f"confirm/{metric}"] = result["difference"] if result else math.nan
            row[f"confirm/{metric}_low"] = result["ci_low"] if result else math.nan
            row[f"confirm/{metric}_high"] = result["ci_high"] if result else math.nan
        ppl = metrics.get("perplexity")
        cost = 100.0 * ppl["difference"] / ppl["metric_a"] if ppl and ppl["metric_a"] else math.nan
        row["confirm/perplexity_pct"] = cost
        row["confirm/passes"] = bool(row["confirm/emp_f1_low"] > 0 and is_finite(cost) and cost <= budget)
        rows.append(row)
    passing = [r for r in rows if r["confirm/passes"]]
    best = max(passing, key=lambda r: float(r["confirm/emp_f1"]), default=None)
    return rows, None if best is None else str(best["trial_id"])


def confirm_sweep(
    rows: Sequence[Mapping[str, Any]], setup: TrialSetup, confirmation: LabeledSplit, keys: Sequence[str] = ()
) -> Confirmation | None:
    """Evaluates the control and the :func:`candidates` on ``confirmation`` (rows the search never used)
    into ``sweep/confirm`` and applies the rule; ``None`` when no control trial completed (nothing to
    confirm against: the search's best stands, and the log says so). A configuration run with several seeds
    is compared over all of them with the control over all of its own (:func:`~pipeline.evaluation.suite.compare`);
    the exported trial of a passing configuration is its seed best by the objective."""
    started = time.perf_counter()
    settings, sweep = setup.settings, setup.sweep
    controls = [r for r in rows if r.get("control")]
    completed = sorted(
        (r for r in controls if r.get("status") == "completed"), key=lambda r: str(r["trial_id"])
    )
    if not completed:
        logger.warning(
            "sweep: the control trial did not complete (%s): no confirmation; best/ is the search's best",
            ", ".join(str(r.get("status")) for r in controls) or "absent",
        )
        return None
    picked = candidates(rows, setup.objective, settings.confirm_top, keys)
    control_name = group_name(completed)
    trials = [*completed, *(r for g in picked for r in g)]
    policies = [
        (str(r["trial_id"]), fetch(PPODir(sweep.trial(str(r["trial_id"])).ppo).policy)) for r in trials
    ]
    groups = [(group_name(g), [str(r["trial_id"]) for r in g]) for g in [completed, *picked]]
    logger.info(
        "sweep: confirming %d configuration(s) (%d trial(s)) against the control %s on %d held-out %s examples",
        len(picked), len(trials) - len(completed), control_name, len(confirmation), settings.split,
    )  # fmt: skip
    inputs = load_evaluation_inputs(setup.layout, policies=policies, data=confirmation)
    metrics: dict[str, Any] = {}
    evaluate_stage(
        setup.cfg,
        setup.layout.moved(evaluate=sweep.confirm),
        inputs,
        n_resamples=settings.confirm_resamples,
        sinks=[metrics.update],
        groups=groups,
    )
    confirmed, best = decide(metrics["comparisons"], settings.perplexity_budget)
    control_id = str(completed[0]["trial_id"])
    exported = dict(groups).get(best or "", [control_id])[0]  # the passing configuration's best seed
    return Confirmation(
        split=confirmation.name,
        n_examples=len(confirmation),
        control_id=control_id,
        best_id=exported,
        rows=confirmed,
        rule=rule_text(settings.perplexity_budget),
        folder=sweep.confirm,
        seconds=time.perf_counter() - started,
        control_trials=[str(r["trial_id"]) for r in completed],
    )
