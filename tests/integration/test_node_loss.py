"""A node lost in the middle of PPO, on Ray nodes that share no disk (``tests/nodes.py``) with the run in a
real S3 server on loopback: every actor of the node dies at once, its disk with it, and the placement
group's bundles there wait for a node with the same resources (the autoscaler's replacement, added here a
few seconds after the kill).

The learner is pinned to nodes of type ``node_b``, the rollout workers, scorers and reference to ``node_c``
(``resources.role_nodes``). One run loses node_c mid-rollout, then node_b mid-update, then the replacement
node_b in the middle of uploading a checkpoint (the upload stalled by a relay in front of the S3 server),
and must end exactly as an uninterrupted run does: every iteration logged once, the same samples, losses
and weights, bit for bit. Another loses its learner's node with no replacement: ``emprl ppo`` stops with
the lost node, the missing resources and the ``--resume`` command, which finishes the run exactly once a
node is back.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
import yaml
from load import Load
from nodes import ROOT, NoSharedDiskCluster
from ppo_inputs import publish_run, tiny_overrides
from s3 import S3Server, StallingProxy
from safetensors.torch import load

from pipeline import storage
from pipeline.storage import remote

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="nodes with a disk each need root (mount namespaces)"),
]

PYTHON = str(ROOT / ".venv" / "bin" / "python")
EMPRL = str(ROOT / ".venv" / "bin" / "emprl")
DRIVER = "tests/integration/node_loss_ppo.py"
NODES = {"head": 1, "node_b": 2, "node_c": 2}
ROLES = "learner=node_b,rollout worker=node_c,reward scorer=node_c,reference policy=node_c"
STEPS = 6
SETTINGS = {
    "rollout__num_workers": 2, "ppo__total_steps": STEPS, "ppo__save_every": 2, "ppo__keep_checkpoints": 2,
    "resources__address": "auto", "resources__role_nodes": ROLES, "resources__node_loss_wait_s": 180,
    "resources__in_process_roles": False,
}  # fmt: skip
"""The run: 6 iterations of 8 rollouts, a checkpoint every 2; a lost node's bundles may wait 3 minutes."""
EXACT = ("iteration", "samples", "version", "reward/score", "rollout/kl", "ppo/policy_loss", "ppo/value_loss")
"""Metrics that must agree bit for bit with the uninterrupted run (timings excluded)."""
REPLACEMENT_AFTER_S = 5.0
"""Seconds between a node's death and its replacement joining (an autoscaler is slower; the wait covers it)."""
JOB_ENV = {"RAY_DEDUP_LOGS": "0"}
STALL = b"runs/faults/ppo/checkpoints/iter_000004/learner/"
"""The upload the relay stalls: the faulted run's first learner file of checkpoint 4."""


class Control:
    """The test's side of the driver's hooks: records when each phase started and each iteration finished,
    and at the chosen points kills a node (after ``delay_s``, so the phase is in flight) and, unless told
    otherwise, adds its replacement ``REPLACEMENT_AFTER_S`` later."""

    def __init__(self, cluster: NoSharedDiskCluster) -> None:
        self.cluster = cluster
        self.events: list[tuple[float, str, int, str]] = []
        self.faults: dict[tuple[int, str], tuple[str, str | None, str, str]] = {}
        """``(iteration, phase) -> (node to kill, its replacement, the node type it carries, what for)``."""
        self.kills: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []
        self.finished = threading.Event()
        control = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                control.record(url.path.strip("/"), int(query.get("iteration", 0)), query.get("phase", ""))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, kind: str, iteration: int, phase: str) -> None:
        self.events.append((time.monotonic(), kind, iteration, phase))
        fault = self.faults.pop((iteration, phase), None) if kind == "hook" else None
        if fault is not None:  # before the hook returns: the phase's calls go to the dead node's actors
            self.kill(*fault)

    def start(self, action: Callable[[], None]) -> None:
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        self.threads.append(thread)

    def kill(self, victim: str, replacement: str | None, node_type: str, why: str) -> None:
        """SIGKILL every process of ``victim`` now; its replacement (same node type) joins a few seconds later."""
        killed_at = time.monotonic()
        self.cluster.kill_node(victim)
        record: dict[str, Any] = {"node": victim, "why": why, "at": killed_at}
        self.kills.append(record)
        if replacement is not None:

            def replace() -> None:
                time.sleep(REPLACEMENT_AFTER_S)
                record["replacement"] = replacement
                record["replacement_up_s"] = self.cluster.add_node(replacement, 2, {node_type: 1.0})

            self.start(replace)

    def after(self, at: float, kind: str) -> tuple[float, int] | None:
        """Seconds from ``at`` to the first ``kind`` event after it, and that event's iteration."""
        for t, k, iteration, _ in self.events:
            if k == kind and t > at:
                return t - at, iteration
        return None

    def stop(self) -> None:
        self.finished.set()
        for thread in self.threads:
            thread.join(timeout=300)
        self.server.shutdown()


