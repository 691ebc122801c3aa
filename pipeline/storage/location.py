"""Storage locations: a URI's node-local mirror folder, and the URI back from a mirror path.

``s3://bucket/prefix`` maps to ``<scratch>/mirror/s3/bucket/prefix``; ``<scratch>`` is
``$EMPRL_SCRATCH`` (default ``/tmp/emprl``) and must name the same path on every node, each on its
own disk. The mapping is pure string work, so any process on any node turns a mirror path back into
its URI without a registry.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.storage.errors import StorageError

SCHEMES = ("s3", "gs")
"""Object stores a location may name (``gs`` goes through the same code as ``s3``)."""
SCRATCH_ENV = "EMPRL_SCRATCH"
"""Environment variable naming each node's scratch root."""
DEFAULT_SCRATCH = "/tmp/emprl"


def scratch_root() -> Path:
    """This node's scratch root: ``$EMPRL_SCRATCH`` or ``/tmp/emprl``."""
    return Path(os.environ.get(SCRATCH_ENV) or DEFAULT_SCRATCH)


def mirror_root() -> Path:
    """The folder under which every URI has its node-local mirror."""
    return scratch_root() / "mirror"


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is written as a URI (``scheme://...``)."""
    return "://" in str(location)


def split_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` of an object-store URI, its key without slashes at either end.

    Raises:
        StorageError: an unknown scheme, or no bucket name.
    """
    scheme, _, rest = uri.partition("://")
    if scheme not in SCHEMES:
        raise StorageError(
            uri,
            f"unknown scheme {scheme + '://'!r}",
            "give a local or mounted folder (an NFS/EFS/Filestore mount is a plain path), "
            "s3://bucket/prefix or gs://bucket/prefix",
        )
    bucket, _, key = rest.strip("/").partition("/")
    if not bucket or any(part in (".", "..") for part in key.split("/")):
        raise StorageError(uri, "no bucket name, or a '.'/'..' in the prefix", "write s3://bucket/prefix")
    return scheme, bucket, key.strip("/")


def normalise(location: str) -> str:
    """A URI in one spelling (``file://`` becomes its path); a path unchanged."""
    if location.startswith("file://"):
        return location[len("file://") :]
    if not is_uri(location):
        return location
    scheme, bucket, key = split_uri(location)
    return f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"


def local_path(location: str | Path) -> Path:
    """The local folder of ``location``: its node-local mirror for a URI, the path itself otherwise."""
    text = normalise(str(location))
    if not is_uri(text):
        return Path(text)
    scheme, bucket, key = split_uri(text)
    return mirror_root().joinpath(scheme, bucket, *[p for p in key.split("/") if p])


def uri_of(path: str | Path) -> str | None:
    """The URI whose mirror ``path`` is (or is inside), ``None`` for a plain local path."""
    try:
        parts = Path(os.path.abspath(path)).relative_to(os.path.abspath(mirror_root())).parts
    except ValueError:
        return None
    if len(parts) < 2 or parts[0] not in SCHEMES:
        return None
    return f"{parts[0]}://{'/'.join(parts[1:])}"


def portable(path: str | Path) -> str:
    """How to name ``path`` to a process on any node (in any working directory): the URI of a mirror
    path (that process maps it to its own node's mirror), else the absolute path."""
    return uri_of(path) or str(Path(path).resolve())


def display(path: str | Path) -> str:
    """How to show ``path`` to a user: its URI when it mirrors one."""
    return uri_of(path) or str(path)
