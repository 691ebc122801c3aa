"""PPO stage: EmpRL's reinforcement learning of the SFT policy towards the gold empathy levels.

Laptop:        emprl ppo --run-dir runs/demo [KEY=VALUE ...]        (reads the run's SFT policy, identifiers
               emprl ppo --run-dir runs/demo --resume                 and labelled train split)
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.ppo --preset paper --run-dir /shared/runs/paper \
                   resources.address=auto rollout.num_workers=4 reward.num_scorers=2 learner.num_ranks=4
Sweep:         emprl tune (reward weights and KL settings over these dotted keys)
Object store:  emprl ppo --run-dir s3://bucket/runs/demo [--resume]    (no shared disk needed: checkpoints,
               the log and the policy are uploaded where they are written; a resume on any node reads them
               from the bucket)
"""

from __future__ import annotations

import argparse
from typing import Any

from jobs.launch.options import add_config_args, config_from_args, run_layout, run_module, user_path
from jobs.launch.stage import launch, user_errors
from jobs.stages import check_ppo_inputs, ppo_stage


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "ppo", help="PPO of the SFT policy on Ray actors (rollout, reward, reference, learner)"
    )
    add_config_args(parser)
    parser.add_argument(
        "--run-dir",
        type=user_path,
        default=None,
        help="run folder holding sft/, identifiers/, labeled/ (a path, or s3://bucket/prefix, gs://...)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint"
    )
    parser.add_argument(
        "--policy", type=user_path, default=None, help="start policy (default: <run>/sft/policy)"
    )
    parser.add_argument(
        "--identifiers", type=user_path, default=None, help="identifiers (default: <run>/identifiers)"
    )
    parser.add_argument(
        "--prompts",
        type=user_path,
        default=None,
        help="labelled prompts (default: <run>/labeled/train.parquet)",
    )
    parser.add_argument("--out", type=user_path, default=None, help="output folder (default: <run>/ppo)")
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    layout = run_layout(cfg, args.run_dir, "ppo").moved(ppo=args.out)
    paths = {"policy": args.policy, "identifiers": args.identifiers, "prompts": args.prompts}
    with user_errors():  # before Ray: bad inputs fail at once
        inputs = check_ppo_inputs(layout, resume=args.resume, **paths)
    launch(
        args,
        cfg,
        layout,
        lambda _: ppo_stage(cfg, layout, resume=args.resume, inputs=inputs),
        needs_data=False,
    )


def main(argv: list[str] | None = None) -> None:
    run_module("ppo", add_parser, argv)


if __name__ == "__main__":
    main()