@dataclass
class Bucket:
    server: S3Server
    name: str
    folder: Path
    proxy: StallingProxy
    results: dict[str, Any] = field(default_factory=dict)

    def uri(self, run: str) -> str:
        return f"s3://{self.name}/runs/{run}"

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.server.endpoint, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        )  # fmt: skip

    def read(self, run: str, relative: str) -> bytes:
        body = self.client().get_object(Bucket=self.name, Key=f"runs/{run}/{relative}")["Body"]
        return bytes(body.read())

    def rows(self, run: str) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in self.read(run, "ppo/metrics.jsonl").decode().splitlines() if line
        ]

    def keys(self, run: str, relative: str = "") -> set[str]:
        prefix = f"runs/{run}/{relative}"
        return {k.removeprefix(prefix) for k in self.server.listing(self.name, prefix)}


@pytest.fixture(scope="module")
def bucket(
    s3_server: S3Server, ppo_run: Path, sweep_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bucket]:
    """A bucket holding the tiny inputs under runs/{base,faults,stop} (PPO) and runs/sweep (with a valid
    split); the nodes reach it through a relay that stalls, once, the first upload of checkpoint 4's learner
    files of runs/faults."""
    folder = tmp_path_factory.mktemp("node_loss")
    name = s3_server.create_bucket()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env().items():
            patch.setenv(key, value)
        patch.setenv("EMPRL_SCRATCH", str(folder / "scratch"))
        remote._filesystem.cache_clear()
        for run in ("base", "faults", "stop"):
            publish_run(ppo_run, f"s3://{name}/runs/{run}")
        for scheduler, (text, _) in SWEEPS.items():
            publish_run(sweep_run, f"s3://{name}/runs/sweep_{scheduler}", ("train", "valid"))
            space = storage.local_path(f"s3://{name}/spaces/{scheduler}.yaml")
            space.parent.mkdir(parents=True, exist_ok=True)
            space.write_text(text)
            storage.publish(space)
    remote._filesystem.cache_clear()
    yield Bucket(s3_server, name, folder, StallingProxy(s3_server.endpoint, STALL))


@pytest.fixture(scope="module")
def cluster(bucket: Bucket) -> Iterator[NoSharedDiskCluster]:
    env = {**bucket.server.env(), "AWS_ENDPOINT_URL": bucket.proxy.endpoint}
    with NoSharedDiskCluster(NODES, env=env, logs=bucket.folder / "nodes") as started:
        print(f"cluster up in {started.startup_s:.1f} s")
        yield started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_driver(
    cluster: NoSharedDiskCluster, bucket: Bucket, run: str, control: Control
) -> tuple[int, str, float]:
    spec = {"run": bucket.uri(run), "control": control.url, "overrides": SETTINGS}
    started = time.monotonic()
    rc, logs = cluster.submit([PYTHON, DRIVER, json.dumps(spec)], ROOT, env=JOB_ENV, timeout=1500,
                              log=bucket.folder / f"{run}.log")  # fmt: skip
    seconds = time.monotonic() - started
    print(f"job {run}: exit {rc} in {seconds:.0f} s (log {bucket.folder / f'{run}.log'})")
    return rc, logs, seconds


