"""One sweep trial, ``cfg.with_overrides(trial config)``: :func:`run_trial` runs PPO in the trial's reservation,
reports every ``report_every`` iterations a dev Emp-F1 with the newest PPO checkpoint (a restarted, resumed
or PBT-exploiting trial goes on from it under its own config) and the full evaluation (``eval/*``) last.
Tune pickles :func:`run_trial` by module path, so it stays a module-level function here. A trial runs on any
node: its PPO run writes into the sweep's trial folder (published when the sweep mirrors a URI), and Tune
persists its checkpoints to the sweep's storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from ray import tune

from actors.cluster.placement import Reservation
from actors.ppo.controller import Hook, PPOController
from actors.ppo.metrics import IterationReport
from actors.sweep.trial import (
    DevEvaluator,
    dev_slice,
    emp_f1_std_error,
    metric_row,
    partition,
    plain_values,
    restore_checkpoint,
    tune_checkpoint,
)
from jobs.stages.evaluate import evaluate_stage, load_evaluation_inputs
from jobs.stages.ppo import load_ppo_inputs, ppo_stage
from jobs.stages.tune.settings import SweepSettings
from pipeline.config import Config
from pipeline.config.objective import Objective
from pipeline.config.search_space import SEED_KEY
from pipeline.evaluation.suite import LabeledSplit, read_labeled_split
from pipeline.layout import RunLayout, SweepDir
from pipeline.storage import fetch, read_text, remove, write_text


@dataclass(frozen=True)
class TrialSetup:
    """What every trial function receives besides its sampled config."""

    cfg: Config
    layout: RunLayout
    sweep: SweepDir
    settings: SweepSettings
    objective: Objective
    hooks: tuple[Hook, ...] = ()
    """Passed to every trial's PPO stage (fault-injection and placement tests)."""


def reports_per_trial(cfg: Config, report_every: int) -> int:
    """Reports of a full trial: every ``report_every`` iterations before the last, then the final one."""
    return (cfg.ppo.total_steps - 1) // report_every + 1


class TrialReporter:
    """The trial's PPO sink: every ``report_every`` iterations, the dev metric of the current policy and
    ``tune.report`` with the newest PPO checkpoint."""

    def __init__(self, setup: TrialSetup, cfg: Config, dev: DevEvaluator, dev_policy: Path) -> None:
        self.cfg, self.dev, self.dev_policy = cfg, dev, dev_policy
        self.every, self.objective = setup.settings.report_every, setup.objective
        self.controller: PPOController | None = None
        self.pending: Path | None = None
        self.last: dict[str, float] = {}
        self.starts = 1
        """How many times this trial has started (a restart after a failure or a lost node, a resumed sweep,
        a synchronous PBT pause, a PBT exploit)."""
        self.exploits = 0
        """How many of those starts were PBT exploits (another trial's checkpoint under a mutated config)."""

    def hook(self, controller: PPOController, iteration: int, phase: str) -> None:
        """Remembers the controller, whose learner exports the current policy."""
        self.controller = controller

    def sink(self, report: IterationReport) -> None:
        """Reports at every ``report_every``-th iteration except the last (the trial reports that one)."""
        if report.checkpoint is not None:
            self.pending = report.checkpoint
        self.last = dict(report.metrics)
        if report.iteration % self.every or report.iteration >= self.cfg.ppo.total_steps:
            return
        assert self.controller is not None
        policy = self.controller.export_policy(self.dev_policy)
        self.report({**self.last, **self.dev(policy)})

    def report(self, metrics: dict[str, float]) -> None:
        """``tune.report`` (with the penalised objective, if any) and the PPO checkpoint written since the
        last report, if any."""
        checkpoint = tune_checkpoint(self.pending) if self.pending is not None else None
        row = {**metrics, "trial/starts": float(self.starts), "trial/exploits": float(self.exploits)}
        tune.report({**row, **self.objective.penalised(row)}, checkpoint=checkpoint)
        self.pending = None


