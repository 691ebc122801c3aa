"""Moving artifacts between a node's mirror folder and the object store.

A folder artifact is complete when its marker (:data:`MARKER`, a manifest of its files and a token
naming the version) exists; :func:`publish` writes it last and removes it first, so a reader never
trusts a half-uploaded folder. A file artifact is one object (a single PUT is atomic). :func:`fetch`
brings this node's copy up to the published version once per node: concurrent readers on the node
wait on one lock and the first one downloads. For a plain local path every function here acts on the
local file system alone (and :func:`publish`/:func:`fetch` do nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.storage.location import mirror_root, uri_of
from pipeline.storage.remote import filesystem

logger = logging.getLogger(__name__)

MARKER = ".emprl-complete.json"
"""A folder artifact's completion marker: ``{"token": ..., "files": {relative path: bytes}}``."""
LOCAL = pafs.LocalFileSystem()
CHUNK = 64 << 20
"""Bytes per read when copying: pyarrow reads an S3 object with one ranged GET per chunk, and its
default (1 MiB) makes a large checkpoint file hundreds of requests."""


def _copy(source: str, target: str, source_fs: pafs.FileSystem, target_fs: pafs.FileSystem) -> None:
    pafs.copy_files(source, target, source_fs, target_fs, chunk_size=CHUNK)


def _remote(path: Path) -> tuple[pafs.FileSystem, str] | None:
    uri = uri_of(path)
    return filesystem(uri) if uri else None


def _files(fs: pafs.FileSystem, root: str) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``root`` (empty when it is missing)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return {}
    return {
        info.path[len(root) + 1 :]: int(info.size or 0) for info in infos if info.type == pafs.FileType.File
    }


def _read(fs: pafs.FileSystem, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read()).decode()
    except (FileNotFoundError, OSError) as exc:
        if isinstance(exc, FileNotFoundError) or "NOT_FOUND" in str(exc).upper() or "NoSuchKey" in str(exc):
            return None
        raise


def _write(fs: pafs.FileSystem, path: str, text: str) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def _marker(fs: pafs.FileSystem, root: str) -> dict[str, object] | None:
    text = _read(fs, f"{root}/{MARKER}")
    return json.loads(text) if text else None


# --- writers -----------------------------------------------------------------------------------


def upload(path: Path) -> int:
    """Copy the file or every file of the folder ``path`` to its URI (no marker: a rank's share of a
    checkpoint); returns the bytes sent, 0 for a plain local path."""
    remote = _remote(path)
    if remote is None:
        return 0
    fs, target = remote
    if path.is_dir():
        files = {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}
        files.pop(MARKER, None)
        for name in files:
            _copy(str(path / name), f"{target}/{name}", LOCAL, fs)
        return sum(files.values())
    _copy(str(path), target, LOCAL, fs)
    return path.stat().st_size


def mark_complete(path: Path) -> str | None:
    """Write the marker of folder ``path`` on its URI from what is uploaded there now (the last step of
    a publish, e.g. by the PPO controller once every rank has uploaded its shards); returns the marker's
    text (``None`` for a plain local path). Only the store gets it: a local copy on one node of a folder
    several nodes wrote is not the whole folder, so a reader there fetches it."""
    remote = _remote(path)
    if remote is None:
        return None
    fs, target = remote
    manifest = {
        "token": uuid.uuid4().hex,
        "files": {k: v for k, v in _files(fs, target).items() if k != MARKER},
    }
    text = json.dumps(manifest, sort_keys=True)
    _write(fs, f"{target}/{MARKER}", text)
    return text


def publish(path: Path) -> None:
    """Upload what this process wrote at mirror path ``path`` (a file, or a folder with its marker
    written last); remote files of an earlier version that the folder no longer has are deleted."""
    remote = _remote(path)
    if remote is None:
        return
    fs, target = remote
    started = time.perf_counter()
    if path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{target}/{MARKER}")
        (path / MARKER).unlink(missing_ok=True)
        sent = upload(path)
        local = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
        for stale in set(_files(fs, target)) - local:
            fs.delete_file(f"{target}/{stale}")
        # this node's copy is the whole folder: it is current, no fetch needed here
        (path / MARKER).write_text(mark_complete(path) or "")
    else:
        sent = upload(path)
    logger.info("published %s (%.1f MB in %.2f s)", uri_of(path), sent / 1e6, time.perf_counter() - started)


