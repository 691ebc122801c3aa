"""Config stage: print the resolved config tree, each key with its one-line doc and default; starts nothing.

Laptop:        emprl config [--preset local] [ppo | reward.weights | ppo.kl ...] [KEY=VALUE ...] [--yaml]
Cluster job:   none needed; `python -m jobs.cli.config --preset paper` shows what a submitted job gets.
Sweep:         every key printed is a dotted key a search space or an override can name.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any

import yaml

from jobs.launch.options import load_or_exit, run_module
from pipeline.config.describe import FieldDoc, describe, sections

VALUE_WIDTH = 28
"""Widest value column; longer values push their doc to the right."""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "config",
        help="print the resolved config: every key with its value, default and doc",
        description="Print the resolved config tree (defaults < preset < overrides) without starting "
        "anything. Lines starting with * differ from the schema default.",
    )
    parser.add_argument(
        "--preset", default="local", help="preset name in configs/ or a YAML path (default: local)"
    )
    parser.add_argument(
        "--yaml", action="store_true", help="print only the resolved YAML (loadable with --preset)"
    )
    parser.add_argument(
        "items",
        nargs="*",
        metavar="PREFIX|KEY=VALUE",
        help="key prefixes to show (ppo, reward.weights, ppo.kl) and dotted overrides (ppo.kl_coef=0.1)",
    )
    parser.set_defaults(func=config_main)


def config_main(args: argparse.Namespace) -> None:
    overrides = [item for item in args.items if "=" in item]
    prefixes = [item for item in args.items if "=" not in item]
    cfg = load_or_exit(args.preset, overrides)
    rows = select(describe(cfg), prefixes)
    if args.yaml:
        sys.stdout.write(yaml.safe_dump(as_tree(rows), sort_keys=False, allow_unicode=True))
        return
    changed = sum(row.changed for row in rows)
    given = f"# preset {args.preset}" + (f" + {len(overrides)} override(s)" if overrides else "")
    sys.stdout.write(f"{given}: {changed} of {len(rows)} keys differ from the schema default (*)\n")
    sys.stdout.write(render(rows))


def select(rows: list[FieldDoc], prefixes: list[str]) -> list[FieldDoc]:
    """The rows under any of ``prefixes`` (a section, a dotted key, or a key's start: ``ppo.kl``)."""
    if not prefixes:
        return rows
    for prefix in prefixes:
        if not any(_under(row.key, prefix) for row in rows):
            raise SystemExit(f"config error: {_no_match(prefix, rows)}")
    return [row for row in rows if any(_under(row.key, p) for p in prefixes)]


def render(rows: list[FieldDoc]) -> str:
    """One line per leaf under a header per top-level section: ``[*] key  value [(default d)]  doc``."""
    heads = {s.key: s.summary for s in sections()}
    values = [_show(row.value) + (f" (default {_show(row.default)})" if row.changed else "") for row in rows]
    key_width = max(len(row.key) for row in rows)
    value_width = min(max(len(v) for v in values), VALUE_WIDTH)
    lines: list[str] = []
    for row, value in zip(rows, values, strict=True):
        section = row.key.split(".")[0]
        if not lines or not lines[-1][2:].startswith(section + "."):
            lines += [""] if lines else []
            lines.append(f"[{section}] {heads.get(section, '')}".rstrip())
        mark = "*" if row.changed else " "
        lines.append(f"{mark} {row.key:<{key_width}}  {value:<{value_width}}  {row.summary}".rstrip())
    return "\n".join(lines) + "\n"


def as_tree(rows: list[FieldDoc]) -> dict[str, Any]:
    """The rows' values as a nested mapping (tuples as lists), the shape of a preset file."""
    tree: dict[str, Any] = {}
    for row in rows:
        *parents, leaf = row.key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(row.value) if isinstance(row.value, tuple) else row.value
    return tree


def _under(key: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return key == prefix or key.startswith(prefix + ".") or ("." in prefix and key.startswith(prefix))


def _no_match(prefix: str, rows: list[FieldDoc]) -> str:
    names = sorted({part for row in rows for part in _prefixes(row.key)})
    close = difflib.get_close_matches(prefix, names, n=1)
    top = sorted({row.key.split(".")[0] for row in rows})
    hint = f"did you mean {close[0]!r}?" if close else f"sections: {top}"
    return f"no config key starts with {prefix!r}; {hint}"


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _show(value: Any) -> str:
    """A value as it is written in an override or a preset (``null``, ``true``, ``[train, valid]``)."""
    plain = list(value) if isinstance(value, tuple) else value
    text = yaml.safe_dump(plain, default_flow_style=True, width=10**9, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def main(argv: list[str] | None = None) -> None:
    run_module("config", add_parser, argv)


if __name__ == "__main__":
    main()
