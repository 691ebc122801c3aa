"""Identifier stages: train the ER/IP/EX classifiers on EPITOME, and label ED with them.

Laptop:        emprl identifiers train [--preset local] [--run-dir runs/ids] [KEY=VALUE ...]
               emprl identifiers label --run-dir runs/ids     (writes runs/ids/labeled/<split>.parquet)
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.identifiers train --preset paper \
                   --run-dir /shared/runs/ids resources.address=auto
Sweep:         not swept; PPO trials reuse the trained identifiers.
"""

from __future__ import annotations

import argparse
from typing import Any

from jobs.launch.options import add_config_args, config_from_args, run_layout, run_module, user_path
from jobs.launch.stage import launch
from jobs.stages import identifiers_stage, label_stage
from pipeline.layout import RunLayout


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("identifiers", help="train the empathy identifiers, or label ED with them")
    actions = parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train ER/IP/EX identifiers on EPITOME with Ray Train")
    add_config_args(train)
    train.add_argument("--run-dir", type=user_path, default=None, help="run folder (re-use one to resume)")
    train.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run folder")
    train.set_defaults(func=train_main)
    label = actions.add_parser("label", help="label ED gold responses with trained identifiers (resumable)")
    add_config_args(label)
    label.add_argument("--run-dir", type=user_path, required=True, help="run folder holding identifiers/")
    label.set_defaults(func=label_main)


def train_main(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    layout = run_layout(cfg, args.run_dir, "identifiers")
    launch(args, cfg, layout, lambda data: identifiers_stage(cfg, layout, data, resume=not args.no_resume))


def label_main(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    layout = RunLayout(args.run_dir)
    launch(args, cfg, layout, lambda data: label_stage(cfg, layout, data))


def main(argv: list[str] | None = None) -> None:
    run_module("identifiers", add_parser, argv)


if __name__ == "__main__":
    main()
