"""Plain config trees: dotted overrides (``ppo.clip_ratio=0.1``) laid over nested dicts, and the strict
build of a dataclass tree from such a dict (unknown keys and wrong types name the key).

Knows no particular schema: the root :class:`~pipeline.config.tree.Config` and the preset loader both
use it, with any frozen dataclass tree.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

import yaml

from pipeline.config.schema import ConfigError


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """``data`` (changed in place and returned) with each dotted override set: a mapping of key to value,
    or ``section.key=value`` strings whose values are read as YAML."""
    items: Iterable[tuple[str, Any]] = (
        overrides.items() if isinstance(overrides, dict) else parse_overrides(overrides)
    )
    for key, value in items:
        set_dotted(data, key, value)
    return data


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    items = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form section.key=value (e.g. ppo.clip_ratio=0.1)"
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        items.append((key.strip(), value))
    return items


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        if part not in node:
            raise _unknown(".".join(parts[: depth + 1]), node)
        if not isinstance(node[part], dict):
            path = ".".join(parts[: depth + 1])
            raise ConfigError(f"{key}: {path} is a value, not a section. Fix: set {path}=VALUE")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise _unknown(key, node)
    if isinstance(node[leaf], dict):  # a mapping updates the keys it names; the rest keep their values
        if not isinstance(value, dict):
            raise _not_a_mapping(key, node[leaf], value)
        node[leaf] = merge(node[leaf], value, f"{key}.")
    else:
        node[leaf] = value


def merge(base: dict[str, Any], update: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise _unknown(dotted, base)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise _not_a_mapping(dotted, base[key], value)
            out[key] = merge(base[key], value, f"{dotted}.")
        else:
            out[key] = value
    return out


def _not_a_mapping(key: str, section: dict[str, Any], value: Any) -> ConfigError:
    first = next(iter(section), "KEY")
    return ConfigError(
        f"{key}={value!r}: {key} is a section with keys {list(section)}, not a value. "
        f"Fix: set its keys one by one (e.g. {key}.{first}=...) or give a mapping"
    )


MOVED_KEYS: dict[str, str] = {
    f"{section}.{leaf}": f"{section}.{group}.{leaf}"
    for section, group, leaves in (
        ("identifiers", "optimizer", ("lr", "weight_decay", "max_grad_norm", "warmup_ratio")),
        ("identifiers", "engine", ("zero_stage", "precision", "offload")),
        ("sft", "optimizer", ("lr", "weight_decay", "max_grad_norm", "warmup_ratio")),
        ("sft", "engine", ("zero_stage", "precision", "offload")),
        ("learner", "engine", ("zero_stage", "precision", "offload")),
    )
    for leaf in leaves
}
"""Keys that moved into the shared ``optimizer`` / ``engine`` sections: old key → new key."""


def _unknown(key: str, node: dict[str, Any]) -> ConfigError:
    if key in MOVED_KEYS:
        return ConfigError(f"unknown config key {key!r}: it is now {MOVED_KEYS[key]!r}. Fix: use that key")
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(node), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys here: {sorted(node)}"
    return ConfigError(f"unknown config key {key!r}; {hint}")


def build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown(f"{prefix}{key}", {n: None for n in names})
    kwargs = {}
    for name in names & set(data):
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"{prefix.rstrip('.')}: {exc}") from exc


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, f"{key}.")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list ({_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected {len(args)} items ({_name(tp)})")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # pragma: no cover


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
