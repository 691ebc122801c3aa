"""How a sweep draws and schedules its trials: seeded random/grid sampling or Optuna (one objective or
several), and ASHA, FIFO or Population Based Training (PBT mutations stay inside the search space).

The sweep's control (the base config's own values of the swept keys, marked with
:data:`~actors.sweep.trial.CONTROL_KEY`) is the first trial of every search, runs the same budget as any
trial, is never stopped early by ASHA nor exploited or mutated by PBT, and is not fed to Optuna (it is not
Optuna's suggestion)."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from actors.sweep.trial import CONTROL_KEY, is_control, tune_domain
from jobs.stages.tune.settings import SweepError, SweepSettings
from pipeline.config.objective import Objective
from pipeline.config.search_space import SearchSpace


def make_scheduler(
    settings: SweepSettings,
    objective: Objective,
    space: SearchSpace,
    *,
    max_t: int,
    seed: int,
    decisions: Path | None = None,
) -> TrialScheduler:
    """ASHA over reports (``training_iteration``), FIFO (every trial runs to the end), or Population Based
    Training mutating every swept key (clamped back into the space, so a trial config stays valid).
    ``decisions``: where ASHA appends each comparison it makes (JSON lines), for the report."""
    metric, mode = objective.ranked_metric, objective.mode
    if settings.scheduler == "asha":
        return ControlKeepingASHA(
            decisions=decisions,
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=min(settings.grace_period or 1, max_t),
            reduction_factor=settings.reduction_factor or 2.0,
        )
    if settings.scheduler == "fifo":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    if settings.scheduler == "pbt":
        random.seed(seed)  # PBT draws its exploit partners and mutations from the global generator
        return FinalAwarePBT(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            perturbation_interval=settings.perturbation_interval,
            hyperparam_mutations=pbt_mutations(space),
            quantile_fraction=settings.quantile_fraction,
            resample_probability=settings.resample_probability,
            custom_explore_fn=lambda config: {**space.clamp(config), CONTROL_KEY: False},
            synch=True,
        )
    raise SweepError(f"--scheduler {settings.scheduler!r}: unknown. Fix: use asha, fifo or pbt.")


class ControlKeepingASHA(ASHAScheduler):
    """ASHA that compares the control at every rung like any trial (its reports set the rungs' cut-offs
    too) but never stops it early: every trial's gain is measured against its full run. Each comparison
    (a report reaching a rung: its value, the rung's cut-off, the decision, the report's standard error)
    is appended to ``decisions``, so the report can say what ASHA compared and with what margin."""

    def __init__(self, *args: Any, decisions: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decisions = decisions

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        compared = self._rung_of(trial, result)
        action = str(super().on_trial_result(tune_controller, trial, result))
        control = is_control(trial.config)
        if action == TrialScheduler.STOP and control and result.get(self._time_attr, 0) < self._max_t:
            self._num_stopped -= 1
            action = TrialScheduler.CONTINUE
        if compared is not None and self.decisions is not None and self._metric is not None:
            rung, cutoff = compared
            record = {
                "trial_id": str(trial.trial_id), "report": int(result[self._time_attr]), "rung": rung,
                "metric": self._metric, "value": float(result[self._metric]), "cutoff": cutoff,
                "decision": "stop" if action == TrialScheduler.STOP else "continue", "control": control,
                "se": result.get("dev/emp_f1_se"),
            }  # fmt: skip
            self.decisions.parent.mkdir(parents=True, exist_ok=True)
            with self.decisions.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return action

    def _rung_of(self, trial: Any, result: dict[str, Any]) -> tuple[float, float | None] | None:
        """The rung this report reaches and the cut-off it is compared with (in the metric's units; ``None``
        for the rung's first report), as ASHA's bracket computes them (its bookkeeping is private)."""
        bracket = self._trial_info.get(trial.trial_id)
        at = result.get(self._time_attr)
        if bracket is None or at is None or self._metric not in result:
            return None
        for milestone, recorded in getattr(bracket, "_rungs", []):
            if at < milestone or trial.trial_id in recorded:
                continue
            cutoff = bracket.cutoff(recorded)
            sign = -1.0 if self._mode == "min" else 1.0  # the bracket keeps sign x metric
            return float(milestone), None if cutoff is None else float(cutoff) * sign
        return None


class FinalAwarePBT(PopulationBasedTraining):
    """PBT that leaves a trial's last report alone (a trial's final report carries its full evaluation,
    and cloning another trial into it then would pair that evaluation with weights it never trained) and
    never exploits the control (it may be cloned into others, as any top trial)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        return str(super().on_trial_result(tune_controller, trial, result))

    def _checkpoint_or_exploit(
        self, trial: Any, tune_controller: Any, upper_quantile: list[Any], lower_quantile: list[Any]
    ) -> None:
        if is_control(trial.config):
            lower_quantile = [t for t in lower_quantile if t is not trial]
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)


