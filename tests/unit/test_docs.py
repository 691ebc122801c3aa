"""The docs stay true: every command they show parses with the real CLI, every `make` target exists,
the configuration reference is current, and every link, path and Python name they cite resolves.

Nothing here runs a command or starts Ray: commands go through ``jobs.cli.main`` with the handler
swapped out, and their dotted overrides through ``load_config``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from jobs.cli import config as config_job
from jobs.cli import main as cli
from pipeline.config import ConfigError, load_config
from pipeline.config.describe import describe

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "make docs  (or: .venv/bin/emprl config --markdown > docs/configuration.md)"

FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)
START = re.compile(r"(?:^|\s--\s+)((?:emprl|python -m jobs\.cli)\b.*)$")
"""A command of ours: at the start of a line, or after ``ray job submit ... --``."""
USAGE = ("[", "...", "|", "KEY=VALUE", "<command>")
"""Marks of usage syntax, not a runnable command (``emprl config [--preset P] [PREFIX ...]``)."""
FIRST_PARTY = ("pipeline", "actors", "jobs")


def _rel(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def _blocks(text: str) -> Iterator[tuple[str, str]]:
    """``(language, body)`` of every fenced block, the body dedented (blocks inside list items)."""
    for match in FENCE.finditer(text):
        yield match.group(1), textwrap.dedent(match.group(2))


def _prose(text: str) -> str:
    """The text outside fenced blocks."""
    return FENCE.sub("", text)


def _substitute_shell(line: str) -> str:
    """``$(...)`` command substitutions (nested parentheses too) become a dummy word."""
    while (start := line.find("$(")) >= 0:
        depth, end = 0, start + 1
        for end in range(start + 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            if depth == 0:
                break
        line = line[:start] + "dummy" + line[end + 1 :]
    return line


def _commands(text: str) -> Iterator[tuple[str, str]]:
    """``(command, error shown)`` for every ``emprl ...`` / ``python -m jobs.cli...`` command in shell
    blocks (``\\`` continuations joined, ``$ `` prompts dropped; the error is the next line when it
    starts with ``config error:``, else empty) and in inline code that gives arguments and is not
    usage syntax (a bare ``emprl serve`` names a command, it does not run one)."""
    for lang, body in _blocks(text):
        if lang not in ("", "bash", "sh", "console"):
            continue
        lines = [line.strip() for line in body.replace("\\\n", " ").splitlines()]
        for line, after in zip(lines, [*lines[1:], ""], strict=True):
            if (match := START.search(line.removeprefix("$ "))) is not None:
                yield match.group(1), after if after.startswith("config error:") else ""
    for span in INLINE.findall(_prose(text)):
        match = START.search(span)
        if match is None or any(mark in span for mark in USAGE):
            continue
        if any(word.startswith("-") or "=" in word for word in match.group(1).split()[1:]):
            yield match.group(1), ""


def _argv(command: str) -> list[str]:
    """The ``emprl`` arguments of a shown command, placeholders (``<run>``, ``$(...)``) made dummies."""
    command = re.sub(r"<[^>\n]+>", "dummy", _substitute_shell(command))
    words = shlex.split(command, comments=True)
    if words[0] == "emprl":
        return words[1:]
    module = words[2]  # python -m jobs.cli[.<command>]
    return words[3:] if module == "jobs.cli" else [module.removeprefix("jobs.cli."), *words[3:]]


def _parse(argv: list[str]) -> argparse.Namespace:
    """``emprl ARGV`` through the real ``jobs.cli.main``, with the command's handler swapped out."""
    seen: list[argparse.Namespace] = []
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> argparse.Namespace:
        namespace = parse_args(self, *args, **kwargs)
        namespace.func = lambda _: None
        seen.append(namespace)
        return namespace

    # parsing only: no storage probe (the docs' buckets are examples, and nothing leaves 127.0.0.1)
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only),
        mock.patch.object(cli, "check_output_storage", lambda _: None),
    ):
        cli.main(argv)
    return seen[-1]


def _check_command(command: str) -> None:
    """Parse ``command``, load the config it names and check the paths and prefixes it gives."""
    args = _parse(_argv(command))
    items = list(getattr(args, "items", []) or [])
    overrides = list(getattr(args, "overrides", []) or []) + [i for i in items if "=" in i]
    if hasattr(args, "preset"):
        cfg = load_config(args.preset, overrides)
        prefixes = [i for i in items if "=" not in i]
        config_job.select(describe(cfg), prefixes)  # a misspelled section exits with the closest name
    for value in vars(args).values():
        if isinstance(value, str | Path) and str(value).startswith("configs/"):
            assert (ROOT / value).is_file(), f"{value} does not exist"


def _all_commands() -> list[tuple[str, str, str]]:
    return [(_rel(doc), *shown) for doc in DOCS for shown in _commands(doc.read_text(encoding="utf-8"))]


