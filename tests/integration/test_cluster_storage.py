"""A run that lives in a bucket, end to end, on Ray nodes that share no disk (``tests/nodes.py``): each node
has a ``/tmp`` of its own and reaches a real S3 server (moto on loopback) with its "instance role" (the
endpoint and keys in its environment).

``ray job submit ... emprl run run.output_dir=s3://...`` on a head and two workers, with the roles pinned so
that each artifact's producer and consumer sit on different nodes; then the whole cluster goes (every node's
disk with it) and a FRESH cluster continues from the bucket alone: ``emprl ppo --resume`` picks up at the
checkpoint (every iteration logged once, exact sample counts), ``emprl evaluate`` and ``emprl serve`` load
the policies, and ``emprl tune --resume`` continues a sweep interrupted by the loss of its cluster.

The job logs' ``published s3://...`` / ``fetched s3://...`` lines (pipeline.storage at INFO, ``--verbose``)
are attributed to nodes through the worker pids each node's Ray log folder lists: the test prints which
node wrote and which read each artifact, and the bucket's listing.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from nodes import ROOT, NoSharedDiskCluster
from s3 import S3Server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="nodes with a disk each need root (mount namespaces)"),
]

EMPRL = str(ROOT / ".venv" / "bin" / "emprl")
NODES = {"head": 1, "node_b": 2, "node_c": 2}
"""CPUs of each node (logical; the machine has two cores). The head holds the job's driver (data, init)."""
FIRST_ROLES = (
    "trainer=node_b,identifier scorer=node_c,learner=node_b,rollout worker=node_c,reward scorer=node_c,"
    "reference policy=node_c,evaluation worker=node_c"
)
"""First cluster: identifiers and SFT train on node_b, their readers (labelling, rollout, reward, reference,
evaluation) run on node_c, each PPO role an actor of its own; the learner (node_b) writes the checkpoints and the PPO policy that node_c's
evaluation workers read; the driver on the head writes the data cache and the initial policy that node_b's
trainers read."""
SECOND_ROLES = (
    "trainer=node_c,identifier scorer=node_b,learner=node_c,rollout worker=node_b,reward scorer=node_b,"
    "reference policy=node_b,evaluation worker=node_b"
)
"""Fresh cluster: every role on the other worker node than before (nothing could be local anyway)."""
FIRST_STEPS, TOTAL_STEPS, ROLLOUTS = 2, 4, 16
SHORT = [
    "identifiers.epochs=2", "sft.epochs=2", f"ppo.rollout_batch_size={ROLLOUTS}", "ppo.save_every=2",
]  # fmt: skip
"""Overrides of the local preset that keep the run short (every stage still runs)."""
JOB_ENV = {"RAY_DEDUP_LOGS": "0"}
"""Every job's environment: each worker's log line in the job's output (no "[repeated 2x across cluster]")."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ARTIFACT = re.compile(
    r"^(?:\((?P<actor>[^)]*?)pid=(?P<pid>\d+)[^)]*\)\s*)?.*?\b(?P<verb>published|fetched) (?P<uri>s3://\S+)"
)


@dataclass
class JobRecord:
    """One ``ray job submit``: its command, exit code, output, seconds and the worker pids of each node."""

    name: str
    command: list[str]
    rc: int
    logs: str
    seconds: float
    pids: dict[int, str] = field(default_factory=dict)

    def traffic(self) -> list[tuple[str, str, str]]:
        """``(node, verb, uri)`` of every publish/fetch the job logged (the driver's lines: the head)."""
        rows = []
        for line in self.logs.splitlines():
            match = ARTIFACT.search(ANSI.sub("", line).strip())
            if match is None:
                continue
            pid = match.group("pid")
            node = "head" if pid is None else self.pids.get(int(pid), f"pid {pid}?")
            rows.append((node, match.group("verb"), match.group("uri").rstrip(")")))
        return rows


def artifact_table(records: list[JobRecord], bucket: str) -> str:
    """Which node wrote and which read each artifact (folder-level URIs, relative to the bucket)."""
    table: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"published": set(), "fetched": set()})
    for record in records:
        for node, verb, uri in record.traffic():
            table[uri.removeprefix(f"s3://{bucket}/")][verb].add(f"{node}@{record.name}")
    lines = [f"{'artifact':60} {'written by':32} read by"]
    for uri in sorted(table):
        row = table[uri]
        lines.append(
            f"{uri:60} {','.join(sorted(row['published'])) or '-':32} {','.join(sorted(row['fetched'])) or '-'}"
        )
    return "\n".join(lines)


