"""Gradient clipping inside the fused AdamW step: the same update as clipping the gradients first,
for a plain optimizer and for the DeepSpeed engine without ZeRO (in a fresh process: DeepSpeed
initialises a process group), which also runs DeepSpeed on its model's device whatever
``DS_ACCELERATOR`` it inherited."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from actors.training.engines import clip_in_optimizer

pytestmark = pytest.mark.unit


def _model_and_grads(seed: int) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    grads = [torch.randn_like(p) * 3 for p in model.parameters()]
    return model, grads


@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clipped", "below-the-bound"])
def test_clipping_in_the_fused_step_equals_clipping_the_gradients_first(max_norm: float) -> None:
    ours, grads = _model_and_grads(0)
    ref, _ = _model_and_grads(0)
    # eps=1: Adam's first step then depends on the gradient's size, not only on its sign
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=0.1, eps=1.0, fused=True)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=0.1, eps=1.0, fused=True)
    for step in range(3):
        scale = 1.0 + step  # a different norm each step
        for p, q, g in zip(ours.parameters(), ref.parameters(), grads, strict=True):
            p.grad, q.grad = g * scale, g * scale
        norm = clip_in_optimizer(opt_ours, max_norm)
        opt_ours.step()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
        opt_ref.step()
        assert norm == pytest.approx(float(ref_norm), rel=1e-6)
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    start = _model_and_grads(0)[0].parameters()
    assert all(not torch.equal(p, q) for p, q in zip(ours.parameters(), start, strict=True))


def test_an_optimizer_without_gradients_is_left_alone() -> None:
    model, _ = _model_and_grads(0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    assert clip_in_optimizer(opt, 1.0) == 0.0
    assert not hasattr(opt, "grad_scale")


DEEPSPEED_SCRIPT = textwrap.dedent(
    """
    import os, socket
    import torch
    from torch import nn
    import deepspeed
    from actors.training.engines import DeepSpeedEngine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    engine = DeepSpeedEngine(
        model(), lr=0.05, weight_decay=0.0, max_grad_norm=0.3, lr_lambda=lambda step: 1.0,
        micro_batch=8, world_size=1, zero_stage=0,
    )
    assert engine._clip_in_optimizer
    from deepspeed.accelerator import get_accelerator
    assert get_accelerator().device_name() == "cpu"
    assert engine.engine.gradient_clipping() == 0.0
    ref = model()
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.0, fused=True)
    torch.manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(8, 16), torch.randn(8, 4)
        norm = engine.step(((engine.model(x) - y) ** 2).mean() * 50)
        opt.zero_grad(set_to_none=True)
        (((ref(x) - y) ** 2).mean() * 50).backward()
        ref_norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.3))
        opt.step()
        assert ref_norm > 0.3, ref_norm  # the bound is active
        assert abs(norm - ref_norm) <= 1e-5 * ref_norm, (norm, ref_norm)
    for p, q in zip(engine.module.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    print("ok")
    """
)


def test_deepspeed_without_zero_clips_in_the_fused_step_like_clip_grad_norm() -> None:
    # DS_ACCELERATOR=cuda as a worker would inherit it from another machine's driver: the engine
    # must still run DeepSpeed on its model's device (use_deepspeed_on), here the CPU
    env = {**os.environ, "DS_ACCELERATOR": "cuda"}
    result = subprocess.run(
        [sys.executable, "-c", DEEPSPEED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


SHM_SCRIPT = textwrap.dedent(
    """
    import os, socket
    import torch
    from actors.training.engines import use_deepspeed_on
    use_deepspeed_on(torch.device("cpu"))  # what every role does before it joins a process group
    import deepspeed
    import deepspeed.comm as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    tensor = torch.ones(3)
    dist.all_reduce(tensor)  # through gloo
    assert tensor.tolist() == [1.0, 1.0, 1.0]
    assert dist.comm.cdb.shm_comm_op is None
    print("ok")
    """
)


def test_deepspeed_on_cpu_reduces_through_gloo_without_building_its_shared_memory_extension(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    result = subprocess.run(
        [sys.executable, "-c", SHM_SCRIPT], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok") and "built successfully" not in result.stdout
    assert not (tmp_path / "extensions").exists()  # nothing was compiled
