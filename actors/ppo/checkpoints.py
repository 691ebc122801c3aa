"""Atomic, pruned checkpoint folders for the PPO controller, in a local folder or an object store.

Local folder: a checkpoint is written into ``iter_NNNNNN.partial/``, marked complete, renamed to
``iter_NNNNNN/`` and only then named in ``latest`` (itself replaced atomically).

Object store (``root`` mirrors a URI, :func:`pipeline.storage.uri_of`): there is no rename, so a
checkpoint is complete when its completion marker exists. ``iter_NNNNNN/`` is written in each node's
mirror: every learner rank uploads its own files (:meth:`LearnerWorker.save
<actors.ppo.learner.LearnerWorker.save>`), the controller its ``controller.json``; once every rank
has reported done the controller writes the marker (:func:`pipeline.storage.mark_complete`), then
the ``latest`` pointer object. Readers trust only a checkpoint with its marker, and read it from the
store (:func:`pipeline.storage.fetch`), never from a node's mirror copy, which may hold only the
shards of the ranks on that node.

Either way a crash at any point, a learner rank killed mid-upload included, leaves the previous
complete checkpoint as ``latest``; incomplete folders are ignored and cleaned up.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import storage

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
"""A local checkpoint's completion file (an object-store checkpoint has the storage marker instead)."""
LATEST = "latest"
"""The pointer file (object) naming the newest complete checkpoint."""
LEARNER = "learner"
"""The learner ranks' subfolder of a checkpoint (DeepSpeed's files and each rank's RNG states)."""
CONTROLLER = "controller.json"
"""The controller's state in a checkpoint (iteration, samples, KL controller, score statistics)."""
NAME = re.compile(r"iter_\d{6,}")
"""A checkpoint folder's name."""


def has_checkpoints(root: Path) -> bool:
    """Whether ``root`` holds any checkpoint, complete or not (a new run must not write over it)."""
    if storage.uri_of(root) is None:
        return root.exists()
    return bool(storage.list_names(root))


class CheckpointStore:
    """Checkpoint folders under ``root``; keeps the newest ``keep`` complete ones."""

    def __init__(self, root: Path, *, keep: int) -> None:
        self.root, self.keep = root, keep
        self.remote = storage.uri_of(root) is not None
        """Whether ``root`` mirrors an object-store URI (checkpoints live there, marked complete)."""

    def folder(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:06d}"

    def complete(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if self.remote:
            names = [n for n in storage.list_names(self.root) if NAME.fullmatch(n)]
            return [self.root / n for n in names if storage.exists(self.root / n)]
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("iter_*") if p.is_dir() and (p / COMPLETE).is_file()]
        return sorted(found, key=lambda p: p.name)

    def _is_complete(self, folder: Path) -> bool:
        if self.remote:
            return bool(NAME.fullmatch(folder.name)) and storage.exists(folder)
        return (folder / COMPLETE).is_file()

    def latest(self) -> Path | None:
        """The folder ``latest`` names when it is complete, else the newest complete one, else None.

        For an object store both come from the store itself, so a node that never saw the run
        finds them; read the folder only after :func:`pipeline.storage.fetch`.
        """
        named = storage.read_text(self.root / LATEST)
        if named and named.strip() and self._is_complete(self.root / named.strip()):
            return self.root / named.strip()
        done = self.complete()
        return done[-1] if done else None

    @contextmanager
    def writing(self, iteration: int) -> Iterator[Path]:
        """Yield the folder to write checkpoint ``iteration`` into; on normal exit it becomes complete
        and ``latest``.

        Local: an empty staging folder, renamed when done. Object store: ``iter_NNNNNN/`` in this
        node's mirror (a cut earlier attempt at this iteration removed first, in the store too); the
        caller must have uploaded every file by the end of the block (each learner rank its own,
        :func:`pipeline.storage.write_text` for the controller's state).
        """
        if self.remote:
            final = self.folder(iteration)
            storage.remove(final)  # the marker first, then files a cut attempt left
            final.mkdir(parents=True)
            yield final
            storage.mark_complete(final)  # on the store only: this node's copy holds its own ranks' shards
            storage.write_text(self.root / LATEST, final.name + "\n")
            self._prune_remote(final)
            return
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

    def _prune_remote(self, newest: Path) -> None:
        """Delete (in the store and here) complete checkpoints beyond the newest ``keep`` and the
        incomplete ones older than ``newest`` (uploads cut by a crash)."""
        done = self.complete()
        names = {p.name for p in done}
        stale = done[: max(0, len(done) - self.keep)]
        stale += [
            self.root / n
            for n in storage.list_names(self.root)
            if NAME.fullmatch(n) and n not in names and n < newest.name
        ]
        for old in stale:
            logger.info("removing checkpoint %s", storage.display(old))
            storage.remove(old)