def record_start(starts_file: Path, trial_config: dict[str, Any]) -> list[str]:
    """Append this start of the trial to ``starts_file`` (outside the trial's own folder, which a fresh
    start clears) and return the kind of every start so far: ``first``; ``exploit`` (PBT cloned another
    trial into this one: its config changed since the last start, as PBT's explore step always changes a
    range and mostly a choice); ``restart`` (the same config again: a failure, a lost node, a resumed
    sweep, a synchronous PBT pause). A PBT exploit that leaves every value as it was counts as a restart;
    Tune's own failure count (the table's ``failures``) tells the failures apart."""
    config = json.dumps(plain_values(trial_config), sort_keys=True)
    lines = [line.partition("\t")[::2] for line in (read_text(starts_file) or "").splitlines() if line]
    if not lines:
        kind = "first"
    else:  # (a line without a config is a sweep's from before configs were recorded: a restart)
        kind = "exploit" if lines[-1][1] not in ("", config) else "restart"
    lines.append((kind, config))
    write_text(starts_file, "".join(f"{k}\t{c}\n" for k, c in lines))
    return [k for k, _ in lines]


def search_rows(
    layout: RunLayout, settings: SweepSettings, seed: int
) -> tuple[LabeledSplit, LabeledSplit | None]:
    """``settings.split`` of the run parted (:func:`~actors.sweep.trial.partition`, the sweep's ``seed``) into
    the rows the search uses (dev slice, final evaluations, the pilot) and those held out for the
    confirmation: the driver and every trial part it alike."""
    split = read_labeled_split(fetch(layout.labeled.split(settings.split)), name=settings.split)
    return partition(split, settings.held_out, seed=seed)


def run_trial(trial_config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: PPO in the trial's reservation, periodic dev reports, the full evaluation last."""
    settings = setup.settings
    cfg = setup.cfg.with_overrides(plain_values(trial_config))
    trial = setup.sweep.trial(tune.get_context().get_trial_id())
    layout = setup.layout.moved(ppo=trial.ppo, evaluate=trial.evaluate)
    starts = record_start(setup.sweep.path / "starts" / f"{trial.path.name}.txt", trial_config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restarted or resumed trial, or a PBT exploit of another trial's state
        with checkpoint.as_directory() as folder:
            restore_checkpoint(Path(folder), layout.ppo.checkpoints)
    else:  # a retried trial that never reported a checkpoint starts afresh (in the bucket too)
        remove(trial.path)
    trial.path.mkdir(parents=True, exist_ok=True)
    # the sweep's seed, not the trial's (--seeds): every trial scores the same dev examples with the same
    # sampling random numbers, so two trials' reports differ by their policies alone; the confirmation
    # rows are held out of both the dev slice and the final evaluation
    base_seed = setup.cfg.run.seed
    split, _ = search_rows(layout, settings, base_seed)
    dev = DevEvaluator(
        cfg.with_overrides({SEED_KEY: base_seed}),
        dev_slice(split, settings.dev_examples, seed=base_seed),
        layout.identifiers.path,
    )
    reporter = TrialReporter(setup, cfg, dev, trial.dev_policy)
    reporter.starts, reporter.exploits = len(starts), starts.count("exploit")
    reservation = Reservation.current(first=1)
    ppo_stage(
        cfg,
        layout,
        resume=True,
        inputs=load_ppo_inputs(layout),
        sinks=[reporter.sink],
        hooks=[reporter.hook, *setup.hooks],
        reservation=reservation,
    )
    final = dev(layout.ppo.policy)
    inputs = load_evaluation_inputs(
        layout,
        policies=[("trial", layout.ppo.policy)],
        split=settings.split,
        max_examples=settings.eval_examples,
        data=split,
    )
    evaluation: dict[str, Any] = {}
    # on the CPU the dev evaluator's worker and scorer, already in this process, do the final evaluation
    # too (two processes fewer per trial); a GPU trial's evaluation actors take its GPU bundles
    local = None if cfg.resources.use_gpu else (dev.worker, dev.scorer)
    evaluate_stage(
        cfg, layout, inputs, n_resamples=1, reservation=reservation, sinks=[evaluation.update], local=local
    )
    full = metric_row("eval", evaluation["policies"]["trial"])
    full["eval/emp_f1_se"] = evaluation_std_error(layout, inputs.split, seed=cfg.run.seed)
    reporter.report({**reporter.last, **final, **full, "final": 1.0})


def evaluation_std_error(layout: RunLayout, split: LabeledSplit, *, seed: int) -> float:
    """The bootstrap standard error of the trial's final Emp-F1 over the evaluation's examples, from the
    levels of its responses (``responses.parquet``): the Pareto figure's interval."""
    table = pq.read_table(fetch(layout.evaluate.responses))
    levels = {m: table[f"trial_{m.lower()}_level"].to_numpy() for m in split.gold_levels}
    return emp_f1_std_error(split, levels, len(split), seed=seed)
