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

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[None]:
    import ray

    import jobs  # noqa: F401  (loopback-only Ray)
    from actors.cluster import init_ray
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
