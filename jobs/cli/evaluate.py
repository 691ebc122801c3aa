"""Evaluate stage: responses of one or more policies on a labelled ED split, Emp-F1 and the paper's metrics.

Laptop:        emprl evaluate --run-dir runs/demo            (the run's sft and ppo policies on valid; writes
                                                               runs/demo/evaluate/report.html)
               emprl evaluate --run-dir runs/demo --policy sft=runs/demo/sft/policy --policy mine=/path \
                   --decoding greedy --max-examples 500
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.evaluate --preset paper --run-dir /shared/runs/paper \
                   resources.address=auto rollout.num_workers=8 reward.num_scorers=2
Sweep:         for run in runs/tune/*/; do emprl evaluate --run-dir "$run"; done
Bucket:        emprl evaluate --run-dir s3://bucket/runs/paper --policy mine=s3://bucket/policies/mine
                   (inputs fetched onto the nodes that read them; metrics, responses and report published)
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.launch.options import add_config_args, config_from_args, run_module, user_path
from jobs.launch.stage import launch, user_errors
from jobs.stages import evaluate_stage, load_evaluation_inputs
from pipeline.layout import RunLayout

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_policy(text: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` of ``--policy``."""
    name, sep, folder = text.partition("=")
    if not sep or not NAME.match(name) or not folder:
        raise argparse.ArgumentTypeError(
            f"--policy {text!r}: expected NAME=FOLDER with NAME of letters, digits, '_', '.', '-' "
            "(e.g. --policy sft=runs/demo/sft/policy)"
        )
    return name, user_path(folder)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="Emp-F1, perplexity, Dist-n, BLEU, ROUGE-L of policies on a labelled split, with a report",
    )
    add_config_args(parser)
    parser.add_argument(
        "--run-dir", type=user_path, required=True, help="run folder holding labeled/, identifiers/"
    )
    parser.add_argument(
        "--policy", type=parse_policy, action="append", default=[], metavar="NAME=FOLDER",
        help="policy to evaluate (repeatable; the first is the baseline of the comparisons); "
        "default: <run>/sft/policy as sft and <run>/ppo/policy as ppo, those that exist",
    )  # fmt: skip
    parser.add_argument("--split", default="valid", help="labelled split <run>/labeled/<split>.parquet")
    parser.add_argument("--identifiers", type=user_path, default=None, help="default: <run>/identifiers")
    parser.add_argument(
        "--decoding", choices=("sample", "greedy"), default="sample",
        help="sample: rollout.top_k/top_p/temperature with run.seed (the paper's test decoding); greedy: argmax",
    )  # fmt: skip
    parser.add_argument(
        "--max-examples", type=int_at_least(1), default=None, help="evaluate the first N examples only"
    )
    parser.add_argument("--out", type=user_path, default=None, help="output folder (default: <run>/evaluate)")
    parser.add_argument(
        "--num-workers",
        type=int_at_least(1),
        default=None,
        help="evaluation workers (default: rollout.num_workers)",
    )
    parser.add_argument(
        "--bootstrap-resamples", type=int_at_least(1), default=1000, help="paired bootstrap resamples"
    )
    parser.add_argument(
        "--samples", type=int_at_least(0), default=10, help="contexts shown side by side in the report"
    )
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    layout = RunLayout(args.run_dir).moved(evaluate=args.out)
    with user_errors():  # before Ray: bad inputs fail at once
        inputs = load_evaluation_inputs(
            layout,
            policies=args.policy,
            split=args.split,
            identifiers=args.identifiers,
            max_examples=args.max_examples,
        )
    launch(
        args,
        cfg,
        layout,
        lambda _: evaluate_stage(
            cfg,
            layout,
            inputs,
            decoding=args.decoding,
            num_workers=args.num_workers,
            n_resamples=args.bootstrap_resamples,
            num_samples=args.samples,
        ),
        needs_data=False,
    )


def main(argv: list[str] | None = None) -> None:
    run_module("evaluate", add_parser, argv)


if __name__ == "__main__":
    main()
