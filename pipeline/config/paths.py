"""Where the config names files and folders, and how a user's relative paths become absolute.

A relative path means "relative to where the user typed the command". Ray runs a Tune trial in its
own folder and an actor wherever its worker started, so every path is made absolute once, at the
command line (:func:`absolute_paths`), before the config reaches Ray. ``~`` paths pass through
untouched (``~`` is expanded on the node that opens the file), and so do object-store URIs
(``s3://…``, ``gs://…``) where a key may name one (:data:`URI_KEYS`); a URI elsewhere, or of an
unknown scheme, is a config error.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import storage
from pipeline.config.schema import ConfigError
from pipeline.config.tree import Config

LOCAL_PATH_KEYS = (
    "run.output_dir",
    "data.ed_path",
    "data.epitome_path",
    "data.cache_dir",
    "serve.api_key_file",
)
"""Config keys that name a file or folder (or are empty)."""
URI_KEYS = ("run.output_dir", "data.ed_path", "data.epitome_path")
"""Of those, the keys that may name an object-store location; ``data.cache_dir`` (a node's own
cache) and ``serve.api_key_file`` (a secret) stay local."""

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
        if isinstance(value, str) and storage.is_uri(value):
            _check_uri(key, value)
            continue
        if not isinstance(value, str) or absolute(value, base) == value:
            continue
        if key in MODEL_SOURCE_KEYS and not (base / value).exists():
            continue
        changes[key] = absolute(value, base)
    return cfg.with_overrides(changes) if changes else cfg


def _check_uri(key: str, value: str) -> None:
    """A URI is allowed at ``key`` and names a known scheme and a bucket, else a :class:`ConfigError`."""
    if key in MODEL_SOURCE_KEYS:
        raise ConfigError(
            f"{key}={value!r}: a model source is a hub name or a local folder. Fix: download it into a "
            "folder every node has (or give the run's own policy folder with --policy)."
        )
    if key not in URI_KEYS:
        raise ConfigError(
            f"{key}={value!r}: must be a local path (a node's own file). Fix: give a local path."
        )
    try:
        storage.normalise(value)
    except storage.StorageError as exc:
        raise ConfigError(f"{key}: {exc}") from None
