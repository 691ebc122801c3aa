"""Atomic, pruned checkpoint folders for the PPO controller.

A checkpoint is written into ``iter_NNNNNN.partial/``, marked complete, renamed to ``iter_NNNNNN/``
and only then named in ``latest`` (itself replaced atomically). A crash at any point leaves the
previous complete checkpoint as ``latest``; partial folders are ignored and cleaned up.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"


class CheckpointStore:
    """Checkpoint folders under ``root``; keeps the newest ``keep`` complete ones."""

    def __init__(self, root: Path, *, keep: int) -> None:
        self.root, self.keep = root, keep

    def folder(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:06d}"

    def complete(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("iter_*") if p.is_dir() and (p / COMPLETE).is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The folder ``latest`` names when it is complete, else the newest complete one, else None."""
        pointer = self.root / LATEST
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if (named / COMPLETE).is_file():
                return named
        done = self.complete()
        return done[-1] if done else None

    @contextmanager
    def writing(self, iteration: int) -> Iterator[Path]:
        """Yield an empty staging folder; on normal exit it becomes checkpoint ``iteration`` and ``latest``."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.folder(iteration)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        yield partial
        (partial / COMPLETE).write_text(f"{iteration}\n")
        if final.exists():  # re-saving an iteration after a recovery: swap, never delete first
            stale = final.with_name(final.name + ".stale")
            shutil.rmtree(stale, ignore_errors=True)
            final.rename(stale)
            partial.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            partial.rename(final)
        tmp = self.root / (LATEST + ".tmp")
        tmp.write_text(final.name + "\n")
        tmp.replace(self.root / LATEST)
        self._prune()

    def _prune(self) -> None:
        done = self.complete()
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        for partial in self.root.glob("iter_*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
