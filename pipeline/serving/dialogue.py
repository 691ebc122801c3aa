"""A served dialogue -> the policy's context string, exactly as the data stage built it for training.

Turns alternate speaker and listener and the last one is the speaker's (the policy answers as the
listener), so roles are assigned from the end; :func:`pipeline.data.ed.format_context` then applies
``data.history_turns``, the separator, speaker tags and the emotion prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.data.ed import Role, Turn, format_context


def normalize_text(text: str) -> str:
    """Runs of whitespace (newlines, tabs) collapsed to one space and the ends stripped, as ED text is."""
    return " ".join(text.split())


def dialogue_turns(turns: Sequence[str]) -> list[Turn]:
    """``turns`` (oldest first) as ED turns: the last is the speaker's, roles alternate backwards."""
    n = len(turns)
    out = []
    for i, text in enumerate(turns):
        role: Role = "speaker" if (n - 1 - i) % 2 == 0 else "listener"
        out.append(Turn(i + 1, role, normalize_text(text)))
    return out


def dialogue_context(turns: Sequence[str], emotion: str | None, cfg: DataConfig) -> str:
    """The context string of ``turns`` (and ``emotion`` when ``cfg.prepend_emotion``) under ``cfg``.

    Raises:
        ValueError: no turns, or ``cfg.prepend_emotion`` and no emotion (the policy was trained with
            one first).
    """
    if not turns:
        raise ValueError("a dialogue needs at least one turn (the speaker's last utterance)")
    label = normalize_text(emotion or "")
    if cfg.prepend_emotion and not label:
        raise ValueError(
            "this policy was trained with the emotion first (data.prepend_emotion=true): give 'emotion'"
        )
    return format_context(dialogue_turns(turns), label, cfg)


def model_version(folder: str | Path, parts: Sequence[str] = ()) -> str:
    """First 12 hex digits of the SHA-256 of a model folder's files (names and bytes, sorted by name;
    only those under ``parts`` when given; hidden files such as a storage marker left out): the same
    weights give the same version wherever they are copied."""
    digest = hashlib.sha256()
    root = Path(folder)
    files = (p for part in parts for p in (root / part).rglob("*")) if parts else root.rglob("*")
    for path in sorted(p for p in files if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]