def write_text(path: Path, text: str) -> None:
    """Write a small file (a pointer, a state file) locally and, for a mirror path, as one object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    remote = _remote(path)
    if remote is not None:
        _write(*remote, text)


def remove(path: Path) -> None:
    """Delete a file or folder artifact here and (marker first) on its URI."""
    remote = _remote(path)
    if remote is not None:
        fs, target = remote
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{target}/{MARKER}")
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            fs.delete_file(target)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- readers -----------------------------------------------------------------------------------


def read_text(path: Path) -> str | None:
    """A small file's text, from its URI for a mirror path (always current); ``None`` when missing."""
    remote = _remote(path)
    if remote is None:
        return path.read_text() if path.is_file() else None
    return _read(*remote)


def exists(path: Path) -> bool:
    """Whether the artifact is there: a file, or a folder with its marker (any folder, locally)."""
    remote = _remote(path)
    if remote is None:
        return path.exists()
    fs, target = remote
    info = fs.get_file_info(target)
    if info.type == pafs.FileType.File:
        return True
    return info.type == pafs.FileType.Directory and _marker(fs, target) is not None


def list_names(path: Path) -> list[str]:
    """Names of the entries directly inside folder ``path`` (on its URI for a mirror path), sorted."""
    remote = _remote(path)
    if remote is None:
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    fs, target = remote
    infos = fs.get_file_info(pafs.FileSelector(target, recursive=False, allow_not_found=True))
    return sorted(os.path.basename(info.path) for info in infos)


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` among this node's processes (the mirror is per node)."""
    locks = mirror_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(path).encode()).hexdigest()[:20]
    with open(locks / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(path: Path) -> Path:
    """Bring this node's copy of the artifact at mirror path ``path`` up to its published version and
    return ``path``. A folder is fetched only when its marker exists (one without is missing or half
    uploaded, and left alone so the reader reports it missing), and only when this node's copy has
    another token; a file is always fetched (small, one object)."""
    remote = _remote(path)
    if remote is None:
        return path
    fs, source = remote
    info = fs.get_file_info(source)
    if info.type == pafs.FileType.File:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.fetch")
        _copy(source, str(tmp), fs, LOCAL)
        tmp.replace(path)
        return path
    with _node_lock(path):
        marker = _marker(fs, source) if info.type == pafs.FileType.Directory else None
        if marker is None:
            return path
        local_marker = path / MARKER
        if local_marker.is_file() and json.loads(local_marker.read_text()).get("token") == marker["token"]:
            return path
        started = time.perf_counter()
        staging = path.with_name(f".{path.name}.{os.getpid()}.fetch")
        shutil.rmtree(staging, ignore_errors=True)
        files = dict(marker["files"])  # type: ignore[call-overload]
        for name in files:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            _copy(f"{source}/{name}", str(staging / name), fs, LOCAL)
        (staging / MARKER).write_text(json.dumps(marker, sort_keys=True))
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.exists():
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        logger.info(
            "fetched %s (%.1f MB in %.2f s)",
            uri_of(path),
            sum(files.values()) / 1e6,
            time.perf_counter() - started,
        )
    return path


def sync_down(folder: Path) -> Path:
    """Download every file under the URI of mirror folder ``folder`` that this node lacks or holds at
    another size (a folder of one-object files: part shards, logs, a sweep's tables); returns ``folder``."""
    remote = _remote(folder)
    if remote is None:
        return folder
    fs, source = remote
    with _node_lock(folder):
        for name, size in _files(fs, source).items():
            local = folder / name
            if local.is_file() and local.stat().st_size == size:
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{os.getpid()}.fetch")
            _copy(f"{source}/{name}", str(tmp), fs, LOCAL)
            tmp.replace(local)
    return folder
