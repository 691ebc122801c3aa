"""Tune job: a Ray Tune sweep over PPO settings (dotted config keys), each trial a PPO run in its own
placement group, ASHA on a dev Emp-F1, the full evaluation last; ``<run>/sweep/`` gets the results.

Laptop:        emprl tune --run-dir runs/demo --space configs/sweeps/tiny.yaml --preset sweep_tiny --num-samples 2
Cluster job:   ray job submit --working-dir . -- python -m jobs.tune --preset paper --run-dir /shared/runs/paper \
                   --space configs/sweeps/kl_and_weights.yaml --num-samples 16 --max-concurrent 4 resources.address=auto
Sweep:         this is the sweep command; `emprl config` lists every key a space can name
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jobs.common import add_config_args, config_from_args, run_module
from jobs.launch import launch, user_errors
from jobs.stages import load_ppo_inputs
from jobs.stages.tune import check_metric, tune_stage
from pipeline.config.search_space import load_search_space
from pipeline.layout import RunLayout


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("tune", help="Ray Tune sweep over PPO settings (ASHA on a dev Emp-F1)")
    add_config_args(parser)
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="run folder holding sft/, identifiers/, labeled/"
    )
    parser.add_argument(
        "--space",
        type=Path,
        required=True,
        help="search space YAML: dotted key -> {uniform|loguniform|randint|choice|grid: ...}",
    )
    parser.add_argument("--num-samples", type=int, default=1, help="samples of the space (times the grid)")
    parser.add_argument("--metric", default="dev/emp_f1", help="reported metric to compare trials on")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials running at once")
    parser.add_argument("--report-every", type=int, default=1, help="PPO iterations between reports")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: reports before a trial can stop")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor")
    parser.add_argument("--dev-examples", type=int, default=32, help="rows of the seeded dev slice")
    parser.add_argument(
        "--split", default="valid", help="labelled split of the dev slice and final evaluation"
    )
    parser.add_argument("--eval-examples", type=int, default=None, help="rows of the final evaluation (all)")
    parser.add_argument("--max-failures", type=int, default=1, help="restarts of a failed trial")
    parser.add_argument("--trial-cpus", type=float, default=0.1, help="CPUs of the trial function's bundle")
    parser.add_argument("--out", type=Path, default=None, help="sweep folder (default: <run>/sweep)")
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    layout = RunLayout(args.run_dir)
    with user_errors():  # before Ray: a bad space, metric or input fails at once, naming the key
        space = load_search_space(args.space, cfg)
        check_metric(args.metric)
        load_ppo_inputs(layout)
    launch(
        args,
        cfg,
        layout,
        lambda _: tune_stage(
            cfg,
            layout,
            space,
            num_samples=args.num_samples,
            metric=args.metric,
            mode=args.mode,
            scheduler=args.scheduler,
            max_concurrent_trials=args.max_concurrent,
            report_every=args.report_every,
            grace_period=args.grace_period,
            reduction_factor=args.reduction_factor,
            dev_examples=args.dev_examples,
            split=args.split,
            eval_examples=args.eval_examples,
            max_failures=args.max_failures,
            trial_cpus=args.trial_cpus,
            sweep_dir=args.out,
        ),
        needs_data=False,
    )


def main(argv: list[str] | None = None) -> None:
    run_module("tune", add_parser, argv)


if __name__ == "__main__":
    main()
