"""A real S3 protocol server on loopback (moto in server mode) for the object-storage tests.

``s3_server()`` starts one per test session; ``s3_env(server, monkeypatch, tmp_path)`` points this
process (and the Ray workers it starts, which inherit the environment) at it with fake keys, a fresh
bucket and a scratch root of its own, and returns the bucket's URI.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pytest


class S3Server:
    """moto's ThreadedMotoServer on 127.0.0.1 and an S3 client of it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """The variables that point pyarrow (and Ray's storage) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def create_bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"emprl-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_keys()).create_bucket(Bucket=name)
        return name

    def listing(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """``{key: size}`` of every object under ``prefix``."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_keys())
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return found

    def stop(self) -> None:
        self._server.stop()


class StallingProxy:
    """A TCP relay to the S3 server that, once, stops forwarding the first request naming ``stall``
    (a learner rank's upload then hangs mid-checkpoint) and sets :attr:`stalled`."""

    def __init__(self, endpoint: str, stall: bytes) -> None:
        host, port = endpoint.removeprefix("http://").split(":")
        self.target, self.stall, self.stalled = (host, int(port)), stall, threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if requests and self.stall in data and not self.stalled.is_set():
                    self.stalled.set()
                    threading.Event().wait()  # this connection never answers again
                sink.sendall(data)
        except OSError:  # the other direction closed both sockets
            pass
        finally:
            source.close()
            sink.close()


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def s3_env(server: S3Server, monkeypatch: pytest.MonkeyPatch, scratch: Path) -> str:
    """Point this process at ``server`` with a new bucket and scratch root ``scratch``; the bucket's URI."""
    from pipeline.storage import remote

    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EMPRL_SCRATCH", str(scratch))
    remote._filesystem.cache_clear()
    return f"s3://{server.create_bucket()}"


def s3_variables(server: S3Server, scratch: Path | None = None) -> dict[str, str]:
    """The same settings as a dict (for a subprocess or a simulated node's environment)."""
    env = dict(server.env())
    if scratch is not None:
        env["EMPRL_SCRATCH"] = str(scratch)
    return env


def fresh_node(monkeypatch: pytest.MonkeyPatch, scratch: Path) -> None:
    """Act as another node: this node's mirror is dropped (its disk gone with it) and ``scratch`` becomes
    the scratch root, so whatever is read next must come from the bucket."""
    from pipeline import storage

    shutil.rmtree(storage.mirror_root())
    monkeypatch.setenv("EMPRL_SCRATCH", str(scratch))
