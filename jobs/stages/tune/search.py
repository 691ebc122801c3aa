"""How a sweep draws and schedules its trials: seeded random/grid sampling or Optuna (one objective or
several), and ASHA, FIFO or Population Based Training (PBT mutations stay inside the search space)."""

from __future__ import annotations

import random
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from actors.sweep.trial import tune_domain
from jobs.stages.tune.settings import SweepError, SweepSettings
from pipeline.config.objective import Objective
from pipeline.config.search_space import SearchSpace


def make_scheduler(
    settings: SweepSettings, objective: Objective, space: SearchSpace, *, max_t: int, seed: int
) -> TrialScheduler:
    """ASHA over reports (``training_iteration``), FIFO (every trial runs to the end), or Population Based
    Training mutating every swept key (clamped back into the space, so a trial config stays valid)."""
    metric, mode = objective.ranked_metric, objective.mode
    if settings.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=min(settings.grace_period, max_t),
            reduction_factor=settings.reduction_factor,
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
            custom_explore_fn=space.clamp,
            synch=True,
        )
    raise SweepError(f"--scheduler {settings.scheduler!r}: unknown. Fix: use asha, fifo or pbt.")


class FinalAwarePBT(PopulationBasedTraining):
    """PBT that leaves a trial's last report alone: a trial's final report carries its full evaluation,
    and cloning another trial into it then would pair that evaluation with weights it never trained."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        return str(super().on_trial_result(tune_controller, trial, result))


def make_search(settings: SweepSettings, objective: Objective, *, seed: int) -> Searcher | SearchAlgorithm:
    """Random/grid sampling (seeded), or Optuna's TPE (one objective, or several: a Pareto search)
    limited to ``max_concurrent_trials`` suggestions in flight."""
    if settings.search == "random":
        # the same draws every time; Tune ignores TuneConfig.max_concurrent_trials next to a generator
        return BasicVariantGenerator(max_concurrent=settings.max_concurrent_trials, random_state=seed)
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    multi = len(objective.metrics) > 1
    searcher = OptunaSearch(
        metric=objective.metrics if multi else objective.ranked_metric,
        mode=list(objective.modes) if multi else str(objective.mode),
        seed=seed,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent_trials)


def pbt_mutations(space: SearchSpace) -> dict[str, Any]:
    """PBT's mutation per swept key: a range's Tune domain (scaled by 0.8 / 1.2, or resampled), the
    option list of a choice or grid (a neighbour, or resampled)."""
    return {d.key: list(d.args) if d.kind in ("choice", "grid") else tune_domain(d) for d in space.dimensions}
