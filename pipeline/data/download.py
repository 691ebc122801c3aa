"""``emprl data download``: fetch EmpatheticDialogues and EPITOME from their official locations.

Each file goes to a temporary name, is checked against its published sha256, then renamed
into place; files already present with a right checksum are not fetched again. URLs and
checksums are arguments, so a mirror works the same way.

A destination may be the mirror folder of an object-store URI (``emprl data download --dest
s3://bucket/data``): files are downloaded and checked here, then each dataset file (the extracted ED
CSVs and the EPITOME CSVs, not the tarball) is published as one object, so every node reads them with
``data.ed_path=s3://bucket/data/empatheticdialogues`` (see :func:`pipeline.data.prepare_datasets`).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import BinaryIO

from pipeline import storage
from pipeline.config import MECHANISMS
from pipeline.data.epitome import EPITOME_FILES
from pipeline.data.errors import DownloadError
from pipeline.progress import Progress

logger = logging.getLogger(__name__)

ED_URL = "https://dl.fbaipublicfiles.com/parlai/empatheticdialogues/empatheticdialogues.tar.gz"
ED_SHA256: tuple[str, ...] = (
    "56f234d77b7dd1f005fd365bb17769cfe346c3c84295b69bc069c8ccb83be03d",
    "240c492cb6199a315722f716bfcc14f13ea6605f1cec67349153b606be92f6f2",
)
"""Both versions of the tarball published in ParlAI's ``empathetic_dialogues/build.py``."""
EPITOME_BASE_URL = "https://raw.githubusercontent.com/behavioral-data/Empathy-Mental-Health/master/dataset/"
EPITOME_SHA256: dict[str, str] = {
    "emotional-reactions-reddit.csv": "225b28ffdc257f8a997d557eb937e78b68235e6203c87c7e2203d00fef8545cc",
    "interpretations-reddit.csv": "2cedbe4252c919d22a6f46685afa16d3192a91e3306c2d4a386be12a30ad3f29",
    "explorations-reddit.csv": "9efa1af8e0537c16894379598f2076cb380ae18aacd9a8d26ebd381f5b7f9645",
}
"""The files of commit 741a8df (2020-11-02), unchanged since."""
TIMEOUT_S = 15.0
"""Seconds to wait for a connection or for the next bytes before giving up."""

_CHUNK = 1 << 20
_MANUAL = (
    "download the files by hand (ED: {ed}, extract train/valid/test.csv; EPITOME: {epitome}<name>.csv), "
    "put them in two folders and pass data.source=local data.ed_path=DIR data.epitome_path=DIR"
)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _accepted(sha256: str | Collection[str] | None) -> frozenset[str] | None:
    if sha256 is None:
        return None
    return frozenset({sha256} if isinstance(sha256, str) else sha256)


