"""How a sweep runs, apart from its base config and search space: :class:`SweepSettings`.

The settings are checked before Ray starts (counts, objective, scheduler/search combinations, PBT's
needs) and saved as ``settings.json`` so ``--resume`` continues with the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from actors.cluster.placement import ppo_bundles
from pipeline.config import Config, ConfigError
from pipeline.config.objective import Objective
from pipeline.config.search_space import SEED_KEY, SearchSpace


class SweepError(ConfigError):
    """A sweep setting is unusable (scheduler, search, resources, resume); the message names it and the fix."""


BEFORE_CONTROL = {"control": False, "confirm_examples": 0}
"""How a sweep saved without these settings ran: no control, no rows held out for a confirmation."""

Scheduler = Literal["asha", "fifo", "pbt"]
Search = Literal["random", "optuna"]


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs (everything but the base config and the space); saved as ``settings.json`` so
    ``--resume`` continues with the same settings."""

    num_samples: int = 1
    """Samples of the space (times the grid)."""
    metric: str = "dev/emp_f1"
    """Reported metric the trials are ranked on."""
    mode: Literal["max", "min"] = "max"
    """Whether a higher (``max``) or lower (``min``) ``metric`` is better."""
    constraints: tuple[str, ...] = ()
    """``KEY<=X`` / ``KEY>=X``: the best trial must satisfy them (``eval/*`` allowed)."""
    penalty: float = 0.0
    """> 0: the scheduler and search rank on ``objective`` = metric worsened by penalty × violations."""
    objectives: tuple[str, ...] = ()
    """Extra ``METRIC:MODE`` objectives of a multi-objective Optuna search."""
    scheduler: Scheduler = "asha"
    """ASHA stops weak trials early, FIFO runs every trial to the end, PBT mutates and clones trials."""
    search: Search = "random"
    """Seeded random/grid sampling, or Optuna's TPE."""
    max_concurrent_trials: int = 0
    """Trials running at once (fewer when fewer fit the cluster); 0: as many as fit the cluster when the
    sweep starts (at least 1)."""
    report_every: int = 1
    """PPO iterations between reports (a report carries the dev metrics and a PPO checkpoint)."""
    grace_period: int = 0
    """ASHA: reports before a trial can be stopped; 0: derived from the noise and the budget
    (:func:`~jobs.stages.tune.search.derive_asha`)."""
    reduction_factor: float = 0.0
    """ASHA: the fraction ``1 / reduction_factor`` of trials goes on at each rung; 0: derived."""
    asha_rule: str = ""
    """How the sweep chose ASHA's grace period and reduction factor (written by the sweep; the report
    states it)."""
    perturbation_interval: int = 1
    """PBT: reports between exploit/explore steps."""
    quantile_fraction: float = 0.25
    """PBT: the bottom fraction that copies the top fraction."""
    resample_probability: float = 0.25
    """PBT: chance a mutated value is drawn afresh instead of scaled by 0.8 / 1.2 (or moved to a
    neighbouring option)."""
    dev_examples: int = 0
    """Rows of the seeded dev slice every report scores; 0: chosen by a pilot for ``dev_se``."""
    dev_se: float = 0.5
    """Target standard error (Emp-F1 points) of the paired difference of two trials' dev reports, which
    sizes the dev slice when ``dev_examples`` is 0."""
    split: str = "valid"
    """Labelled split of the dev slice and of the final evaluation."""
    eval_examples: int | None = None
    """Rows of the final evaluation (``None``: the whole split)."""
    max_failures: int = 1
    """Restarts of a failed trial."""
    trial_cpus: float = 0.1
    """CPUs of the trial function's bundle (the PPO roles have bundles of their own)."""
    seeds: int = 1
    """PPO seeds per configuration (``run.seed``, ``run.seed + 1``, ...): each configuration, the control
    too, runs once per seed; the report aggregates a configuration's seeds (IQM, 95 % stratified-bootstrap
    intervals, probability of improvement over the control)."""
    control: bool = True
    """Run the base config's own values of the swept keys as one more trial, the control: same budget,
    never stopped early or exploited; the report measures every trial against it."""
    confirm_examples: int = 1000
    """Rows of ``split`` (at most half of it) held out of the search (no dev slice, no final evaluation)
    on which the top configurations are confirmed against the control; 0: no confirmation (nor without
    a control)."""
    confirm_top: int = 3
    """Configurations confirmed: this many best by the objective, and the Pareto fronts' trials (at most
    as many again)."""
    confirm_resamples: int = 1000
    """Paired-bootstrap resamples of the confirmation's comparisons."""
    perplexity_budget: float = 5.0
    """Percent: a confirmed configuration may cost the control's gold perplexity at most this much."""

    @property
    def held_out(self) -> int:
        """Rows held out of the search for the confirmation (0 without one)."""
        return self.confirm_examples if self.control else 0

    def seed_values(self, base_seed: int) -> list[int]:
        """The PPO seeds of every configuration: ``base_seed`` and the next ``seeds - 1``."""
        return [base_seed + i for i in range(self.seeds)]

    @property
    def objective(self) -> Objective:
        """The parsed metric, mode, constraints and extra objectives."""
        return Objective.parse(
            self.metric, self.mode, constraints=self.constraints, penalty=self.penalty, also=self.objectives
        )

    def check(self, space: SearchSpace, probes: Sequence[Config]) -> Objective:
        """Everything that can be checked before Ray: counts, objective, scheduler/search combinations.

        Raises:
            SweepError: naming the setting and the fix.
            ObjectiveError: a metric or constraint no trial reports.
        """
        counts = {
            "report_every": self.report_every, "num_samples": self.num_samples,
            "perturbation_interval": self.perturbation_interval, "seeds": self.seeds,
            "confirm_top": self.confirm_top, "confirm_resamples": self.confirm_resamples,
        }  # fmt: skip
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad:
            raise SweepError(f"{bad}: each must be >= 1. Fix: pass positive values.")
        if self.grace_period < 0 or not (self.reduction_factor == 0 or self.reduction_factor > 1):
            raise SweepError(
                f"--grace-period {self.grace_period} must be >= 0 and --reduction-factor "
                f"{self.reduction_factor} > 1 (0 for either: derived from the dev noise and the budget)."
            )
        if self.max_concurrent_trials < 0:
            raise SweepError(
                f"--max-concurrent {self.max_concurrent_trials} must be >= 0 (0: as many as fit the cluster)."
            )
        if self.eval_examples is not None and self.eval_examples < 1:
            raise SweepError(f"--eval-examples {self.eval_examples} must be >= 1 (or omitted for all).")
        if self.dev_examples < 0 or self.dev_se <= 0:
            raise SweepError(
                f"--dev-examples {self.dev_examples} must be >= 0 (0: sized by a pilot) and --dev-se "
                f"{self.dev_se} > 0."
            )
        if self.confirm_examples < 0 or self.perplexity_budget < 0:
            raise SweepError(
                f"--confirm-examples {self.confirm_examples} and --perplexity-budget {self.perplexity_budget} "
                "must be >= 0 (0 examples: no confirmation)."
            )
        objective = self.objective
        if self.objectives and self.search != "optuna":
            raise SweepError(
                f"--objective {' '.join(self.objectives)}: a multi-objective search is Optuna's. Fix: add "
                "--search optuna, or drop --objective."
            )
        if self.seeds > 1:
            self._check_seeds(space)
        if self.search == "optuna":
            self._check_optuna(space)
        if self.scheduler == "pbt":
            self._check_pbt(probes)
        return objective

    def _check_seeds(self, space: SearchSpace) -> None:
        if SEED_KEY in space.keys:
            raise SweepError(
                "--seeds runs every configuration once per run.seed, but the space sweeps run.seed too. Fix: "
                "drop run.seed from the space (or --seeds)."
            )
        if self.search != "random" or self.scheduler == "pbt":
            raise SweepError(
                f"--seeds {self.seeds} with --search {self.search} --scheduler {self.scheduler}: a configuration "
                "keeps its values over its seeds only under random search without PBT (Optuna suggests, and "
                "PBT mutates, every trial apart). Fix: --search random with asha or fifo, or --seeds 1."
            )

    def _check_optuna(self, space: SearchSpace) -> None:
        grids = [d.key for d in space.dimensions if d.kind == "grid"]
        if grids:
            raise SweepError(
                f"--search optuna: {', '.join(grids)} is a grid, which Optuna cannot sample. Fix: write "
                "{choice: [...]} instead of {grid: [...]}, or use --search random."
            )
        if self.scheduler == "pbt":
            raise SweepError(
                "--scheduler pbt with --search optuna: PBT mutates the configs Optuna suggested, so "
                "Optuna would learn from configs it never proposed. Fix: use one of them."
            )

    def _check_pbt(self, probes: Sequence[Config]) -> None:
        for probe in probes:
            if self.report_every % probe.ppo.save_every:
                raise SweepError(
                    f"--scheduler pbt exploits through the PPO checkpoint, so every report must carry "
                    f"one; ppo.save_every={probe.ppo.save_every} does not divide --report-every "
                    f"{self.report_every}. Fix: ppo.save_every=1 (or a divisor of --report-every)."
                )
        shapes = {tuple(tuple(sorted(b.resources.items())) for b in ppo_bundles(p)) for p in probes}
        if len(shapes) > 1:
            raise SweepError(
                "--scheduler pbt: the space changes the PPO roles' resources (e.g. a worker count or "
                "resources.*), but an exploited trial keeps its reservation. Fix: sweep such keys with "
                "asha or fifo, or fix them in the config."
            )
        if not 0 < self.quantile_fraction <= 0.5 or not 0 <= self.resample_probability <= 1:
            raise SweepError(
                f"--quantile-fraction {self.quantile_fraction} must be in (0, 0.5] and "
                f"--resample-probability {self.resample_probability} in [0, 1]."
            )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepSettings:
        """The settings a sweep saved (or a command line's values); unknown keys are ignored, missing ones
        take the defaults (:data:`BEFORE_CONTROL`'s for a sweep saved before the control existed, so its
        resumed trials score the rows they did), lists become tuples."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in {**BEFORE_CONTROL, **data}.items()
            if k in known
        }
        return cls(**values)
