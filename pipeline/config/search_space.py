"""Sweep search spaces: dotted config keys mapped to sampling specs, parsed and checked before any trial.

A space file is a YAML mapping ``KEY: {KIND: ARGS}`` whose keys are the config's dotted paths
(``ppo.kl_coef: {loguniform: [0.05, 0.5]}``). Every key must name a leaf of the config tree, and
every value a trial can draw (range ends, every choice) must pass the config's own validation, so a
bad space fails here, naming the key and the fix, instead of inside a trial. No Ray here: the jobs
layer turns a :class:`SearchSpace` into ``ray.tune`` objects.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml

from pipeline import storage
from pipeline.config.describe import describe, sections
from pipeline.config.schema import ConfigError
from pipeline.config.tree import Config

Kind = Literal["uniform", "loguniform", "randint", "choice", "grid"]
KINDS: tuple[Kind, ...] = get_args(Kind)
RANGES: tuple[Kind, ...] = ("uniform", "loguniform", "randint")

MAX_JOINT_PROBES = 512
"""Up to this many combinations of probe values are checked together (cross-key rules, e.g. batch
divisibility); larger spaces are checked one key at a time."""

EXAMPLE = "ppo.kl_coef: {loguniform: [0.05, 0.5]}"

SEED_KEY = "run.seed"
"""The config key a sweep's ``--seeds`` varies; the rest of a trial's swept values is its configuration."""


class SearchSpaceError(ConfigError):
    """A search space names an unknown key, has a malformed spec, or can draw a value the config rejects."""


@dataclass(frozen=True)
class Dimension:
    """One swept key: ``kind`` with ``args`` (``(low, high)`` for ranges, the options otherwise)."""

    key: str
    """Dotted config key (``ppo.kl_target``)."""
    kind: Kind
    """``uniform``/``loguniform`` (floats in [low, high]), ``randint`` (integers in [low, high)),
    ``choice`` (one option at random) or ``grid`` (every option, crossed with the other grids)."""
    args: tuple[Any, ...]

    @property
    def probes(self) -> tuple[Any, ...]:
        """The values checked against the config: a range's ends, every option."""
        if self.kind == "randint":
            return (self.args[0], self.args[1] - 1)
        if self.kind in RANGES:
            return (self.args[0], self.args[1])
        return self.args

    def describe(self) -> str:
        """``loguniform [0.05, 0.5]``: the spec as a person reads it."""
        return f"{self.kind} {list(self.args)}"


