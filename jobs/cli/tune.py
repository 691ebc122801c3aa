"""Tune job: a Ray Tune sweep over PPO settings (dotted config keys), each trial a PPO run in its own
placement group, ASHA on a dev Emp-F1, the full evaluation last; ``<run>/sweep/`` gets the results.

Laptop:        emprl tune --run-dir runs/demo --space configs/sweeps/tiny.yaml --preset sweep_tiny
Resume:        emprl tune --run-dir runs/demo --resume
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.tune --preset paper --run-dir /shared/runs/paper \
                   --space configs/sweeps/kl_and_weights.yaml --num-samples 16 --max-concurrent 4 resources.address=auto
Sweep:         this is the sweep command; `emprl config` lists every key a space can name
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobs.launch.options import add_config_args, config_from_args, run_module
from jobs.launch.stage import launch, user_errors
from jobs.stages import load_ppo_inputs
from jobs.stages.tune import SweepError, SweepSettings, tune_stage
from pipeline.config import Config, load_config
from pipeline.config.search_space import SearchSpace, load_search_space
from pipeline.layout import RunLayout, SweepDir


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "tune", help="Ray Tune sweep over PPO settings (ASHA on a dev Emp-F1; PBT, Optuna, --resume)"
    )
    add_config_args(parser)
    d = SweepSettings()
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="run folder holding sft/, identifiers/, labeled/"
    )
    parser.add_argument(
        "--space",
        type=Path,
        default=None,
        help="search space YAML: dotted key -> {uniform|loguniform|randint|choice|grid: ...} (required unless --resume)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in the folder with its own config, space and settings: finished trials "
        "stay, unfinished ones go on from their last checkpoint",
    )
    parser.add_argument("--out", type=Path, default=None, help="sweep folder (default: <run>/sweep)")
    goal = parser.add_argument_group("objective")
    goal.add_argument("--metric", default=d.metric, help="reported metric the trials are ranked on")
    goal.add_argument("--mode", choices=("max", "min"), default=d.mode)
    goal.add_argument(
        "--constraint",
        dest="constraints",
        action="append",
        default=[],
        metavar="KEY<=X",
        help="the best trial must satisfy it, e.g. rollout/kl<=2 or eval/perplexity<=500 (repeatable)",
    )
    goal.add_argument(
        "--penalty",
        type=float,
        default=d.penalty,
        help="> 0: rank trials on the metric worsened by PENALTY x constraint violations",
    )
    goal.add_argument(
        "--objective",
        dest="objectives",
        action="append",
        default=[],
        metavar="METRIC:MODE",
        help="another objective for a multi-objective Optuna search, e.g. rollout/kl:min (repeatable)",
    )
    how = parser.add_argument_group("search and scheduling")
    how.add_argument(
        "--num-samples", type=int, default=d.num_samples, help="samples of the space (times the grid)"
    )
    how.add_argument("--search", choices=("random", "optuna"), default=d.search, help="how configs are drawn")
    how.add_argument("--scheduler", choices=("asha", "fifo", "pbt"), default=d.scheduler)
    how.add_argument(
        "--max-concurrent", type=int, default=d.max_concurrent_trials, help="trials running at once"
    )
    how.add_argument(
        "--report-every", type=int, default=d.report_every, help="PPO iterations between reports"
    )
    how.add_argument(
        "--grace-period", type=int, default=d.grace_period, help="ASHA: reports before a trial can stop"
    )
    how.add_argument(
        "--reduction-factor", type=float, default=d.reduction_factor, help="ASHA reduction factor"
    )
    how.add_argument(
        "--perturbation-interval",
        type=int,
        default=d.perturbation_interval,
        help="PBT: reports between exploits",
    )
    how.add_argument(
        "--quantile-fraction",
        type=float,
        default=d.quantile_fraction,
        help="PBT: bottom share that copies the top",
    )
    how.add_argument(
        "--resample-probability",
        type=float,
        default=d.resample_probability,
        help="PBT: chance a mutated value is drawn afresh",
    )
    trial = parser.add_argument_group("each trial")
    trial.add_argument(
        "--dev-examples", type=int, default=d.dev_examples, help="rows of the seeded dev slice"
    )
    trial.add_argument(
        "--split", default=d.split, help="labelled split of the dev slice and final evaluation"
    )
    trial.add_argument(
        "--eval-examples", type=int, default=d.eval_examples, help="rows of the final evaluation (all)"
    )
    trial.add_argument("--max-failures", type=int, default=d.max_failures, help="restarts of a failed trial")
    trial.add_argument(
        "--trial-cpus", type=float, default=d.trial_cpus, help="CPUs of the trial function's bundle"
    )
    parser.set_defaults(func=main_args)


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """The :class:`SweepSettings` the command line asks for."""
    return SweepSettings(
        num_samples=args.num_samples,
        metric=args.metric,
        mode=args.mode,
        constraints=tuple(args.constraints),
        penalty=args.penalty,
        objectives=tuple(args.objectives),
        scheduler=args.scheduler,
        search=args.search,
        max_concurrent_trials=args.max_concurrent,
        report_every=args.report_every,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        perturbation_interval=args.perturbation_interval,
        quantile_fraction=args.quantile_fraction,
        resample_probability=args.resample_probability,
        dev_examples=args.dev_examples,
        split=args.split,
        eval_examples=args.eval_examples,
        max_failures=args.max_failures,
        trial_cpus=args.trial_cpus,
    )


def resumed_sweep(args: argparse.Namespace, sweep: SweepDir) -> tuple[Config, SearchSpace, SweepSettings]:
    """The config, space and settings a sweep saved, for ``--resume``.

    Raises:
        SweepError: no sweep in the folder, or the command line asks for other settings than it ran with.
    """
    if not sweep.settings.is_file():
        raise SweepError(
            f"--resume: {sweep.path} holds no sweep (no {sweep.settings.name}). Fix: run the sweep without "
            "--resume first, or pass the folder it wrote with --out."
        )
    cfg = load_config(sweep.config)
    space = load_search_space(sweep.space, cfg)
    saved = SweepSettings.from_json(json.loads(sweep.settings.read_text()))
    asked, default = asdict(settings_from_args(args)), asdict(SweepSettings())
    clash = [
        f"{key}={asked[key]!r} (the sweep has {getattr(saved, key)!r})"
        for key in asked
        if asked[key] != default[key] and asked[key] != getattr(saved, key)
    ]
    if args.overrides or args.preset != "local":
        clash.append(f"--preset {args.preset} {' '.join(args.overrides)}".strip())
    if args.space is not None and load_search_space(args.space, cfg) != space:
        clash.append(f"--space {args.space}")
    if clash:
        raise SweepError(
            "--resume continues the sweep with its own config, space and settings (in "
            f"{sweep.path}); this command asks for {'; '.join(clash)}. Fix: drop those options, or start a "
            "new sweep with --out."
        )
    return cfg, space, saved


def main_args(args: argparse.Namespace) -> None:
    layout = RunLayout(args.run_dir)
    sweep = layout.sweep(args.out)
    with user_errors():  # before Ray: a bad space, metric or input fails at once, naming the key
        if args.resume:
            cfg, space, settings = resumed_sweep(args, sweep)
        else:
            if args.space is None:
                raise SweepError(
                    "--space is required (a YAML search space), unless --resume continues a sweep."
                )
            cfg = config_from_args(args)
            space = load_search_space(args.space, cfg)
            settings = settings_from_args(args)
        settings.check(space, [c for _, c in space.probe_configs(cfg)])
        load_ppo_inputs(layout)
    launch(
        args,
        cfg,
        layout,
        lambda _: tune_stage(cfg, layout, space, settings, sweep_dir=args.out, resume=args.resume),
        needs_data=False,
    )


def main(argv: list[str] | None = None) -> None:
    run_module("tune", add_parser, argv)


if __name__ == "__main__":
    main()
