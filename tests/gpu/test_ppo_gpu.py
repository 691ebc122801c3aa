"""GPU checks (skipped without CUDA): one PPO iteration with every role on one GPU (fractional
shares), fp32 and bf16 autocast, on a local Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[None]:
    import ray

    import jobs  # noqa: F401  (loopback-only Ray)
    from actors.cluster.session import init_ray
    from pipeline.config import ResourcesConfig

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tempfile.mkdtemp(prefix="rayg", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    init_ray(ResourcesConfig(num_cpus=4, use_gpu=True, object_store_memory=500_000_000))
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_ppo_iteration_on_one_gpu(gpu_cluster: None, tmp_path: Path, precision: str) -> None:
    from ppo_inputs import build_run_dir, tiny_config

    from jobs.stages import ppo_stage
    from pipeline.layout import RunLayout

    run_dir = build_run_dir(tmp_path / "run", tmp_path / "cache")
    cfg = tiny_config(
        resources__use_gpu="true", resources__role_gpus=0.25, learner__engine__precision=precision,
        rollout__precision=precision, ppo__total_steps=2,
    )  # fmt: skip
    summary = ppo_stage(cfg, RunLayout(run_dir)).metrics
    assert summary["iterations"] == 2 and summary["version"] == 2
    rows = [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    gap = rows[0]["rollout/sampler_logprob_gap"]
    assert gap < (1e-3 if precision == "fp32" else 0.5)
    # fp32: old log-probs from the rollout worker (auto); bf16: the learner recomputes them. Either
    # way the learner's first forward pass reproduces them (ratio 1 up to rounding)
    assert rows[0]["rollout/old_logprobs_from_rollout"] == (1.0 if precision == "fp32" else 0.0)
    assert rows[0]["ppo/first_ratio_gap"] < (1e-3 if precision == "fp32" else 0.05)


def _preset_overrides(preset: str) -> dict[str, object]:
    """The GPU-facing settings of ``preset`` (placement, precisions, weight sync) as tiny_config overrides."""
    from pipeline.config import load_config

    cfg = load_config(preset)
    res, le = cfg.resources, cfg.learner
    return {
        "resources__use_gpu": "true", "resources__num_gpus": res.num_gpus,
        "resources__rollout_gpus": res.rollout_gpus, "resources__reward_gpus": res.reward_gpus,
        "resources__reference_gpus": res.reference_gpus, "resources__learner_gpus": res.learner_gpus,
        "resources__frozen_precision": res.frozen_precision, "rollout__precision": cfg.rollout.precision,
        "rollout__num_workers": cfg.rollout.num_workers, "reward__num_scorers": cfg.reward.num_scorers,
        "learner__num_ranks": le.num_ranks, "learner__weight_sync": le.weight_sync,
        "learner__engine__zero_stage": le.engine.zero_stage, "learner__engine__precision": le.engine.precision,
    }  # fmt: skip


def _weight_checks(into: list[tuple[bool, str | None]]) -> object:
    def check(controller: object, iteration: int, phase: str) -> None:
        if phase == "update":
            learner, workers = controller.weight_checksums()  # type: ignore[attr-defined]
            into.append((all(w == learner for w in workers), controller.sync.backend))  # type: ignore[attr-defined]

    return check


def test_one_gpu_preset_end_to_end_on_tiny_shapes(gpu_cluster: None, tmp_path: Path) -> None:
    """configs/paper_1gpu.yaml's placement, precisions and weight sync on the tiny inputs: every role on
    the one GPU by fraction, bf16 autocast, bf16 reference and identifiers, collective sync (gloo: the
    learner and the rollout worker share the GPU, which NCCL refuses)."""
    from ppo_inputs import build_run_dir, tiny_config

    from jobs.stages import ppo_stage
    from pipeline.layout import RunLayout

    run_dir = build_run_dir(tmp_path / "run", tmp_path / "cache")
    cfg = tiny_config(**_preset_overrides("paper_1gpu"), ppo__total_steps=2)
    assert cfg.weight_sync == "collective" and cfg.resources.frozen_weights == "bf16"
    checks: list[tuple[bool, str | None]] = []
    summary = ppo_stage(cfg, RunLayout(run_dir), hooks=[_weight_checks(checks)]).metrics
    assert summary["iterations"] == 2 and summary["version"] == 2
    assert checks == [(True, "gloo"), (True, "gloo")]
    rows = [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["time/publish"] > 0 for row in rows)
    assert rows[0]["ppo/first_ratio_gap"] < 0.05  # bf16 autocast: the learner recomputes old log-probs
    assert all(np.isfinite(row["rollout/kl"]) for row in rows)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two learner ranks over NCCL need two GPUs")
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_learner_ranks_over_nccl(gpu_cluster: None, tmp_path: Path, zero_stage: int) -> None:
    """Two learner ranks (a GPU each, > 0.5 share) over NCCL with ZeRO-2/3; the other roles share the GPUs.
    Learner rank 0 broadcasts beside DeepSpeed's group (under ZeRO-3 both ranks gather for it)."""
    from ppo_inputs import build_run_dir, tiny_config

    from jobs.stages import ppo_stage
    from pipeline.layout import RunLayout

    run_dir = build_run_dir(tmp_path / "run", tmp_path / "cache")
    cfg = tiny_config(
        resources__use_gpu="true", resources__learner_gpus=0.6, resources__role_gpus=0.1,
        learner__num_ranks=2, learner__engine__zero_stage=zero_stage, learner__weight_sync="collective",
        ppo__total_steps=2,
    )  # fmt: skip
    checks: list[tuple[bool, str | None]] = []
    summary = ppo_stage(cfg, RunLayout(run_dir), hooks=[_weight_checks(checks)]).metrics
    assert summary["iterations"] == 2 and summary["version"] == 2
    # NCCL when the rollout worker landed on the GPU learner rank 0 does not use, else gloo
    assert [ok for ok, _ in checks] == [True, True] and {b for _, b in checks} <= {"nccl", "gloo"}
