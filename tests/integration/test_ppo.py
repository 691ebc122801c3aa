"""PPO on real Ray actors with tiny models: rollout workers, reward scorers, reference policy and a
DeepSpeed learner group; determinism across worker counts, fault recovery and exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import ppo_inputs
import pytest
import ray
import torch
from ppo_inputs import tiny_overrides
from processes import BIN, job_env, kill_all, leftovers
from safetensors.torch import load_file

from actors.ppo.controller import PPOController
from jobs.stages import PPOInputError, ppo_stage
from pipeline.config import MECHANISMS, Config
from pipeline.layout import RunLayout

pytestmark = pytest.mark.integration


def tiny_config(**overrides: Any) -> Config:
    """:func:`ppo_inputs.tiny_config` with every PPO role an actor of its own (the module's subject)."""
    return ppo_inputs.tiny_config(resources__in_process_roles=False, **overrides)


# metrics that must agree bit for bit between runs that should be identical (timings excluded)
EXACT = (
    "samples",
    "version",
    "reward/score",
    "rollout/kl",
    "rollout/kl_coef",
    "ppo/policy_loss",
    "ppo/value_loss",
)


def _fresh(inputs: Path, tmp_path: Path, name: str) -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    for sub in ("sft", "identifiers", "labeled"):
        (run_dir / sub).symlink_to(inputs / sub)
    return run_dir


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "ppo" / "policy" / "model.safetensors")


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["iteration"] for r in rows_a] == [r["iteration"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: ra[k] for k in EXACT} == {k: rb[k] for k in EXACT}, ra["iteration"]
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def baseline(ray_cluster: None, ppo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three uninterrupted iterations with two rollout workers and one learner rank."""
    run_dir = _fresh(ppo_run, tmp_path_factory.mktemp("baseline"), "run")
    cfg = tiny_config(rollout__num_workers=2, ppo__total_steps=3, ppo__save_every=2)
    summary = ppo_stage(cfg, RunLayout(run_dir)).metrics
    assert summary["iterations"] == 3 and summary["samples"] == 24
    # fp32: the rollout workers' log-probs and values are PPO's old ones, and they equal the
    # learner's own forward pass before its first step (ratio 1 up to float rounding)
    for row in _rows(run_dir):
        assert row["rollout/old_logprobs_from_rollout"] == 1.0 and row["time/values"] == 0.0
        assert row["ppo/first_ratio_gap"] < 1e-4, row["iteration"]
    return run_dir


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_one_iteration_with_two_rollout_workers_and_two_learner_ranks(
    ray_cluster: None, ppo_run: Path, tmp_path: Path, zero_stage: int
) -> None:
    run_dir = _fresh(ppo_run, tmp_path, "run")
    # the learner recomputes the old log-probs and values (trl's way), after the scorers ran alone;
    # learner rank 0 broadcasts the weights over its second process group (gloo), beside DeepSpeed's
    # (under ZeRO-3 both ranks gather the parameters for it)
    cfg = tiny_config(
        rollout__num_workers=2, learner__num_ranks=2, learner__engine__zero_stage=zero_stage,
        ppo__old_logprobs="learner", resources__overlap_evaluate=False, learner__weight_sync="collective",
    )  # fmt: skip
    synced: list[bool] = []

    def check_weights(controller: PPOController, iteration: int, phase: str) -> None:
        if phase == "update":  # the workers hold the published version-0 weights of both learner ranks
            learner, workers = controller.weight_checksums()
            synced.append(workers == [learner, learner])

    summary = ppo_stage(cfg, RunLayout(run_dir), hooks=[check_weights]).metrics
    assert synced == [True]

    assert summary["version"] == 1 and summary["iterations"] == 1 and summary["samples"] == 8
    (row,) = _rows(run_dir)
    assert row["rollout/version"] == 0 and row["version"] == 1
    assert row["rollout/old_logprobs_from_rollout"] == 0.0 and row["time/values"] > 0.0
    # the learner's teacher-forced log-probs reproduce the sampler's (same weights, dropout off)
    assert row["rollout/sampler_logprob_gap"] < 1e-4
    assert row["ppo/first_ratio_gap"] < 1e-4
    # the update logged every diagnostic, each a number
    for key in (
        "ppo/policy_loss",
        "ppo/value_loss",
        "ppo/entropy",
        "ppo/grad_norm",
        "ppo/clipfrac",
        "ppo/approx_kl",
    ):
        assert key in row and row[key] == row[key], key  # present and not NaN
    assert row["ppo/grad_norm"] > 0
    for m in MECHANISMS:
        assert 0.0 <= row[f"reward/{m}_hit"] <= 1.0
    for phase in ("generate", "evaluate", "score", "reference", "values", "advantages", "update", "publish"):
        assert row[f"time/{phase}"] >= 0.0, phase
    start = load_file(run_dir / "sft" / "policy" / "model.safetensors")
    after = _weights(run_dir)
    changed = [k for k in start if not torch.equal(start[k], after[k])]
    assert changed, "one PPO iteration must change the policy"
    assert (run_dir / "ppo" / "policy" / "value_head.safetensors").is_file()
    assert list((run_dir / "ppo" / "tensorboard").iterdir())
    assert (run_dir / "ppo" / "checkpoints" / "latest").read_text().strip() == "iter_000001"


def test_one_or_two_rollout_workers_give_the_same_run(
    ray_cluster: None, ppo_run: Path, baseline: Path, tmp_path: Path
) -> None:
    run_dir = _fresh(ppo_run, tmp_path, "one_worker")
    ppo_stage(tiny_config(rollout__num_workers=1, ppo__total_steps=3, ppo__save_every=2), RunLayout(run_dir))
    _assert_same_run(baseline, run_dir)


def test_killed_rollout_worker_and_learner_recover_exactly(
    ray_cluster: None, ppo_run: Path, baseline: Path, tmp_path: Path
) -> None:
    """With the collective weight sync (gloo, buckets of 32 KiB): every publish leaves the workers with
    the learner's exact weights, each replaced member rebuilds the group, and the run equals the
    baseline's (whose weights went through the object store) bit for bit."""
    killed: list[str] = []
    checks: list[tuple[int, str, bool, int]] = []

    def kill(controller: PPOController, iteration: int, phase: str) -> None:
        if phase in ("generate", "evaluate"):
            learner, workers = controller.weight_checksums()
            builds = getattr(controller.sync, "builds", -1)
            checks.append((iteration, phase, workers == [learner, learner], builds))
        if (iteration, phase) == (2, "generate") and "rollout" not in killed:
            pid = ray.get(controller.rollout.actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append("rollout")
        if (iteration, phase) == (3, "update") and "learner" not in killed:
            assert controller.learner is not None
            pid = ray.get(controller.learner.actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append("learner")

    run_dir = _fresh(ppo_run, tmp_path, "faults")
    cfg = tiny_config(
        rollout__num_workers=2, ppo__total_steps=3, ppo__save_every=2, learner__weight_sync="collective",
        learner__weight_sync_bucket_mb=1 / 32,
    )  # fmt: skip
    summary = ppo_stage(cfg, RunLayout(run_dir), hooks=[kill]).metrics

    assert killed == ["rollout", "learner"]
    # the workers match the learner before every generation and after it; the group was built once,
    # rebuilt for the replacement rollout worker (before its shard ran again, hence its exact
    # rollouts) and for the recovered learner
    assert checks == [
        (1, "generate", True, 1), (1, "evaluate", True, 1),
        (2, "generate", True, 1), (2, "evaluate", True, 2),
        (3, "generate", True, 2), (3, "evaluate", True, 2),
        (3, "generate", True, 3), (3, "evaluate", True, 3),
    ]  # fmt: skip
    assert summary["worker_restarts"]["rollout worker"] == 1
    assert summary["learner_recoveries"] == 1
    assert summary["iterations"] == 3 and summary["samples"] == 24
    assert [r["iteration"] for r in _rows(run_dir)] == [1, 2, 3]
    _assert_same_run(baseline, run_dir)


def test_in_process_roles_give_the_same_run_as_actors(
    ray_cluster: None, ppo_run: Path, baseline: Path, tmp_path: Path
) -> None:
    """``resources.in_process_roles``: the rollout, reward and reference roles and the one learner rank as
    objects in the driver (here pytest's process) give the baseline's run bit for bit, through a crash in
    iteration 3 and a resume in the same process (a second learner there, on the first one's process group
    of one; the first put the rendezvous variables back); the roles are plain objects, not actor handles."""

    class Crash(RuntimeError):
        pass

    run_dir = _fresh(ppo_run, tmp_path, "in_process")
    roles: dict[str, list[str]] = {}
    env_before = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}

    def look(controller: PPOController, iteration: int, phase: str) -> None:
        roles.update({role: [type(a).__name__ for a in g.actors] for role, g in controller.groups().items()})
        if (iteration, phase) == (3, "publish") and not (run_dir / "resumed").exists():
            (run_dir / "resumed").touch()
            raise Crash("simulated driver crash in iteration 3")

    cfg = ppo_inputs.tiny_config(
        rollout__num_workers=2, ppo__total_steps=3, ppo__save_every=2, resources__in_process_roles=True
    )
    assert cfg.in_process_learner
    with pytest.raises(Crash):
        ppo_stage(cfg, RunLayout(run_dir), hooks=[look])
    assert {k: os.environ.get(k) for k in env_before} == env_before
    summary = ppo_stage(cfg, RunLayout(run_dir), resume=True, hooks=[look]).metrics
    assert summary["iterations"] == 3 and summary["samples"] == 24
    _assert_same_run(baseline, run_dir)
    assert {k: os.environ.get(k) for k in env_before} == env_before
    # every role, the learner included, is a plain object here
    assert roles == {
        "rollout worker": ["RolloutWorker"], "reward scorer": ["RewardWorker"],
        "reference policy": ["ReferenceWorker"], "learner": ["LearnerWorker"],
    }  # fmt: skip


def test_crashed_job_resumes_exactly(
    ray_cluster: None, ppo_run: Path, baseline: Path, tmp_path: Path
) -> None:
    class Crash(RuntimeError):
        pass

    def crash(controller: PPOController, iteration: int, phase: str) -> None:
        if (iteration, phase) == (3, "publish"):
            raise Crash("simulated job crash")

    run_dir = _fresh(ppo_run, tmp_path, "crash")
    cfg = tiny_config(rollout__num_workers=2, ppo__total_steps=3, ppo__save_every=2)
    with pytest.raises(Crash):
        ppo_stage(cfg, RunLayout(run_dir), hooks=[crash])
    assert [r["iteration"] for r in _rows(run_dir)] == [1, 2]  # iteration 3 never completed
    with pytest.raises(PPOInputError, match="--resume"):
        ppo_stage(cfg, RunLayout(run_dir), resume=False)
    summary = ppo_stage(cfg, RunLayout(run_dir), resume=True).metrics
    assert summary["iterations"] == 3 and summary["samples"] == 24
    _assert_same_run(baseline, run_dir)


def test_missing_inputs_fail_early_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PPOInputError, match="emprl sft"):
        ppo_stage(tiny_config(), RunLayout(tmp_path))


@pytest.mark.slow
def test_sigterm_stops_emprl_ppo_within_seconds_leaving_nothing_and_the_run_resumes(
    ppo_run: Path, tmp_path: Path
) -> None:
    """SIGTERM (``docker stop``, Kubernetes, systemd, ``ray job stop``) in the middle of ``emprl ppo``: the
    command stops as on Ctrl-C within 30 s, its local cluster and every process with it; ``--resume``
    continues from the last complete checkpoint and logs every iteration once (exactness of a resume:
    ``test_crashed_job_resumes_exactly``)."""
    env, marker = job_env()
    run_dir = _fresh(ppo_run, tmp_path, "sigterm")
    steps = 8
    command = [str(BIN / "emprl"), "ppo", "--run-dir", str(run_dir),
               *tiny_overrides(rollout__num_workers=2, ppo__total_steps=steps, ppo__save_every=2,
                              resources__in_process_roles=False)]  # fmt: skip
    log = tmp_path / "ppo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir)
    stopped_s = -1.0
    try:
        deadline = time.monotonic() + 600
        while not (run_dir / "ppo" / "checkpoints" / "latest").exists():  # a checkpoint, and more to do
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
        stopped_s = time.monotonic() - sent
    finally:
        left = leftovers(marker)
        kill_all(marker)
    print(f"emprl ppo stopped {stopped_s:.1f} s after SIGTERM")
    assert code != 0 and stopped_s < 30, log.read_text()[-3000:]
    assert left == [], f"processes left after SIGTERM: {left}"
    assert "SIGTERM: stopping as on Ctrl-C" in log.read_text(), log.read_text()[-3000:]
    before = _rows(run_dir)
    assert 2 <= len(before) < steps, [r["iteration"] for r in before]

    resumed = subprocess.run(
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=600, cwd=run_dir
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert leftovers(marker) == []
    after = _rows(run_dir)
    assert [r["iteration"] for r in after] == list(range(1, steps + 1))
    assert [r["samples"] for r in after] == [8 * i for i in range(1, steps + 1)]
    checkpointed = int(
        (run_dir / "ppo" / "checkpoints" / "latest").read_text().strip().removeprefix("iter_") or 0
    )
    assert checkpointed == steps
    assert after[:2] == before[:2]  # the rows up to the first checkpoint are the first process's
