"""Tune job: a Ray Tune sweep over PPO settings (dotted config keys), each trial a PPO run in its own
placement group, ASHA on a dev Emp-F1, the full evaluation last; ``<run>/sweep/`` gets the results.

Laptop:        emprl tune --run-dir runs/demo --space configs/sweeps/tiny.yaml --preset sweep_tiny
Resume:        emprl tune --run-dir runs/demo --resume
In a bucket:   emprl tune --run-dir s3://bucket/runs/demo --space configs/sweeps/tiny.yaml   (--resume on any node)
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.tune --preset paper --run-dir /shared/runs/paper \
                   --space configs/sweeps/kl_and_weights.yaml --num-samples 16 --max-concurrent 4 resources.address=auto
Sweep:         this is the sweep command; `emprl config` lists every key a space can name
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from jobs.launch.options import add_config_args, add_run_dir_args, config_from_args, run_module, user_path
from jobs.launch.stage import launch, user_errors
from jobs.stages import load_ppo_inputs
from jobs.stages.tune import SweepError, SweepSettings, tune_stage
from pipeline.config import Config, load_config
from pipeline.config.search_space import SearchSpace, load_search_space
from pipeline.layout import RunLayout, SweepDir
from pipeline.storage import display, fetch

SETTING_OPTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    # group: ([flag,] SweepSettings field, help); the flag is --field-name unless the row names one, the
    # type, choices and default are the field's
    "objective": (
        ("metric", "reported metric the trials are ranked on"),
        ("mode", ""),
        ("--constraint", "constraints", "the best trial must satisfy it, e.g. rollout/kl<=2 or eval/perplexity<=500 (repeatable)"),
        ("penalty", "> 0: rank trials on the metric worsened by PENALTY x constraint violations"),
        ("--objective", "objectives", "another objective for a multi-objective Optuna search, e.g. rollout/kl:min (repeatable)"),
    ),
    "search and scheduling": (
        ("num_samples", "samples of the space (times the grid)"),
        ("seeds", "PPO seeds per configuration (run.seed, run.seed+1, ...); the report aggregates them (IQM, 95%% intervals)"),
        ("control", "one more trial with the base config's own values of the swept keys: every gain is stated against it"),
        ("search", "how configs are drawn"),
        ("scheduler", ""),
        ("--max-concurrent", "max_concurrent_trials", "trials running at once (0: as many as fit the cluster)"),
        ("report_every", "PPO iterations between reports"),
        ("grace_period", "ASHA: reports before a trial can stop (0: derived from the dev noise and the budget)"),
        ("reduction_factor", "ASHA reduction factor (0: 3 if the pilot's paired SE is within --dev-se, else 2)"),
        ("perturbation_interval", "PBT: reports between exploits"),
        ("quantile_fraction", "PBT: bottom share that copies the top"),
        ("resample_probability", "PBT: chance a mutated value is drawn afresh"),
    ),
    "confirmation": (
        ("confirm_examples", "rows of --split held out of the search, on which the top configurations are confirmed against the control (0: none)"),
        ("confirm_top", "configurations confirmed: this many best by the objective, plus the Pareto fronts' trials"),
        ("confirm_resamples", "paired-bootstrap resamples of the confirmation's comparisons"),
        ("perplexity_budget", "percent: the most a confirmed configuration may raise the control's gold perplexity"),
    ),
    "each trial": (
        ("dev_examples", "rows of the seeded dev slice (0: sized by a pilot of the SFT policy for --dev-se)"),
        ("dev_se", "target standard error (Emp-F1) of two trials' paired dev difference, for --dev-examples 0"),
        ("split", "labelled split of the dev slice and final evaluation"),
        ("eval_examples", "rows of the final evaluation (all)"),
        ("max_failures", "restarts of a failed trial"),
        ("trial_cpus", "CPUs of the trial function's bundle"),
    ),
}  # fmt: skip
"""Every :class:`SweepSettings` field as one command-line option, by help group."""

METAVARS = {"constraints": "KEY<=X", "objectives": "METRIC:MODE"}
DERIVED = {"asha_rule"}
"""Settings the sweep writes, not the command line."""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "tune", help="Ray Tune sweep over PPO settings (ASHA on a dev Emp-F1; PBT, Optuna, --resume)"
    )
    add_config_args(parser)
    add_run_dir_args(
        parser,
        "sft/, identifiers/, labeled/",
        space="search space YAML: dotted key -> {uniform|loguniform|randint|choice|grid: ...} (required unless --resume)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in the folder with its own config, space and settings: finished trials "
        "stay, unfinished ones go on from their last checkpoint",
    )
    parser.add_argument("--out", type=user_path, default=None, help="sweep folder (default: <run>/sweep)")
    for title, options in SETTING_OPTIONS.items():
        group = parser.add_argument_group(title)
        for *named, field, text in options:
            _add_setting(group, named[0] if named else f"--{field.replace('_', '-')}", field, text)
    parser.set_defaults(func=main_args)


def _add_setting(group: Any, flag: str, field: str, text: str) -> None:
    """The option of one :class:`SweepSettings` field: its type, choices and default are the field's."""
    hint, default = get_type_hints(SweepSettings)[field], getattr(SweepSettings(), field)
    if hint is bool:  # --name / --no-name
        group.add_argument(
            flag, dest=field, default=default, action=argparse.BooleanOptionalAction, help=text
        )
    elif get_origin(hint) is Literal:
        group.add_argument(flag, dest=field, default=default, choices=get_args(hint), help=text)
    elif get_origin(hint) is tuple:  # repeatable
        group.add_argument(flag, dest=field, default=[], action="append", metavar=METAVARS[field], help=text)
    else:  # int, float, str, or X | None
        kind = (
            type(default) if default is not None else next(a for a in get_args(hint) if a is not type(None))
        )
        metavar = flag[2:].upper().replace("-", "_")  # the flag's, where the field is named otherwise
        group.add_argument(flag, dest=field, default=default, type=kind, metavar=metavar, help=text)


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """The :class:`SweepSettings` the command line asks for (``asha_rule`` is the sweep's to write)."""
    return SweepSettings.from_json(
        {f.name: getattr(args, f.name) for f in fields(SweepSettings) if f.name not in DERIVED}
    )


def resumed_sweep(args: argparse.Namespace, sweep: SweepDir) -> tuple[Config, SearchSpace, SweepSettings]:
    """The config, space and settings a sweep saved, for ``--resume`` (from the bucket when the sweep
    folder mirrors a URI: a resume may run on a node that never saw the sweep).

    Raises:
        SweepError: no sweep in the folder, or the command line asks for other settings than it ran with.
    """
    for saved_file in (sweep.settings, sweep.config, sweep.space):
        fetch(saved_file)
    if not sweep.settings.is_file():
        raise SweepError(
            f"--resume: {display(sweep.path)} holds no sweep (no {sweep.settings.name}). Fix: run the sweep "
            "without --resume first, or pass the folder it wrote with --out."
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
            f"{display(sweep.path)}); this command asks for {'; '.join(clash)}. Fix: drop those options, or "
            "start a new sweep with --out."
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