def summary_of(logs: str) -> dict[str, Any]:
    line = next(ln for ln in logs.splitlines() if "EMPRL_SUMMARY " in ln)
    return dict(json.loads(line.split("EMPRL_SUMMARY ", 1)[1]))


def assert_same_run(bucket: Bucket, run: str, base: str = "base") -> None:
    rows, expected = bucket.rows(run), bucket.rows(base)
    assert [r["iteration"] for r in rows] == list(range(1, STEPS + 1)), [r["iteration"] for r in rows]
    for got, want in zip(rows, expected, strict=True):
        assert {k: got[k] for k in EXACT} == {k: want[k] for k in EXACT}, got["iteration"]
    weights, reference = (load(bucket.read(r, "ppo/policy/model.safetensors")) for r in (run, base))
    assert weights.keys() == reference.keys()
    assert all(weights[k].equal(reference[k]) for k in weights)


@pytest.fixture(scope="module")
def baseline(cluster: NoSharedDiskCluster, bucket: Bucket) -> dict[str, Any]:
    """The same run, uninterrupted, on the same cluster (node_b holds the learner, node_c the rest)."""
    control = Control(cluster)
    try:
        rc, logs, seconds = run_driver(cluster, bucket, "base", control)
    finally:
        control.stop()
    assert rc == 0, logs[-6000:]
    summary = summary_of(logs)
    assert summary["iterations"] == STEPS and summary["samples"] == STEPS * 8
    assert [r["iteration"] for r in bucket.rows("base")] == list(range(1, STEPS + 1))
    bucket.results["base"] = {"seconds": seconds}
    return summary


def test_ppo_survives_losing_each_node_mid_rollout_mid_update_and_mid_checkpoint_upload(
    cluster: NoSharedDiskCluster, bucket: Bucket, baseline: dict[str, Any]
) -> None:
    control = Control(cluster)
    control.faults[(2, "generate")] = ("node_c", "node_c2", "node_c", "rollout phase starting")
    control.faults[(3, "update")] = ("node_b", "node_b2", "node_b", "update phase starting")

    def mid_upload() -> None:  # checkpoint 4's first learner upload hangs in the relay: kill its node then
        while not bucket.proxy.stalled.wait(1.0):
            if control.finished.is_set():
                return
        control.kill("node_b2", "node_b3", "node_b", "mid-checkpoint-upload")

    control.start(mid_upload)
    try:
        rc, logs, seconds = run_driver(cluster, bucket, "faults", control)
    finally:
        control.stop()
    assert rc == 0, logs[-8000:]
    assert [k["why"] for k in control.kills] == [
        "rollout phase starting", "update phase starting", "mid-checkpoint-upload",
    ]  # fmt: skip
    summary = summary_of(logs)
    assert summary["iterations"] == STEPS and summary["samples"] == STEPS * 8
    assert summary["learner_recoveries"] == 2  # the update and the upload; the rollout loss needed none
    assert summary["node_losses"] == 3, summary
    assert summary["worker_restarts"]["rollout worker"] == 2, summary
    assert "node_c2" in {k.get("replacement") for k in control.kills}

    # the rollout loss re-ran only the lost shards: iterations 1-2 are the baseline's without a rollback;
    # each learner loss rolled back to checkpoint 2 and re-ran from there; the run ends exactly as the baseline
    assert_same_run(bucket, "faults")
    names = {k.split("/")[0] for k in bucket.keys("faults", "ppo/checkpoints/")} - {
        ""
    }  # "": the folder object
    assert names == {"iter_000004", "iter_000006", "latest"}, names

    table = []
    for kill in control.kills:
        after = control.after(kill["at"], "done")
        assert after is not None, kill
        table.append(
            (kill["why"], kill["node"], kill.get("replacement"), kill.get("replacement_up_s"), *after)
        )
    bucket.results["faults"] = {"seconds": seconds, "kills": table, "summary": summary}
    print(
        f"\nuninterrupted run {bucket.results['base']['seconds']:.0f} s, with three node losses {seconds:.0f} s"
    )
    print(
        f"{'fault':24} {'node':8} {'replacement':12} {'joined s':>8} {'to next iteration s':>20} {'iteration':>9}"
    )
    for why, node, replacement, joined, to_next, iteration in table:
        print(f"{why:24} {node:8} {replacement or '-':12} {joined or 0:8.1f} {to_next:20.1f} {iteration:9d}")