@dataclass
class BucketRun:
    """The bucket, the run's URI and every job record of the module."""

    server: S3Server
    bucket: str
    run_uri: str
    records: list[JobRecord] = field(default_factory=list)
    cache: Path = Path()
    off_loopback: list[tuple[str, str, str]] = field(default_factory=list)

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.server.endpoint, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        )  # fmt: skip

    def key(self, relative: str) -> str:
        return f"{self.run_uri.removeprefix(f's3://{self.bucket}/')}/{relative}"

    def read(self, relative: str) -> str:
        """The object ``<run>/<relative>`` as text."""
        body = self.client().get_object(Bucket=self.bucket, Key=self.key(relative))["Body"]
        return str(body.read().decode())

    def listing(self, relative: str = "") -> dict[str, int]:
        listed: dict[str, int] = self.server.listing(self.bucket, self.key(relative).rstrip("/"))
        return listed


def submit(
    cluster: NoSharedDiskCluster, name: str, command: list[str], folder: Path, timeout: float = 1500
) -> JobRecord:
    """``ray job submit`` of ``command`` (the checkout as working dir) on ``cluster``, recorded."""
    started = time.monotonic()
    rc, logs = cluster.submit(command, ROOT, env=JOB_ENV, timeout=timeout, log=folder / f"{name}.log")
    record = JobRecord(name, command, rc, logs, time.monotonic() - started, cluster.worker_pids())
    print(f"job {name}: exit {rc} in {record.seconds:.0f} s (logs {folder / f'{name}.log'})")
    return record


@pytest.fixture(scope="module")
def bucket_run(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BucketRun]:
    """``emprl run`` into ``s3://<bucket>/runs/r1`` on a first cluster (PPO stops at its first checkpoint,
    iteration ``FIRST_STEPS``), which is then stopped: only the bucket remains."""
    folder = tmp_path_factory.mktemp("cluster_storage")
    bucket = s3_server.create_bucket()
    run = BucketRun(s3_server, bucket, f"s3://{bucket}/runs/r1", cache=folder)
    overrides = [
        f"run.output_dir=s3://{bucket}/runs", "run.name=r1", "resources.address=auto",
        f"resources.role_nodes={FIRST_ROLES}", "resources.in_process_roles=false", f"ppo.total_steps={FIRST_STEPS}", *SHORT,
    ]  # fmt: skip
    with NoSharedDiskCluster(NODES, env=s3_server.env(), logs=folder / "first") as cluster:
        print(
            f"first cluster up in {cluster.startup_s:.1f} s; off-loopback sockets: {cluster.off_loopback()}"
        )
        record = submit(cluster, "run", [EMPRL, "run", "--verbose", *overrides], folder)
        run.records.append(record)
        run.off_loopback = cluster.off_loopback()  # after the job: its idle workers are still connected
        print(
            f"sockets after the run: {len(cluster.connections()['established'])} connected, off loopback: {run.off_loopback}"
        )
    yield run
    print("\nbucket listing:")
    for key, size in sorted(s3_server.listing(bucket).items()):
        print(f"  {size:>10}  {key}")
    print("\n" + artifact_table(run.records, bucket))


@pytest.fixture(scope="module")
def fresh(bucket_run: BucketRun) -> Iterator[NoSharedDiskCluster]:
    """A new cluster (new disks) after the first one is gone."""
    with NoSharedDiskCluster(NODES, env=bucket_run.server.env(), logs=bucket_run.cache / "fresh") as cluster:
        yield cluster


