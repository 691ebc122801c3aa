"""GPU checks (skipped without CUDA) of the weight-sync group and the bf16 frozen models, without Ray:
an NCCL broadcast between two GPUs (two processes), gloo staging CUDA weights through host memory (two
members on one GPU, which NCCL refuses), and the reference policy and identifiers in bf16 on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from tiny import IDENTIFIERS as IDENT
from tiny import POLICY as SHAPE
from tiny import SHORT_DIALOGUE as TEXTS
from tiny import broadcast_in_threads, save_frozen_models

from actors.ppo.reference import ReferenceWorker
from actors.ppo.reward import RewardWorker
from actors.ppo.weight_sync import WeightGroup, checksum, device_id, layout, sync_tensors
from pipeline.config import MECHANISMS, RewardConfig
from pipeline.generation import encode_prompts
from pipeline.models import build_policy, train_tokenizer

BUCKET = 16 * 1024  # several buckets for the tiny policy


def _policy(seed: int) -> torch.nn.Module:
    tokenizer = train_tokenizer(TEXTS * 10, 400)
    torch.manual_seed(seed)
    return build_policy(SHAPE, tokenizer)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs (it refuses two ranks on one)")
def test_nccl_broadcast_between_two_gpus(tmp_path: Path) -> None:
    import socket

    # rank 0 hosts the store on a port fixed in advance (the processes cannot exchange it first)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_nccl_member_fixed_port, args=(r, port, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    (sum0, dev0), (sum1, dev1) = (tuple((tmp_path / f"rank{r}.txt").read_text().split()) for r in (0, 1))
    assert dev0 != dev1 and sum0 == sum1
    assert sum0 != checksum(_policy(seed=1))  # rank 1 really changed


def _nccl_member_fixed_port(rank: int, port: int, out: str) -> None:
    """One process of the NCCL test, on GPU ``rank`` alone: rank 0 (hosting the store on ``port``) sends
    its policy, rank 1 receives into its own."""
    import datetime as dt

    from torch._C._distributed_c10d import TCPStore

    torch.cuda.set_device(rank)
    model = _policy(seed=rank).to("cuda")
    store = TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=dt.timedelta(seconds=120))
    group = WeightGroup.join(
        host="127.0.0.1", port=port, rank=rank, world_size=2, backend="nccl", own_host="127.0.0.1",
        store=store, timeout_s=120,
    )  # fmt: skip
    assert group.broadcast(sync_tensors(model), bucket_bytes=BUCKET) > 0
    Path(out, f"rank{rank}.txt").write_text(f"{checksum(model)} {device_id(torch.device('cuda'))}")
    group.close()


def test_gloo_stages_cuda_weights_through_host_memory_for_members_on_one_gpu() -> None:
    sender, receiver = _policy(seed=0).to("cuda"), _policy(seed=1).to("cuda")
    assert layout(sender) == layout(receiver) and checksum(sender) != checksum(receiver)
    assert device_id(torch.device("cuda")) is not None
    live = [t.data_ptr() for t in sync_tensors(receiver)]
    broadcast_in_threads(sender, receiver, bucket_bytes=BUCKET)
    torch.cuda.synchronize()
    assert checksum(receiver) == checksum(sender)
    assert [t.data_ptr() for t in sync_tensors(receiver)] == live  # in place, still on the GPU
    assert all(t.is_cuda for t in sync_tensors(receiver))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_frozen_models(tmp_path_factory.mktemp("frozen"), train_tokenizer(TEXTS * 10, 400))


def test_reference_policy_and_identifiers_in_bf16_on_cuda(folders: tuple[Path, Path]) -> None:
    policy_dir, identifiers_dir = folders
    cpu = ReferenceWorker(policy_dir)
    gpu = ReferenceWorker(policy_dir, device="cuda", precision="bf16")
    assert {(p.dtype, p.device.type) for p in gpu.model.parameters()} == {(torch.bfloat16, "cuda")}
    tokenizer = train_tokenizer(TEXTS * 10, 400)
    prompts = encode_prompts(
        tokenizer, TEXTS[:3], max_source_len=16, index=[0, 1, 2],
        gold_levels={m: np.zeros(3, dtype=np.int64) for m in MECHANISMS}, seed=0,
    )  # fmt: skip
    responses = prompts.prompt_ids[:, :6]
    exact = cpu.logprobs(prompts.prompt_ids, prompts.prompt_mask, responses)
    half = gpu.logprobs(prompts.prompt_ids, prompts.prompt_mask, responses)
    assert half.dtype == torch.float32 and half.device.type == "cpu"
    torch.testing.assert_close(half, exact, atol=0.1, rtol=0.05)

    gold = {"ER": np.array([0, 2, 1]), "IP": np.array([1, 1, 0]), "EX": np.array([2, 0, 0])}
    fp32 = RewardWorker(identifiers_dir, IDENT, RewardConfig()).score(TEXTS[:3], TEXTS[1:4], gold)
    scorer = RewardWorker(identifiers_dir, IDENT, RewardConfig(), device="cuda", precision="bf16")
    dtypes = {(p.dtype, p.device.type) for m in scorer.scorer.identifiers.values() for p in m.parameters()}
    assert dtypes == {(torch.bfloat16, "cuda")}
    bf16 = scorer.score(TEXTS[:3], TEXTS[1:4], gold)
    assert bf16.scores.dtype == torch.float32
    torch.testing.assert_close(bf16.scores, fp32.scores, atol=0.02, rtol=0.05)