def make_search(
    settings: SweepSettings, objective: Objective, *, seed: int, control: dict[str, Any] | None = None
) -> Searcher | SearchAlgorithm:
    """Random/grid sampling (seeded), or Optuna's TPE (one objective, or several: a Pareto search)
    limited to ``max_concurrent_trials`` suggestions in flight; ``control`` (the swept keys' base values),
    when given, is the first trial. Random search then needs one more sample: see :func:`num_samples`."""
    point = None if control is None else {**control, CONTROL_KEY: True}
    if point is not None:  # the control may sit outside the space (its whole point): Tune need not warn
        logging.getLogger("ray.tune.search.variant_generator").addFilter(NOT_PRESET_WARNING)
    if settings.search == "random":
        # the same draws every time; Tune ignores TuneConfig.max_concurrent_trials next to a generator.
        # A point to evaluate takes the place of one sample (a whole pass over a grid).
        # with --seeds, a sample's random values stay the same over the grid (run.seed is one): its seeds
        # run one configuration
        return BasicVariantGenerator(
            max_concurrent=settings.max_concurrent_trials,
            random_state=seed,
            points_to_evaluate=[point] if point else None,
            constant_grid_search=settings.seeds > 1,
        )
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    multi = len(objective.metrics) > 1
    searcher: Searcher = OptunaSearch(
        metric=objective.metrics if multi else objective.ranked_metric,
        mode=list(objective.modes) if multi else str(objective.mode),
        seed=seed,
    )
    if point is not None:
        searcher = ControlFirst(searcher, point)
    return ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent_trials)


class _NotPresetWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Pre-set value")


NOT_PRESET_WARNING = _NotPresetWarning()
"""One filter for every sweep of the process (adding the same one again is a no-op)."""


def derive_asha(settings: SweepSettings, *, max_t: int, trials: int, pair_se: float | None) -> SweepSettings:
    """``settings`` with ASHA's grace period and reduction factor chosen where they are 0, and the rule
    written in ``asha_rule``. ``max_t``: reports of a full trial (the budget); ``trials``: how many the
    sweep runs; ``pair_se``: the pilot's standard error of the difference of two trials' reports (``None``:
    not measured).

    - Reduction factor: 3 (Hyperband's default) when two reports' difference is measured within
      ``--dev-se``; else 2, keeping half of every rung, since a single report then mis-ranks close trials.
    - Grace period: rungs are spread geometrically up to the budget, as many as there are ``1/η`` cuts the
      trial count and the budget both allow (cutting a rung of one trial, or between reports that do not
      exist, only costs): the first rung at ``⌈max_t / η^cuts⌉`` reports, so exactly ``cuts`` rungs come
      before the last report (no cut: ``max_t``, and ASHA stops nothing).
    """
    if settings.scheduler != "asha" or (settings.grace_period and settings.reduction_factor):
        return settings
    if settings.reduction_factor:
        eta, why = settings.reduction_factor, f"reduction factor {settings.reduction_factor:g} (given)"
    elif pair_se is None:
        eta, why = (
            2.0,
            "the dev noise was not measured (dev slice given): reduction factor 2, keeping half a rung",
        )
    elif pair_se <= settings.dev_se:
        eta = 3.0
        why = f"the pilot's paired standard error {pair_se:.2f} is within {settings.dev_se:g} Emp-F1: reduction factor 3"
    else:
        eta = 2.0
        why = (
            f"the pilot's paired standard error {pair_se:.2f} exceeds {settings.dev_se:g} Emp-F1: one report "
            "mis-ranks close trials, so each rung keeps half (reduction factor 2)"
        )
    cuts = 0
    while eta ** (cuts + 1) <= min(trials, max_t):
        cuts += 1
    grace = settings.grace_period or max(1, math.ceil(max_t / eta**cuts))
    rungs = []
    rung = float(grace)
    while rung < max_t:
        rungs.append(round(rung))
        rung *= eta
    given = (
        " (given)" if settings.grace_period else f": {trials} trials and {max_t} reports allow {cuts} cut(s)"
    )
    rule = (
        f"ASHA: {why}; grace period {grace} report(s){given}; rungs at report(s) "
        f"{', '.join(map(str, rungs)) or 'none (nothing is stopped)'} of {max_t}"
    )
    return replace(settings, grace_period=grace, reduction_factor=eta, asha_rule=rule)


def num_samples(settings: SweepSettings, *, control: bool) -> int:
    """Tune's ``num_samples``: the settings' count plus one for the control (under random search a point to
    evaluate takes one sample's place, a whole pass over a grid; under Optuna it is one suggestion)."""
    return settings.num_samples + (1 if control else 0)


class ControlFirst(Searcher):
    """A searcher whose first suggestion is ``point`` (the control); every other suggestion is the wrapped
    searcher's, which never hears of the control's results (it did not suggest it). Saved and restored
    with the wrapped searcher's state, so a resumed sweep does not suggest the control twice."""

    def __init__(self, searcher: Searcher, point: dict[str, Any]) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.point = dict(point)
        self.control_id: str | None = None

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return bool(self.searcher.set_search_properties(metric, mode, config, **spec))

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return bool(self.searcher.set_max_concurrency(max_concurrent))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.control_id is None:
            self.control_id = trial_id
            return dict(self.point)
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id != self.control_id:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id != self.control_id:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.searcher.save(os.path.join(tmp, "searcher"))
            with open(os.path.join(tmp, "searcher"), "rb") as f:
                inner = f.read()
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"control_id": self.control_id, "point": self.point, "searcher": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)  # Tune's own searcher checkpoint, written by save above
        self.control_id, self.point = state["control_id"], state["point"]
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "searcher"), "wb") as f:
                f.write(state["searcher"])
            self.searcher.restore(os.path.join(tmp, "searcher"))


def pbt_mutations(space: SearchSpace) -> dict[str, Any]:
    """PBT's mutation per swept key: a range's Tune domain (scaled by 0.8 / 1.2, or resampled), the
    option list of a choice or grid (a neighbour, or resampled)."""
    return {d.key: list(d.args) if d.kind in ("choice", "grid") else tune_domain(d) for d in space.dimensions}