def test_ppo_stops_with_the_resume_command_when_no_node_comes_back_and_the_command_finishes_it(
    cluster: NoSharedDiskCluster, bucket: Bucket, baseline: dict[str, Any]
) -> None:
    learner_node = next(n for n in ("node_b3", "node_b2", "node_b") if n in cluster.nodes and cluster.pids(n))
    overrides = tiny_overrides(**{**SETTINGS, "resources__node_loss_wait_s": 20})
    command = [EMPRL, "ppo", "--run-dir", bucket.uri("stop"), *overrides]
    job = cluster.start_job(command, ROOT, env=JOB_ENV)
    deadline = time.monotonic() + 600
    while ".emprl-complete.json" not in "".join(bucket.keys("stop", "ppo/checkpoints/iter_000002/")):
        assert cluster.job_status(job) in ("PENDING", "RUNNING"), cluster.job_logs(job)[-6000:]
        assert time.monotonic() < deadline, "checkpoint 2 not in the bucket within 600 s"
        time.sleep(0.5)
    killed_at = time.monotonic()
    cluster.kill_node(learner_node)  # nothing replaces it
    status, logs = cluster.wait_job(job, 300)
    stopped_after = time.monotonic() - killed_at
    assert status == "FAILED", logs[-6000:]
    message = logs[logs.index("node lost:") :]
    print(f"\nstopped {stopped_after:.0f} s after the kill:\n{message}")
    assert "resources.node_loss_wait_s" in message and "node_b" in message, message
    assert "Traceback" not in message
    resume = re.search(r"^\s+(emprl ppo .*--resume.*)$", message, re.MULTILINE)
    assert resume, message
    argv = shlex.split(resume.group(1))
    assert argv[:4] == ["emprl", "ppo", "--run-dir", bucket.uri("stop")] and "--resume" in argv, argv

    cluster.add_node("node_b9", 2, {"node_b": 1.0})
    rc, logs = cluster.submit([EMPRL, *argv[1:], "--verbose"], ROOT, env=JOB_ENV, timeout=900,
                              log=bucket.folder / "stop-resume.log")  # fmt: skip
    assert rc == 0, logs[-6000:]
    assert "resumed from" in logs
    assert_same_run(bucket, "stop")
    bucket.results["stop"] = {"stopped_after_s": stopped_after}


SWEEPS = {
    "asha": ("ppo.kl_coef: {grid: [0.05, 0.1, 0.2, 0.4]}\n", ["--scheduler", "asha"]),
    "pbt": ("ppo.kl_coef: {uniform: [0.05, 0.5]}\n", ["--scheduler", "pbt", "--perturbation-interval", "1",
                                                        "--num-samples", "2"]),
}  # fmt: skip
"""A 4-trial grid under ASHA; 2 samples under PBT, the worse trial exploiting the better one at every report
(its starts from another trial's checkpoint are counted apart: ``exploits``, not ``failures``)."""
SWEEP_STEPS = 4
FAILURE_SAID = "restarting it from its last checkpoint"
"""What the sweep prints when a trial failed and Tune restarts it."""


def _failures_said(cluster: NoSharedDiskCluster, job: str) -> int:
    return cluster.job_logs(job).count(FAILURE_SAID)


