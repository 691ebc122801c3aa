"""SFT stage: supervised fine-tuning (MLE) of the T5 policy on ED, context → listener response.

Laptop:        emprl sft [--preset local] [--run-dir runs/sft] [KEY=VALUE ...]   (same --run-dir resumes)
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.sft --preset paper \
                   --run-dir /shared/runs/paper resources.address=auto sft.num_workers=8 sft.engine.zero_stage=3
Sweep:         for lr in 3e-5 1e-4 3e-4; do emprl sft --run-dir runs/sft-lr$lr sft.optimizer.lr=$lr; done
"""

from __future__ import annotations

import argparse
from typing import Any

from jobs.launch.options import add_config_args, config_from_args, run_layout, run_module, user_path
from jobs.launch.stage import launch
from jobs.stages import sft_stage


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "sft", help="supervised fine-tuning of the T5 policy on ED (Ray Train + DeepSpeed)"
    )
    add_config_args(parser)
    parser.add_argument("--run-dir", type=user_path, default=None, help="run folder (re-use one to resume)")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run folder")
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    layout = run_layout(cfg, args.run_dir, "sft")
    launch(args, cfg, layout, lambda data: sft_stage(cfg, layout, data, resume=not args.no_resume))


def main(argv: list[str] | None = None) -> None:
    run_module("sft", add_parser, argv)


if __name__ == "__main__":
    main()
