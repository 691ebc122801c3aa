"""The ``pyarrow.fs`` filesystem of a URI, built once per process and bucket.

``pyarrow.fs`` is what Ray Train and Tune move checkpoints with (``storage_filesystem``), already a
dependency, and reads S3 settings from the standard places (``AWS_*`` variables, ``AWS_ENDPOINT_URL``,
profiles, instance roles; ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS), so none of them is ever
written into a config. Requests have bounded connect/request timeouts so an endpoint that does not
answer fails instead of hanging.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.storage.location import split_uri, uri_of

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0


def s3_region(bucket: str) -> str:
    """The bucket's region: ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``us-east-1`` behind a custom
    endpoint, else asked of S3."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return "us-east-1"
    return str(pafs.resolve_s3_region(bucket))


@functools.lru_cache(maxsize=32)
def _filesystem(
    scheme: str, bucket: str, connect_s: float, request_s: float, attempts: int
) -> pafs.FileSystem:
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        url = urllib.parse.urlsplit(endpoint) if endpoint else None
        return pafs.S3FileSystem(
            region=s3_region(bucket),
            endpoint_override=url.netloc if url else None,
            scheme=url.scheme if url else None,
            connect_timeout=connect_s,
            request_timeout=request_s,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        )
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return fs


def filesystem(uri: str, *, quick: bool = False) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` of ``uri``, the path as ``bucket/key``; ``quick`` gives short timeouts
    and one attempt (for probing a location before any work)."""
    scheme, bucket, key = split_uri(uri)
    timeouts = (3.0, 5.0, 1) if quick else (CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S, 5)
    return _filesystem(scheme, bucket, *timeouts), f"{bucket}/{key}" if key else bucket


def ray_storage(folder: str | Path) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train/Tune's ``RunConfig`` of the folder
    ``folder``: the bucket path and this module's filesystem when it mirrors a URI (so every node's
    Train and Tune workers persist checkpoints to the bucket), else the local path and ``None``."""
    uri = uri_of(folder)
    if uri is None:
        return os.fspath(folder), None
    fs, path = filesystem(uri)
    return path, fs