def test_docs_show_commands() -> None:
    found = _all_commands()
    assert len(found) >= 40, found  # the extraction itself still works
    assert {doc for doc, *_ in found} >= {
        "README.md",
        "docs/local-run.md",
        "docs/cluster.md",
        "docs/sweeps.md",
    }
    assert any(error for *_, error in found)  # the config error example is found (and checked below)


@pytest.mark.parametrize(("doc", "command", "error"), _all_commands())
def test_every_command_in_the_docs_parses(
    doc: str, command: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if error:  # a command shown failing must fail with the message shown
        with pytest.raises(ConfigError) as exc:
            _check_command(command)
        assert f"config error: {exc.value}" == error, f"{doc}: `{command}` now says something else"
        return
    try:
        _check_command(command)
    except SystemExit as exc:  # argparse, or a config error the CLI turns into an exit
        err = capsys.readouterr().err.strip().splitlines()
        detail = err[-1] if err else str(exc)
        pytest.fail(f"{doc}: `{command}` does not parse: {detail}")
    except ConfigError as exc:
        pytest.fail(f"{doc}: `{command}`: config error: {exc}")


def test_a_misspelled_command_or_key_fails() -> None:
    with pytest.raises(SystemExit):
        _check_command("emprl ppo --run-dir R --rezume")
    with pytest.raises(ConfigError, match="kl_targte"):
        _check_command("python -m jobs.cli.ppo --run-dir R ppo.kl_targte=3")
    with pytest.raises(SystemExit):
        _check_command("emprl config rewards")
    _check_command("emprl config reward.weights ppo.kl_target=3")
    assert _argv('emprl x a=$(python -c "print(f())") --run-dir runs/<run>') == [
        "x",
        "a=dummy",
        "--run-dir",
        "runs/dummy",
    ]


def test_make_targets_named_in_the_docs_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w.-]+)\s*:(?!=)", makefile, re.M))
    named: set[tuple[str, str]] = set()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        lines = [line for _, body in _blocks(text) for line in body.splitlines()]
        for snippet in [*lines, *INLINE.findall(_prose(text))]:
            for match in re.finditer(r"(?:^|\s)make ((?:[\w.-]+(?: |$))+)", snippet.strip()):
                named |= {(_rel(doc), t) for t in match.group(1).split() if "=" not in t}
    assert {t for _, t in named} >= {"run", "test", "docs", "bench-trl"}
    missing = sorted((doc, target) for doc, target in named if target not in targets)
    assert not missing, f"make targets named in the docs but not in the Makefile: {missing}"


def test_configuration_reference_is_current() -> None:
    expected = config_job.markdown()
    actual = REFERENCE.read_text(encoding="utf-8") if REFERENCE.is_file() else ""
    assert actual == expected, f"docs/configuration.md is stale; regenerate it: {REGENERATE}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_relative_link_resolves() -> None:
    broken: list[str] = []
    for doc in DOCS:
        for target in LINK.findall(_prose(doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{_rel(doc)}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                anchors = {_slug(h) for h in HEADING.findall(_prose(file.read_text(encoding="utf-8")))}
                if anchor not in anchors:
                    broken.append(f"{_rel(doc)}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_repository_paths_in_the_docs_exist() -> None:
    pattern = re.compile(
        r"^(?:python )?((?:pipeline|actors|jobs|configs|benchmarks|tests|requirements)/[\w/.-]*)"
    )
    missing: list[str] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        spans = INLINE.findall(_prose(text)) + [
            line.strip() for _, body in _blocks(text) for line in body.splitlines()
        ]
        for span in spans:
            match = pattern.match(span.removeprefix("$ "))
            if match and ".venv" not in match.group(1) and not (ROOT / match.group(1)).exists():
                missing.append(f"{_rel(doc)}: {match.group(1)}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def _resolve(dotted: str) -> None:
    """Import the longest module prefix of ``dotted`` and look the rest up as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return
    raise ModuleNotFoundError(dotted)


def test_python_names_in_the_docs_exist() -> None:
    names: set[tuple[str, str]] = set()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for span in INLINE.findall(_prose(text)):
            if match := re.match(rf"^((?:{'|'.join(FIRST_PARTY)})(?:\.\w+)+)(?:\(.*\))?$", span):
                names.add((_rel(doc), match.group(1)))
        for lang, body in _blocks(text):
            if lang != "python":
                continue
            for node in ast.walk(ast.parse(body)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FIRST_PARTY:
                    names |= {(_rel(doc), f"{node.module}.{alias.name}") for alias in node.names}
    assert len(names) >= 5, names
    missing: list[str] = []
    for doc, name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{doc}: {name} ({exc})")
    assert not missing, "Python names in the docs that do not resolve:\n" + "\n".join(missing)