def fetch(url: str, dest: Path, *, sha256: str | Collection[str] | None, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` unless it is already there with an accepted checksum.

    ``sha256`` is one accepted hex digest or several; ``None`` skips the check (with a
    warning). The body goes to a temporary file next to ``dest`` and is renamed into
    place only after the checksum passes; on any failure it is removed. Raises
    :class:`DownloadError` on network errors, timeouts and checksum mismatches.
    """
    accepted = _accepted(sha256)
    if dest.is_file() and accepted is not None and sha256_file(dest) in accepted:
        logger.info("%s already present with the right sha256; not downloading", dest)
        return dest
    if accepted is None:
        logger.warning("no sha256 given for %s: the download will not be verified", url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, timeout)
        if accepted is not None and digest not in accepted:
            raise DownloadError(
                f"checksum mismatch for {dest.name} from {url}: expected sha256 "
                f"{' or '.join(sorted(accepted))}, got {digest}. The partial file was removed. "
                "Fix: retry (the transfer may have been cut), or, for a mirror, pass its checksum"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("downloaded %s -> %s (sha256 %s)", url, dest, digest)
    return dest


def _stream(url: str, out: BinaryIO, timeout: float) -> str:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) // 1024 if length and length.isdigit() else None
            received = 0
            with Progress(f"download {url.rsplit('/', 1)[-1]}", total, unit="KiB", log=logger) as progress:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    progress.update((received + len(chunk)) // 1024 - received // 1024)
                    received += len(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{url}: HTTP {exc.code} {exc.reason}. Fix: check the URL, or " + _manual()
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else repr(exc)
        raise DownloadError(f"cannot download {url} ({reason}); no network? Fix: " + _manual()) from exc
    return digest.hexdigest()


def _manual() -> str:
    return _MANUAL.format(ed=ED_URL, epitome=EPITOME_BASE_URL)


def download_ed(
    dest: Path,
    *,
    url: str = ED_URL,
    sha256: str | Collection[str] | None = ED_SHA256,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch the ED tarball into ``dest`` and extract ``dest/empatheticdialogues/{train,valid,test}.csv``.

    ``train.csv`` and ``valid.csv`` must be in the tarball (member
    ``empatheticdialogues/<split>.csv``); ``test.csv`` is extracted when present.
    Returns the folder to pass as ``data.ed_path``.
    """
    tarball = fetch(url, dest / "empatheticdialogues.tar.gz", sha256=sha256, timeout=timeout)
    folder = dest / "empatheticdialogues"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            names = set(tar.getnames())
            for split in ("train", "valid", "test"):
                member = f"empatheticdialogues/{split}.csv"
                if member not in names:
                    if split == "test":
                        logger.warning("%s has no %s; the test split is not available", tarball, member)
                        continue
                    raise DownloadError(
                        f"{tarball} has no member {member}. Fix: use the official tarball ({ED_URL})"
                    )
                _extract(tar, member, folder / f"{split}.csv")
                storage.publish(folder / f"{split}.csv")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(
            f"{tarball} is not a readable .tar.gz ({exc}). Fix: delete it and download again"
        ) from exc
    logger.info("EmpatheticDialogues ready in %s", storage.display(folder))
    return folder


def _extract(tar: tarfile.TarFile, member: str, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise DownloadError(f"{tar.name!r}: {member} is not a regular file")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, source:
            shutil.copyfileobj(source, out, _CHUNK)
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def download_epitome(
    dest: Path,
    *,
    base_url: str = EPITOME_BASE_URL,
    sha256: Mapping[str, str | Collection[str] | None] = EPITOME_SHA256,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch the three EPITOME Reddit CSVs (``<base_url><name>``) into ``dest/epitome``.

    ``sha256`` maps each file name to its accepted checksum(s). Returns the folder to
    pass as ``data.epitome_path``.
    """
    folder = dest / "epitome"
    for mech in MECHANISMS:
        name = EPITOME_FILES[mech]
        fetch(base_url.rstrip("/") + "/" + name, folder / name, sha256=sha256.get(name), timeout=timeout)
        storage.publish(folder / name)
    logger.info("EPITOME ready in %s", storage.display(folder))
    return folder


def download_all(
    dest: Path,
    *,
    ed_url: str = ED_URL,
    ed_sha256: str | Collection[str] | None = ED_SHA256,
    epitome_base_url: str = EPITOME_BASE_URL,
    epitome_sha256: Mapping[str, str | Collection[str] | None] = EPITOME_SHA256,
    timeout: float = TIMEOUT_S,
) -> dict[str, Path]:
    """Both datasets into ``dest``; returns ``{"ed_path": ..., "epitome_path": ...}``."""
    ed = download_ed(dest, url=ed_url, sha256=ed_sha256, timeout=timeout)
    epitome = download_epitome(dest, base_url=epitome_base_url, sha256=epitome_sha256, timeout=timeout)
    logger.info(
        "use: data.source=local data.ed_path=%s data.epitome_path=%s",
        storage.display(ed),
        storage.display(epitome),
    )
    return {"ed_path": ed, "epitome_path": epitome}