def test_emprl_run_writes_every_stage_into_the_bucket(bucket_run: BucketRun) -> None:
    record = bucket_run.records[0]
    assert record.rc == 0, record.logs[-6000:]
    assert bucket_run.off_loopback == [], "every socket of every node stays on 127.0.0.1"
    listing = bucket_run.listing()
    summary = json.loads(bucket_run.read("summary.json"))
    assert {"data", "identifiers", "label", "init", "sft", "ppo", "evaluate"} <= set(summary)
    for folder in (
        "identifiers/ER", "identifiers/IP", "identifiers/EX", "init/policy", "sft/policy", "ppo/policy",
    ):  # fmt: skip
        assert bucket_run.key(f"{folder}/.emprl-complete.json") in listing, folder
    assert bucket_run.key("labeled/train.parquet") in listing
    assert bucket_run.key("evaluate/metrics.json") in listing
    assert bucket_run.key("config.yaml") in listing
    ppo = json.loads(bucket_run.read("ppo/metrics.json"))
    assert ppo["iterations"] == FIRST_STEPS and ppo["samples"] == FIRST_STEPS * ROLLOUTS
    # producers and consumers were on different nodes: something was fetched on a node other than its writer's
    traffic = record.traffic()
    assert any(verb == "published" for _, verb, _ in traffic), "no 'published s3://' line in the job's logs"
    writers = {uri: node for node, verb, uri in traffic if verb == "published"}
    crossed = [
        (uri, node) for node, verb, uri in traffic if verb == "fetched" and writers.get(uri, node) != node
    ]
    assert crossed, "no artifact was read on another node than the one that wrote it"


def test_fresh_cluster_resumes_ppo_from_the_bucket(bucket_run: BucketRun, fresh: NoSharedDiskCluster) -> None:
    command = [
        EMPRL, "ppo", "--verbose", "--run-dir", bucket_run.run_uri, "--resume", "resources.address=auto",
        f"resources.role_nodes={SECOND_ROLES}", "resources.in_process_roles=false", f"ppo.total_steps={TOTAL_STEPS}", *SHORT,
    ]  # fmt: skip
    record = submit(fresh, "ppo-resume", command, bucket_run.cache)
    bucket_run.records.append(record)
    assert record.rc == 0, record.logs[-6000:]
    ppo = json.loads(bucket_run.read("ppo/metrics.json"))
    assert ppo["iterations"] == TOTAL_STEPS and ppo["version"] == TOTAL_STEPS
    assert ppo["samples"] == TOTAL_STEPS * ROLLOUTS
    rows = [json.loads(line) for line in bucket_run.read("ppo/metrics.jsonl").splitlines() if line.strip()]
    iterations = [row["iteration"] for row in rows]
    assert iterations == list(range(1, TOTAL_STEPS + 1)), iterations