def _alive(cluster: NoSharedDiskCluster, class_part: str) -> set[tuple[str, str]]:
    """``(node name, actor id)`` of the alive actors whose class name contains ``class_part``."""
    status, body = _get(f"{cluster.dashboard_url}/api/v0/actors?limit=2000&detail=true", timeout=30)
    assert status == 200, body
    names = _node_names(cluster)
    return {
        (names.get(a["node_id"], "?"), a["actor_id"])
        for a in body["data"]["result"]["result"]
        if a["state"] == "ALIVE" and class_part in a["class_name"]
    }


def _actors(cluster: NoSharedDiskCluster, class_part: str) -> list[str]:
    """Node names of the alive actors whose class name contains ``class_part``."""
    return sorted(node for node, _ in _alive(cluster, class_part))


def _running_trial_node(cluster: NoSharedDiskCluster) -> str | None:
    """A worker node where a trial is between two reports now: its function's ``train`` call (Tune's
    ``ImplicitFunc.train``, which lasts from the trial's start or last report to its next one) is running
    there, the same call on two looks 3 s apart, and its actor still alive after that. A trial Tune is
    pausing (synchronous PBT pauses at every report) or ending keeps its actors for a second or two, and the
    state API reports a finished call as running for about as long: killing that node fails no trial."""

    def running() -> set[tuple[str, str, str]]:
        query = "limit=10000&detail=true&filter_keys=state&filter_predicates=%3D&filter_values=RUNNING"
        status, body = _get(f"{cluster.dashboard_url}/api/v0/tasks?{query}", timeout=30)
        assert status == 200, body
        names = _node_names(cluster)
        return {
            (names.get(t["node_id"], "?"), t["task_id"], t["actor_id"])
            for t in body["data"]["result"]["result"]
            if t.get("func_or_class_name") == "ImplicitFunc.train" and t["state"] == "RUNNING"
        }

    first = {call for call in running() if call[0] != "head"}
    time.sleep(3)
    steady = first & running()
    alive = {actor for _, actor in _alive(cluster, "")}  # the GCS actor table, not the task events
    return next((node for node, _, actor in sorted(steady) if actor in alive), None)


