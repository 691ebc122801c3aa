"""PPO with its run folder in an object store (a real S3 server on loopback, moto): every input read from
the bucket, checkpoints uploaded rank by rank and marked complete last, the metrics log continued exactly
after a resume on a node that never saw the run, and neither a driver crash, a cut upload nor learner
ranks SIGKILLed in the middle of uploading a checkpoint losing the last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import ray
from ppo_inputs import publish_run, tiny_config
from s3 import S3Server, StallingProxy, fresh_node

from actors.ppo.checkpoints import CONTROLLER, CheckpointStore
from actors.ppo.controller import PPOController
from jobs.stages import PPOInputError, ppo_stage
from pipeline import storage
from pipeline.layout import RunLayout
from pipeline.storage.transfer import MARKER

pytestmark = pytest.mark.integration

CUT = "learner/deepspeed/cut-upload.bin"
"""A file of checkpoint 6 that a cut upload left in the bucket (no marker)."""


class Crash(RuntimeError):
    """A simulated driver crash."""


def _log(layout: RunLayout) -> list[dict[str, Any]]:
    """The metrics log as the bucket holds it."""
    text = storage.read_text(layout.ppo.log)
    assert text is not None
    return [json.loads(line) for line in text.splitlines()]


def _checkpoint_keys(keys: set[str], prefix: str) -> set[str]:
    return {k.removeprefix(prefix) for k in keys if k.startswith(prefix)}


def test_ppo_runs_and_resumes_from_the_bucket_alone(
    ray_cluster: None,
    ppo_run: Path,
    s3_bucket: str,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, bucket = f"{s3_bucket}/run", s3_bucket.removeprefix("s3://")
    layout = publish_run(ppo_run, uri)
    # two learner ranks (ZeRO-2: each uploads its own optimizer shard), checkpoints at 2, 4 and 6
    cfg = tiny_config(
        learner__num_ranks=2, learner__engine__zero_stage=2, ppo__total_steps=6, ppo__save_every=2,
        ppo__keep_checkpoints=2,
    )  # fmt: skip

    def crash(controller: PPOController, iteration: int, phase: str) -> None:
        if (iteration, phase) == (6, "publish"):
            raise Crash("simulated driver crash in iteration 6")

    # --- node 1: checkpoints 2 and 4, iteration 5 logged, the driver dies in iteration 6 ----------
    with pytest.raises(Crash):
        ppo_stage(cfg, layout, hooks=[crash])
    keys = set(s3_server.listing(bucket, "run/"))
    checkpoints = "run/ppo/checkpoints/"
    for it in ("iter_000002", "iter_000004"):
        assert {
            MARKER,
            CONTROLLER,
            "learner/latest",
            "learner/rng_rank0.pt",
            "learner/rng_rank1.pt",
            "learner/deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "learner/deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "learner/deepspeed/mp_rank_00_model_states.pt",
        } <= _checkpoint_keys(keys, f"{checkpoints}{it}/"), it
    assert storage.read_text(layout.ppo.checkpoints / "latest") == "iter_000004\n"
    first = _log(layout)
    assert [r["iteration"] for r in first] == [1, 2, 3, 4, 5]  # each row uploaded as it was logged
    assert any(k.startswith("run/ppo/tensorboard/") for k in keys)
    # a cut upload of checkpoint 6 (a rank's file, no marker) is never trusted
    storage.write_text(layout.ppo.checkpoints / "iter_000006" / CUT, "half a shard")
    assert CheckpointStore(layout.ppo.checkpoints, keep=2).latest() == layout.ppo.checkpoints / "iter_000004"
    with pytest.raises(PPOInputError, match=f"{uri}/ppo.*--resume"):
        ppo_stage(cfg, layout, resume=False)

    # --- node 2 (its own empty disk) resumes from the bucket; both learner ranks die in iteration 6 --
    fresh_node(monkeypatch, tmp_path / "node2")
    layout = RunLayout(storage.local_path(uri))
    assert not layout.root.exists()
    # the actors reach the bucket through a relay that stalls the first upload of checkpoint 6's
    # learner files; a watcher then SIGKILLs both learner ranks (one of them blocked in that upload)
    proxy = StallingProxy(s3_server.endpoint, b"iter_000006/learner/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the actors' environment (the driver's
    killed: list[int] = []  # own filesystem client is already built and keeps the direct endpoint)

    def watch(controller: PPOController, iteration: int, phase: str) -> None:
        if (iteration, phase) == (6, "update") and not killed:
            assert controller.learner is not None
            pids = ray.get([a.pid.remote() for a in controller.learner.actors])

            def kill_when_stalled() -> None:
                proxy.stalled.wait()
                killed.extend(pids)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)

            threading.Thread(target=kill_when_stalled, daemon=True).start()

    summary = ppo_stage(cfg, layout, resume=True, hooks=[watch]).metrics
    assert proxy.stalled.is_set() and len(killed) == 2 and summary["learner_recoveries"] == 1
    assert summary["iterations"] == 6 and summary["samples"] == 6 * 8
    assert summary["policy"] == f"{uri}/ppo/policy"

    log = _log(layout)
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5, 6]  # logged once each, across both nodes
    assert [r["samples"] for r in log] == [8, 16, 24, 32, 40, 48]
    assert log[:4] == first[:4]  # the log continued from the checkpoint: rows 1..4 are node 1's
    assert log == json.loads(storage.read_text(layout.ppo.metrics) or "{}")["history"]

    keys = set(s3_server.listing(bucket, "run/"))
    names = {k.removeprefix(checkpoints).split("/")[0] for k in keys if k.startswith(checkpoints)} - {""}
    assert names == {"iter_000004", "iter_000006", "latest"}  # keep=2 pruned checkpoint 2 in the bucket
    newest = _checkpoint_keys(keys, f"{checkpoints}iter_000006/")
    assert {MARKER, CONTROLLER, "learner/rng_rank1.pt"} <= newest and CUT not in newest
    assert storage.read_text(layout.ppo.checkpoints / "latest") == "iter_000006\n"
    state = json.loads(storage.read_text(layout.ppo.checkpoints / "iter_000006" / CONTROLLER) or "{}")
    assert (state["iteration"], state["samples"]) == (6, 48)
    policy = _checkpoint_keys(keys, "run/ppo/policy/")
    assert {MARKER, "config.json", "model.safetensors", "value_head.safetensors"} <= policy
    assert {"run/ppo/metrics.jsonl", "run/ppo/metrics.json"} <= keys