def test_fresh_cluster_evaluates_from_the_bucket(bucket_run: BucketRun, fresh: NoSharedDiskCluster) -> None:
    out = f"{bucket_run.run_uri}/evaluate_fresh"
    command = [
        EMPRL, "evaluate", "--verbose", "--run-dir", bucket_run.run_uri, "--out", out, "--max-examples", "16",
        "--bootstrap-resamples", "50", "resources.address=auto", f"resources.role_nodes={SECOND_ROLES}", "resources.in_process_roles=false",
    ]  # fmt: skip
    record = submit(fresh, "evaluate", command, bucket_run.cache)
    bucket_run.records.append(record)
    assert record.rc == 0, record.logs[-6000:]
    metrics = json.loads(bucket_run.read("evaluate_fresh/metrics.json"))
    assert metrics["policy_order"] == ["sft", "ppo"] and metrics["n_examples"] == 16
    assert bucket_run.key("evaluate_fresh/report.html") in bucket_run.listing("evaluate_fresh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fresh_cluster_serves_from_the_bucket(bucket_run: BucketRun, fresh: NoSharedDiskCluster) -> None:
    port = _free_port()
    command = [
        EMPRL, "serve", "--run-dir", bucket_run.run_uri, "resources.address=auto", f"serve.port={port}",
        "serve.policy_cpus=0.5", "serve.identifier_cpus=0.5",
    ]  # fmt: skip
    job = fresh.start_job(command, ROOT, env=JOB_ENV)
    body: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 300
        request = json.dumps({"turns": ["I lost my job today."], "sampling": {"seed": 1}}).encode()
        while not body:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/respond", data=request,
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                with urllib.request.urlopen(req, timeout=30) as answer:
                    body = json.loads(answer.read())
            except OSError:
                status = fresh.job_status(job)
                assert status in ("PENDING", "RUNNING"), f"serve job {status}:\n{fresh.job_logs(job)[-6000:]}"
                assert time.monotonic() < deadline, f"no answer within 300 s:\n{fresh.job_logs(job)[-6000:]}"
                time.sleep(3)
    finally:
        logs = fresh.job_logs(job)
        fresh.stop_job(job)
        bucket_run.records.append(JobRecord("serve", command, 0, logs, 0.0, fresh.worker_pids()))
    assert isinstance(body["response"], str) and body["response"].strip(), body
    assert {"er", "ip", "ex"} <= set(body["levels"]), body


def test_a_sweep_in_the_bucket_resumes_on_a_fresh_cluster(
    bucket_run: BucketRun, fresh: NoSharedDiskCluster
) -> None:
    """The README's two-trial sweep (without its control trial, to keep the test short) loses its whole
    cluster once a trial has a checkpoint in the bucket; a new cluster's ``emprl tune --resume`` (no other
    option: the sweep keeps its own settings) finishes it from the bucket."""
    first = [
        EMPRL, "tune", "--verbose", "--run-dir", bucket_run.run_uri, "--preset", "sweep_tiny",
        "--space", "configs/sweeps/tiny.yaml", "--no-control", "--max-concurrent", "1", "--dev-examples", "32",
        "resources.address=auto",
        f"resources.role_nodes={SECOND_ROLES}", "resources.in_process_roles=false",
    ]  # fmt: skip
    job = fresh.start_job(first, ROOT, env=JOB_ENV)
    deadline = time.monotonic() + 900
    while not any("/checkpoint_" in key for key in bucket_run.listing("sweep/tune")):
        assert fresh.job_status(job) in ("PENDING", "RUNNING"), fresh.job_logs(job)[-6000:]
        assert time.monotonic() < deadline, "no trial checkpoint reached the bucket in 900 s"
        time.sleep(2)
    bucket_run.records.append(JobRecord("tune-1", first, -9, fresh.job_logs(job), 0.0, fresh.worker_pids()))
    assert bucket_run.key("sweep/trials.parquet") not in bucket_run.listing("sweep"), "killed too late"
    for name in list(fresh.nodes):  # the whole cluster goes, disks and all
        fresh.kill_node(name)
    resume = [EMPRL, "tune", "--verbose", "--run-dir", bucket_run.run_uri, "--resume"]
    with NoSharedDiskCluster(NODES, env=bucket_run.server.env(), logs=bucket_run.cache / "third") as third:
        record = submit(third, "tune-resume", resume, bucket_run.cache)
        bucket_run.records.append(record)
    assert record.rc == 0, record.logs[-6000:]
    listing = bucket_run.listing("sweep")
    assert bucket_run.key("sweep/trials.parquet") in listing
    assert bucket_run.key("sweep/best/policy/.emprl-complete.json") in listing
    body = bucket_run.client().get_object(
        Bucket=bucket_run.bucket, Key=bucket_run.key("sweep/trials.parquet")
    )
    trials = pq.read_table(io.BytesIO(body["Body"].read())).to_pylist()
    statuses = sorted(t["status"] for t in trials)
    assert len(statuses) == 2 and "completed" in statuses and "error" not in statuses, trials