@pytest.mark.parametrize("scheduler", list(SWEEPS))
def test_a_sweep_survives_losing_a_node_that_runs_a_trial(
    cluster: NoSharedDiskCluster, bucket: Bucket, scheduler: str
) -> None:
    """A sweep (``SWEEPS``: 4 trials under ASHA, 2 under PBT), two trials at a time, each trial's function and
    PPO roles packed on one worker node; once a trial has a checkpoint in the bucket, the node where a trial
    runs PPO is killed and a node of the same size joins 5 s later. Tune restarts that trial from its last
    checkpoint (``--max-failures``) with its own hyperparameters (PBT's mutated ones included), the other goes
    on, the sweep ends with every trial once in the table and the restarted one marked (``failures``; PBT's
    clones counted apart, in ``exploits``). A trial's actors outlive a report by a second or two (PBT pauses
    trials at every report): a kill that lands on a trial Tune is pausing or ending fails no trial, and the
    next running trial's node is killed (at most 3 kills); the console's failure lines and Tune's counts
    must agree."""
    run = f"sweep_{scheduler}"
    uri = bucket.uri(run)
    command = [
        EMPRL, "tune", "--run-dir", uri, "--space", f"s3://{bucket.name}/spaces/{scheduler}.yaml",
        *SWEEPS[scheduler][1], "--max-concurrent", "2", "--dev-examples", "8", "--eval-examples", "8",
        "--max-failures", "2", "--no-control",
        *tiny_overrides(resources__address="auto", ppo__total_steps=SWEEP_STEPS, ppo__save_every=1),
    ]  # fmt: skip
    job = cluster.start_job(command, ROOT, env=JOB_ENV)
    deadline = time.monotonic() + 900
    kills: list[str] = []
    while not kills or _failures_said(cluster, job) == 0:
        assert len(kills) < 3, f"{kills} killed, no trial failed:\n{cluster.job_logs(job)[-6000:]}"
        victim = None
        while victim is None:
            assert cluster.job_status(job) in ("PENDING", "RUNNING"), cluster.job_logs(job)[-6000:]
            assert time.monotonic() < deadline, "no trial checkpoint in the bucket within 900 s"
            if any("/checkpoint_" in key for key in bucket.keys(run, "sweep/tune/")):
                victim = _running_trial_node(cluster)
            time.sleep(1)
        killed_at = time.monotonic()
        node_type = {
            k: v for k, v in cluster.nodes[victim].resources.items() if k != victim
        }  # e.g. {"node_b": 1}
        cluster.kill_node(victim)
        kills.append(victim)
        time.sleep(REPLACEMENT_AFTER_S)
        cluster.add_node(f"{victim}_{scheduler}{len(kills)}", 2, node_type)  # the same node type comes back
        # the trial's function died with the node: Tune says so within seconds. A trial Tune was pausing or
        # ending right then (its actors outlive the report by a second or two) fails nothing: kill another node.
        said_by = time.monotonic() + 60
        while _failures_said(cluster, job) == 0 and time.monotonic() < said_by:
            if cluster.job_status(job) not in ("PENDING", "RUNNING"):
                break
            time.sleep(2)
    status, logs = cluster.wait_job(job, 900)
    (bucket.folder / f"{run}.log").write_text(logs)
    assert status == "SUCCEEDED", logs[-6000:]
    seconds = time.monotonic() - killed_at
    trials = pq.read_table(io.BytesIO(bucket.read(run, "sweep/trials.parquet"))).to_pylist()
    print(
        f"\n{scheduler} sweep: killed {kills} (each running a trial); finished {seconds:.0f} s after the last"
    )
    for t in trials:
        print(
            f"  {t['trial_id']}: kl_coef {t['ppo.kl_coef']} {t['status']} iterations {t['iteration']} failures {t['failures']} exploits {t['exploits']}"
        )
    count = 4 if scheduler == "asha" else 2
    assert len(trials) == count and len({t["trial_id"] for t in trials}) == count, trials
    assert {t["status"] for t in trials} <= {"completed", "stopped"}, trials
    if scheduler == "asha":
        assert sorted(t["ppo.kl_coef"] for t in trials) == [0.05, 0.1, 0.2, 0.4]
    # each trial the lost node failed was restarted from its checkpoint: Tune counted what the console said
    said = logs.count(FAILURE_SAID)
    assert said >= 1 and sum(t["failures"] for t in trials) == said, (said, trials)
    assert "given up" not in logs
    for t in trials:
        folder = f"sweep/trials/{t['trial_id']}/ppo"
        # its PPO log: every iteration once, whatever restarted it (a lost node, a PBT exploit)
        log = bucket.read(run, f"{folder}/metrics.jsonl").decode().splitlines()
        iterations = [json.loads(line)["iteration"] for line in log if line]
        assert iterations == list(range(1, len(iterations) + 1)) and iterations, (t["trial_id"], iterations)
        # PPO last ran under the hyperparameters Tune holds for the trial (after a restart, after a mutation)
        in_force = yaml.safe_load(bucket.read(run, f"{folder}/config.yaml"))["ppo"]["kl_coef"]
        assert in_force == t["ppo.kl_coef"], (t["trial_id"], in_force, t["ppo.kl_coef"])
    bucket.results[run] = {"seconds_after_kill": seconds, "victims": kills}


SFT = ["sft.epochs=3", "resources.address=auto", "resources.role_nodes=trainer=node_b"]
"""SFT on the demo data, its Ray Train worker pinned to a node of type node_b."""


def _alive_of_type(cluster: NoSharedDiskCluster, node_type: str) -> str:
    """A live node of ``node_type`` (one joins if none is left from the tests before)."""
    alive = [n for n, node in cluster.nodes.items() if node_type in node.resources and cluster.pids(n)]
    if not alive:
        alive.append(f"{node_type}_sft")
        cluster.add_node(alive[0], 2, {node_type: 1.0})
    return alive[0]


