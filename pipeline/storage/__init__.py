"""Where a run's artifacts live: a local (or mounted) folder, or an object-store URI (``s3://``, ``gs://``).

Every stage keeps working with local paths. A URI maps to a node-local *mirror* folder
(:func:`local_path`), the same path on every node, on each node's own disk. The process that writes
an artifact there uploads it (:func:`publish`, completion marker last); a process on any node that
reads it first brings its node's copy up to date (:func:`fetch`, once per node and version). For a
plain local path both are no-ops, so a laptop run touches nothing but its folder.

May import: the standard library and ``pyarrow`` only (no torch, no Ray).
"""

from pipeline.storage.errors import StorageError
from pipeline.storage.location import (
    display,
    is_uri,
    local_path,
    mirror_root,
    normalise,
    portable,
    scratch_root,
    uri_of,
)
from pipeline.storage.probe import check_location
from pipeline.storage.remote import ray_storage
from pipeline.storage.transfer import (
    MARKER,
    exists,
    fetch,
    list_names,
    mark_complete,
    publish,
    read_text,
    remove,
    sync_down,
    upload,
    write_text,
)

__all__ = [
    "MARKER",
    "StorageError",
    "check_location",
    "display",
    "exists",
    "fetch",
    "is_uri",
    "list_names",
    "local_path",
    "mark_complete",
    "mirror_root",
    "normalise",
    "portable",
    "publish",
    "ray_storage",
    "read_text",
    "remove",
    "scratch_root",
    "sync_down",
    "upload",
    "uri_of",
    "write_text",
]