@dataclass(frozen=True)
class SearchSpace:
    """The swept keys in file order; everything else comes from the base config."""

    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The swept dotted keys."""
        return tuple(d.key for d in self.dimensions)

    @property
    def grid_size(self) -> int:
        """Trials per sample: the product of the grid dimensions' sizes (1 without grids)."""
        return math.prod(len(d.args) for d in self.dimensions if d.kind == "grid")

    def clamp(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` pulled back into the space: a range's value clipped to ``[low, high]`` (``randint``
        rounded to an integer below ``high``), an option outside the list replaced by the first option.
        Population Based Training perturbs a sampled value by a factor,
        which can leave the range the space was checked over; this keeps every trial's config valid."""
        out = dict(values)
        for dim in self.dimensions:
            if dim.key not in out:
                continue
            value = out[dim.key]
            if dim.kind in RANGES:
                low, high = dim.args
                if dim.kind == "randint":
                    out[dim.key] = int(min(max(round(float(value)), low), high - 1))
                else:
                    out[dim.key] = float(min(max(float(value), low), high))
            elif value not in dim.args:
                out[dim.key] = dim.args[0]
        return out

    def values_of(self, cfg: Config) -> dict[str, Any]:
        """``{swept key: its value in cfg}``: the point of the space a config sits on (the sweep's control)."""
        tree = cfg.to_dict()
        out: dict[str, Any] = {}
        for key in self.keys:
            node: Any = tree
            for part in key.split("."):
                node = node[part]
            out[key] = node
        return out

    def probe_configs(self, base: Config) -> list[tuple[dict[str, Any], Config]]:
        """Every combination of probe values with its config (or each key alone for big spaces).

        Raises:
            SearchSpaceError: a combination the config rejects, naming the keys, values and the fix.
        """
        combos = math.prod(len(d.probes) for d in self.dimensions)
        if combos <= MAX_JOINT_PROBES:
            assignments = [
                dict(zip(self.keys, values, strict=True))
                for values in itertools.product(*(d.probes for d in self.dimensions))
            ]
        else:
            assignments = [{d.key: v} for d in self.dimensions for v in d.probes]
        out = []
        for assignment in assignments:
            try:
                out.append((assignment, base.with_overrides(assignment)))
            except ConfigError as exc:
                raise SearchSpaceError(_rejected(self, assignment, exc)) from exc
        return out


def load_search_space(path: str | Path, base: Config) -> SearchSpace:
    """Parse and check the YAML space file ``path`` against ``base`` (see :func:`parse_search_space`)."""
    path = storage.fetch(storage.local_path(str(path)))  # a space in a bucket: this node's fresh copy
    if not path.is_file():
        raise SearchSpaceError(
            f"search space {storage.display(path)} does not exist. Fix: pass a YAML file such as {EXAMPLE}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"search space {path} is not valid YAML: {exc}") from exc
    try:
        return parse_search_space(data, base)
    except SearchSpaceError as exc:
        raise SearchSpaceError(f"{path}: {exc}") from exc


def parse_search_space(data: Any, base: Config) -> SearchSpace:
    """A :class:`SearchSpace` from ``{dotted key: {kind: args}}``, checked against ``base``.

    Raises:
        SearchSpaceError: an unknown key (with the closest one), a spec that is not one of
            :data:`KINDS` with the right arguments, or a drawable value ``base.with_overrides`` rejects.
    """
    if not isinstance(data, Mapping) or not data:
        raise SearchSpaceError(
            f"a search space is a non-empty mapping of dotted config keys to specs, got {data!r}. "
            f"Fix: write e.g. {EXAMPLE}"
        )
    leaves = {row.key for row in describe(base)}
    dims = []
    for key, spec in data.items():
        _check_key(str(key), leaves)
        dims.append(_dimension(str(key), spec))
    space = SearchSpace(tuple(dims))
    for dim in dims:  # one key at a time first: the message then names the single culprit
        for value in dim.probes:
            try:
                base.with_overrides({dim.key: value})
            except ConfigError as exc:
                raise SearchSpaceError(_rejected(space, {dim.key: value}, exc)) from exc
    space.probe_configs(base)
    return space


def _check_key(key: str, leaves: set[str]) -> None:
    if key in leaves:
        return
    if key in {s.key for s in sections()}:
        inner = sorted(k for k in leaves if k.startswith(f"{key}."))
        raise SearchSpaceError(
            f"{key} is a config section, not a value. Fix: sweep its keys one by one ({', '.join(inner[:4])})"
        )
    close = difflib.get_close_matches(key, sorted(leaves), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "`emprl config` lists every key"
    raise SearchSpaceError(f"unknown config key {key!r} in the search space; {hint}")


def _dimension(key: str, spec: Any) -> Dimension:
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SearchSpaceError(
            f"{key}: {spec!r} is not a sampling spec. Fix: give one of {list(KINDS)} with its arguments, "
            f"e.g. {key}: {{uniform: [LOW, HIGH]}} or {key}: {{choice: [A, B]}}"
        )
    kind = cast(Kind, next(iter(spec)))
    args = spec[kind]
    if kind in RANGES:
        numeric = (int,) if kind == "randint" else (int, float)
        ok = (
            isinstance(args, list)
            and len(args) == 2
            and all(isinstance(a, numeric) and not isinstance(a, bool) for a in args)
        )
        if not ok:
            what = "two integers" if kind == "randint" else "two numbers"
            raise SearchSpaceError(
                f"{key}: {kind} takes [LOW, HIGH], {what}; got {args!r}. Fix: e.g. {{{kind}: [1, 4]}}"
            )
        low, high = args
        if not low < high:
            raise SearchSpaceError(
                f"{key}: {kind} [{low}, {high}] needs LOW < HIGH. Fix: swap or widen the range"
            )
        if kind == "loguniform" and low <= 0:
            raise SearchSpaceError(
                f"{key}: loguniform [{low}, {high}] needs LOW > 0 (log scale). Fix: start the range above 0, "
                "or use uniform"
            )
        return Dimension(key, kind, (low, high))
    if not isinstance(args, list) or not args:
        raise SearchSpaceError(
            f"{key}: {kind} takes a non-empty list of values, got {args!r}. Fix: e.g. {{{kind}: [A, B]}}"
        )
    return Dimension(key, kind, tuple(args))


def _rejected(space: SearchSpace, assignment: dict[str, Any], exc: ConfigError) -> str:
    specs = {d.key: d.describe() for d in space.dimensions}
    drawn = ", ".join(f"{k}={v!r} (from {specs[k]})" for k, v in assignment.items())
    return (
        f"the search space can draw {drawn}, which the config rejects: {str(exc).rstrip('.')}. Fix: narrow the range or drop "
        "the value so that every value a trial can draw is valid."
    )
