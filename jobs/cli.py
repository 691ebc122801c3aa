"""The ``emprl`` command: one subcommand per stage, plus ``run`` for the whole pipeline.

emprl run [--preset local] [KEY=VALUE ...]
emprl data prepare|download|stats ...
emprl identifiers train|label ...
emprl sft [--run-dir DIR] ...
emprl ppo [--run-dir DIR] [--resume] ...
emprl evaluate --run-dir DIR [--policy NAME=FOLDER ...] [--split valid] [--decoding sample|greedy] ...
"""

from __future__ import annotations

import argparse

from jobs import data, evaluate, identifiers, ppo, run, sft


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="emprl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (run, data, identifiers, sft, ppo, evaluate):
        module.add_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
