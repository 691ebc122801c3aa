"""The config tree as documented rows: every leaf's dotted key, value, default and docstring.

Field docs are the attribute docstrings of ``schema.py`` (the string literal under each field),
read with :mod:`ast`; sections are found by recursing into any dataclass-typed field, so new
sections need no registration here. ``emprl config`` prints these rows.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from pipeline.config.tree import Config


@dataclass(frozen=True)
class FieldDoc:
    """One leaf of the config tree."""

    key: str
    """Dotted key, as an override or a search space names it (``ppo.kl_target``)."""
    value: Any
    """Resolved value."""
    default: Any
    """The schema's default."""
    doc: str
    """The field's whole docstring, whitespace collapsed (empty when the field has none)."""

    @property
    def changed(self) -> bool:
        """Whether the resolved value differs from the default."""
        return bool(self.value != self.default)

    @property
    def summary(self) -> str:
        """The docstring's first sentence."""
        return first_sentence(self.doc)


@dataclass(frozen=True)
class SectionDoc:
    """One section (a dataclass-typed field) of the config tree."""

    key: str
    """Dotted key of the section (``reward.weights``)."""
    doc: str
    """The field's docstring, else the section class's docstring, whitespace collapsed."""

    @property
    def summary(self) -> str:
        """The docstring's first sentence."""
        return first_sentence(self.doc)


def describe(cfg: Config | None = None) -> list[FieldDoc]:
    """Every leaf of ``cfg`` (default: ``Config()``) in schema order, with its default and doc."""
    cfg = Config() if cfg is None else cfg
    return [row for row in _walk(cfg, Config(), "") if isinstance(row, FieldDoc)]


def sections() -> list[SectionDoc]:
    """Every section of the tree (nested ones too, e.g. ``reward.weights``) in schema order."""
    return [row for row in _walk(Config(), Config(), "") if isinstance(row, SectionDoc)]


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: attribute docstring}`` of a dataclass and its dataclass bases."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def first_sentence(doc: str) -> str:
    """Up to the first full stop outside parentheses (``(Sharma et al. 2020)`` stays whole), without
    RST double backticks."""
    text = " ".join(doc.split()).replace("``", "`")
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        ends = char in ".!?" and depth <= 0 and text[i + 1 : i + 2] in (" ", "")
        if ends and text[max(i - 3, 0) : i + 1] not in ("e.g.", "i.e."):
            return text[: i + 1]
    return text


def _walk(obj: Any, default: Any, prefix: str) -> list[FieldDoc | SectionDoc]:
    cls = type(obj)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    rows: list[FieldDoc | SectionDoc] = []
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        default_value = getattr(default, f.name, None)
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            doc = docs.get(f.name) or inspect.getdoc(tp) or ""
            rows.append(SectionDoc(key, " ".join(doc.split())))
            sub_default = default_value if isinstance(default_value, tp) else tp()
            rows.extend(_walk(value, sub_default, f"{key}."))
        else:
            rows.append(FieldDoc(key, value, default_value, " ".join(docs.get(f.name, "").split())))
    return rows


@functools.cache
def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a frozen build): the tree prints without docs
        return {}
    node = ast.parse(source).body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    docs: dict[str, str] = {}
    for stmt, nxt in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def field_types(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """``{dotted key: type as the schema annotates it}`` of every leaf (``float``, ``str | None``,
    ``Literal['k1', 'k2', 'k3']``), in schema order; the config reference prints it."""
    types: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            types.update(field_types(tp, f"{prefix}{f.name}."))
        else:
            types[f"{prefix}{f.name}"] = type_name(tp)
    return types


def type_name(tp: Any) -> str:
    """A type annotation as written in source, without the ``typing.`` prefix."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")