def test_sft_survives_losing_its_train_worker_node_mid_epoch(
    cluster: NoSharedDiskCluster, bucket: Bucket
) -> None:
    """``emprl sft`` with its Ray Train worker on a node of type node_b: once the first epoch's checkpoint is
    in the bucket, that node dies and another of its type joins 5 s later. Ray Train restarts the worker
    from the last persisted checkpoint; the run ends with the uninterrupted run's losses and weights."""
    victim = _alive_of_type(cluster, "node_b")
    rc, logs = cluster.submit([EMPRL, "sft", "--run-dir", bucket.uri("sft_base"), *SFT], ROOT, env=JOB_ENV,
                              timeout=900, log=bucket.folder / "sft_base.log")  # fmt: skip
    assert rc == 0, logs[-6000:]
    job = cluster.start_job([EMPRL, "sft", "--run-dir", bucket.uri("sft_lost"), *SFT], ROOT, env=JOB_ENV)
    deadline = time.monotonic() + 900
    while not any("checkpoint_" in key for key in bucket.keys("sft_lost", "sft/ray_train/")):
        assert cluster.job_status(job) in ("PENDING", "RUNNING"), cluster.job_logs(job)[-6000:]
        assert time.monotonic() < deadline, "no SFT checkpoint in the bucket within 900 s"
        time.sleep(0.5)
    killed_at = time.monotonic()
    cluster.kill_node(victim)
    time.sleep(REPLACEMENT_AFTER_S)
    cluster.add_node(f"{victim}_sft", 2, {"node_b": 1.0})
    status, logs = cluster.wait_job(job, 900)
    seconds = time.monotonic() - killed_at
    assert status == "SUCCEEDED", logs[-6000:]
    lost, base = (json.loads(bucket.read(run, "sft/metrics.json")) for run in ("sft_lost", "sft_base"))
    print(f"\nSFT: killed {victim} after the first checkpoint; finished {seconds:.0f} s later")
    print(f"  uninterrupted: {base}\n  with the loss: {lost}")
    weights, reference = (
        load(bucket.read(run, "sft/policy/model.safetensors")) for run in ("sft_lost", "sft_base")
    )
    assert weights.keys() == reference.keys()
    assert all(weights[k].equal(reference[k]) for k in weights), (
        "the SFT policy differs from the uninterrupted run's"
    )
    bucket.results["sft"] = {"seconds_after_kill": seconds}


CLIENTS, LOAD_S, KILL_AT_S, AFTER_S = 16, 20.0, 6.0, 5.0
"""Serve under load: 16 clients for 20 s, the node killed 6 s in, the load on for 5 s more at least once
the replica is replaced."""


def _get(url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:300]
    except OSError as exc:  # no answer at all (connection reset or refused)
        return 0, str(exc)


def _node_names(cluster: NoSharedDiskCluster) -> dict[str, str]:
    """``{node id: node name}`` of the alive nodes (each carries the resource of its own name, a replacement
    also its type's: ``node_c2`` has ``node_c`` too, so the longest name is its own)."""
    return {
        row["node_id"]: max(
            (name for name in row.get("resources_total", {}) if name in cluster.nodes), key=len
        )
        for row in cluster.alive_nodes()
    }


def _replicas(cluster: NoSharedDiskCluster, deployment: str) -> list[str]:
    """Node names of the alive replicas of ``deployment`` of the ``emprl`` app."""
    return _actors(cluster, f"ServeReplica:emprl:{deployment}")


def _percentiles(spans: list[float]) -> str:
    if not spans:
        return "-"
    spans = sorted(spans)
    return (
        f"p50 {spans[len(spans) // 2]:.2f} s, p99 {spans[min(len(spans) - 1, int(0.99 * len(spans)))]:.2f} s"
    )


