"""Fail before any work: probe a storage location with a small marker write, within seconds.

Names the URI and the fix for an unknown scheme, a missing bucket, missing credentials, no write
permission and an endpoint that does not answer (short timeouts, one attempt, and an overall
deadline, so a probe never hangs).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import uuid
from pathlib import Path

from pipeline.storage.errors import StorageError
from pipeline.storage.location import is_uri, normalise, split_uri
from pipeline.storage.remote import filesystem

PROBE_DEADLINE_S = 20.0


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def _s3_credentials_missing() -> bool:
    """True only when no credential source can exist: no keys or profile in the environment or
    ``~/.aws``, no web-identity or container credentials, and the instance metadata service turned
    off (``AWS_EC2_METADATA_DISABLED=true``); with it on, an instance role may still answer."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return False
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return False
    files = [
        env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        env.get("AWS_CONFIG_FILE", "~/.aws/config"),
    ]
    if any(Path(f).expanduser().is_file() for f in files):
        return False
    return env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"


def _detail(text: str) -> str:
    """The telling part of a pyarrow/AWS SDK error: curl's reason when there is one."""
    curl = re.search(r"curlCode: \d+, ([^;]+)", text)
    return curl.group(1).strip() if curl else text.splitlines()[0][:200]


def _classify(uri: str, bucket: str, exc: BaseException) -> StorageError:
    text = str(exc)
    upper = text.upper()
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
        return StorageError(
            uri,
            f"bucket {bucket!r} does not exist at {_endpoint()}",
            f"create it (aws s3 mb s3://{bucket}) or correct the URI",
        )
    if any(s in upper for s in ("NETWORK_CONNECTION", "CURLCODE", "TIMEOUT", "TIMED OUT", "UNREACHABLE")):
        return StorageError(
            uri,
            f"the endpoint {_endpoint()} does not answer ({_detail(text)})",
            "check AWS_ENDPOINT_URL and that the object store is reachable from every node",
        )
    if "ACCESS_DENIED" in upper or "ACCESSDENIED" in upper or "RESPONSE CODE: 403" in upper:
        return StorageError(
            uri,
            f"no permission to write there ({_detail(text)})",
            "grant the nodes' role s3:PutObject, s3:GetObject, s3:ListBucket and s3:DeleteObject on the bucket",
        )
    return StorageError(
        uri, f"a probe write failed: {text.splitlines()[0][:300]}", "check the URI, credentials and endpoint"
    )


def _probe_remote(uri: str) -> None:
    scheme, bucket, _ = split_uri(uri)
    if scheme == "s3" and _s3_credentials_missing():
        raise StorageError(
            uri,
            "no AWS credentials found (AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws, web identity, container "
            "role; the instance role is off with AWS_EC2_METADATA_DISABLED=true)",
            "give the nodes an instance role (cluster.yaml: IamInstanceProfile) or set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the job's environment",
        )
    try:
        fs, root = filesystem(uri, quick=True)  # may ask S3 for the bucket's region
        probe = f"{root}/.emprl-probe-{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as stream:
            stream.write(b"probe\n")
        fs.delete_file(probe)
    except Exception as exc:
        raise _classify(uri, bucket, exc) from exc


def check_location(location: str | Path, *, deadline_s: float = PROBE_DEADLINE_S) -> str:
    """``location`` in one spelling once a probe write there worked; a local folder is created.

    Raises:
        StorageError: the location cannot be written, naming the URI and the fix.
    """
    text = normalise(str(location))
    if not is_uri(text):
        try:
            Path(text).mkdir(parents=True, exist_ok=True)
            probe = Path(text) / f".emprl-probe-{uuid.uuid4().hex}"
            probe.write_text("probe\n")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                text,
                f"cannot write there ({exc.strerror or exc})",
                "pick a folder you can write, or mount one",
            ) from exc
        return text
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(_probe_remote, text).result(timeout=deadline_s)
    except concurrent.futures.TimeoutError:
        raise StorageError(
            text,
            f"the endpoint {_endpoint()} did not answer within {deadline_s:.0f} s",
            "check AWS_ENDPOINT_URL and that the object store is reachable from every node",
        ) from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return text
