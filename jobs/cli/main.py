"""The ``emprl`` command (also ``python -m jobs.cli``): one subcommand per stage, plus ``run`` for the whole pipeline.

emprl run [--preset local] [KEY=VALUE ...]
emprl data prepare|download|stats ...
emprl identifiers train|label ...
emprl sft [--run-dir DIR] ...
emprl ppo [--run-dir DIR] [--resume] ...
emprl tune --run-dir DIR --space SPACE.yaml [--num-samples N] [--metric dev/emp_f1] [--max-concurrent 1] ...
emprl evaluate --run-dir DIR [--policy NAME=FOLDER ...] [--split valid] [--decoding sample|greedy] ...
emprl serve --run-dir DIR [--policy DIR] [--identifiers DIR] [KEY=VALUE ...]
emprl config [--preset local] [PREFIX ...] [KEY=VALUE ...] [--yaml]
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli import config
from jobs.launch.options import check_output_storage


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    args.argv = list(argv)
    if args.command != "config":  # a long-running command: SIGTERM stops it as Ctrl-C does
        from actors.cluster.session import stop_on_sigterm

        stop_on_sigterm()
    check_output_storage(args)
    args.func(args)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The ``emprl`` parser for ``argv``: every command's, or only ``config``'s when that is the command."""
    parser = argparse.ArgumentParser(prog="emprl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    if argv[:1] == ["config"]:  # printing the config needs none of the stages' Ray and torch imports (~5 s)
        config.add_parser(sub)
    else:
        from jobs.cli import data, evaluate, identifiers, ppo, run, serve, sft, tune

        for module in (run, data, identifiers, sft, ppo, tune, evaluate, serve, config):
            module.add_parser(sub)
    return parser


if __name__ == "__main__":
    main()
