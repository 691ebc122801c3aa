"""Where the config names files and folders, and how a user's relative paths become absolute.

A relative path means "relative to where the user typed the command". Ray runs a Tune trial in its
own folder and an actor wherever its worker started, so every path is made absolute once, at the
command line (:func:`absolute_paths`), before the config reaches Ray. URIs (``s3://…``) and ``~``
paths pass through untouched (``~`` is expanded on the node that opens the file).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config.tree import Config

LOCAL_PATH_KEYS = (
    "run.output_dir",
    "data.ed_path",
    "data.epitome_path",
    "data.cache_dir",
    "serve.api_key_file",
)
"""Config keys that always name a local file or folder (or are empty)."""

MODEL_SOURCE_KEYS = ("model.name_or_path", "model.tokenizer_path", "identifiers.encoder")
"""Config keys that name a hub model or a local folder: made absolute only when a folder of that
relative name exists here, so ``t5-base`` stays a hub name."""


def absolute(text: str, cwd: str | Path | None = None) -> str:
    """``text`` made absolute against ``cwd`` (default: the working directory); URIs, ``~`` paths and
    the empty string unchanged."""
    if not text or "://" in text or text.startswith("~") or os.path.isabs(text):
        return text
    return os.path.normpath(os.path.join(cwd if cwd is not None else os.getcwd(), text))


def absolute_paths(cfg: Config, cwd: str | Path | None = None) -> Config:
    """``cfg`` with every relative path of :data:`LOCAL_PATH_KEYS` (and every relative
    :data:`MODEL_SOURCE_KEYS` folder that exists under ``cwd``) made absolute against ``cwd``."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    flat = cfg.to_dict()
    changes: dict[str, str] = {}
    for key in (*LOCAL_PATH_KEYS, *MODEL_SOURCE_KEYS):
        section, name = key.split(".")
        value = flat[section][name]
        if not isinstance(value, str) or absolute(value, base) == value:
            continue
        if key in MODEL_SOURCE_KEYS and not (base / value).exists():
            continue
        changes[key] = absolute(value, base)
    return cfg.with_overrides(changes) if changes else cfg