def test_serve_under_load_loses_a_node_with_a_policy_replica(
    cluster: NoSharedDiskCluster, bucket: Bucket, baseline: dict[str, Any]
) -> None:
    """``emprl serve`` (its driver and HTTP proxy on the head: the simulated nodes share one address, so
    their proxies would share one port) with two policy replicas on two nodes; the
    node of one of them is killed under 16 clients. Serve re-creates the replica on a live node; the
    ingress retries a call whose replica died once, so a client sees at most the calls lost twice, each a
    503 with Retry-After; every request sent after the replacement answers 200."""
    port = _free_port()
    command = [EMPRL, "serve", "--run-dir", bucket.uri("base"), *tiny_overrides(
        resources__address="auto", serve__port=port, serve__policy_replicas=2, serve__policy_cpus=0.6,
        serve__identifier_cpus=0.25, serve__health_check_period_s=1.0, serve__proxy_location="HeadOnly",
    )]  # fmt: skip
    job = cluster.start_job(command, ROOT, env=JOB_ENV)
    url = f"http://127.0.0.1:{port}"
    body = {"turns": ["I lost my job today."], "sampling": {"max_new_tokens": 4}}
    try:
        deadline = time.monotonic() + 300
        while _get(f"{url}/healthz", timeout=10)[0] != 200 or len(_replicas(cluster, "policy")) < 2:
            assert cluster.job_status(job) in ("PENDING", "RUNNING"), cluster.job_logs(job)[-6000:]
            assert time.monotonic() < deadline, cluster.job_logs(job)[-6000:]
            time.sleep(1)
        before = _replicas(cluster, "policy")
        ingress = _replicas(cluster, "ingress")
        assert ingress == ["head"], ingress  # serve.ingress_on_head: beside the proxy, never on a worker
        workers = [n for n in before if n != "head"]  # 0.6 CPU each: the head (1 CPU) holds one at most
        assert workers, f"no policy replica on a worker node: {before}"
        victim = workers[0]

        sampling = body["sampling"]
        load = Load(
            lambda seed: _get(f"{url}/v1/respond", {**body, "sampling": {**sampling, "seed": seed}})[0],
            CLIENTS,
        )
        results, start = load.results, load.start().started
        time.sleep(KILL_AT_S)
        killed = time.monotonic()
        cluster.kill_node(victim)
        recovered = None
        while time.monotonic() < max(start + LOAD_S, (recovered or killed) + AFTER_S) or recovered is None:
            now = _replicas(cluster, "policy")
            if recovered is None and len(now) == 2 and victim not in now:
                recovered = time.monotonic()
            assert time.monotonic() < killed + 180, f"policy replicas {now} 180 s after the kill"
            time.sleep(0.5)
        ended = load.stop()
    finally:
        logs = cluster.job_logs(job)
        cluster.stop_job(job)
    after_replicas = _replicas(cluster, "policy")
    in_flight = [s for s, e, _ in results if s < killed < e]
    failed = [(s - killed, e - killed, st) for s, e, st in results if st != 200]
    phases = {
        "before": [e - s for s, e, _ in results if e < killed],
        "during": [e - s for s, e, _ in results if killed <= s < recovered],
        "after": [e - s for s, e, _ in results if s >= recovered],
    }
    late = [st for s, _, st in results if s >= recovered]
    print(f"\nserve: policy replicas {before} (ingress {ingress}); killed {victim}; replaced "
          f"{recovered - killed:.1f} s after the kill -> {after_replicas}")  # fmt: skip
    print(f"{len(results)} requests from {CLIENTS} clients in {ended - start:.0f} s: {len(results) - len(failed)} "
          f"answered 200, {len(failed)} failed {sorted({st for *_, st in failed})}; {len(in_flight)} in flight "
          "at the kill")  # fmt: skip
    for phase, spans in phases.items():
        print(f"  {phase:6} the replacement: {len(spans):4d} requests, {_percentiles(spans)}")
    bucket.results["serve"] = {"requests": len(results), "failed": len(failed), "in_flight": len(in_flight),
                               "replaced_s": recovered - killed}  # fmt: skip
    assert len(results) > CLIENTS * 4, len(results)
    assert all(st == 503 for *_, st in failed), failed  # retryable, never a 500
    assert len(failed) <= len(in_flight), (failed, len(in_flight))
    assert late and set(late) == {200}, late
    assert "EmpRL serving at" in logs, logs[-4000:]
