"""Object-storage figures on loopback: upload and download of the SFT policy and of a PPO (DeepSpeed)
checkpoint per MB, and the time from the learner finishing a checkpoint to its marker being visible.

A real S3 protocol server (moto) on 127.0.0.1; the d256 T5 policy of the performance figures (random
weights, vocabulary 8000) and a DeepSpeed ZeRO-1 checkpoint of it with its AdamW state. Each transfer
is repeated ``--repeats`` times; medians are printed. "Another node" is another scratch root.

    python benchmarks/storage_transfer.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import machine
import torch

from pipeline import storage
from pipeline.config import EngineConfig, ModelConfig, OptimizerConfig
from pipeline.models import build_policy, build_policy_tokenizer, save_policy
from pipeline.storage import remote


def s3_server() -> str:
    """Start moto on loopback, point this process at it, create a bucket; the bucket's URI."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
        Bucket="emprl-bench"
    )
    remote._filesystem.cache_clear()
    return "s3://emprl-bench"


def on_node(root: Path, name: str) -> None:
    """Act as node ``name``: its own scratch root (its own disk)."""
    os.environ["EMPRL_SCRATCH"] = str(root / name)


def megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def transfer(source: Path, uri: str, root: Path, repeats: int) -> tuple[float, list[float], list[float]]:
    """(MB, upload seconds, download seconds) of folder ``source`` published at ``uri`` ``repeats`` times."""
    ups, downs = [], []
    for i in range(repeats):
        on_node(root, f"writer-{i}")
        mirror = storage.local_path(f"{uri}/{i}")
        shutil.copytree(source, mirror)
        started = time.perf_counter()
        storage.publish(mirror)
        ups.append(time.perf_counter() - started)
        on_node(root, f"reader-{i}")
        started = time.perf_counter()
        storage.fetch(storage.local_path(f"{uri}/{i}"))
        downs.append(time.perf_counter() - started)
    return megabytes(source), ups, downs


def checkpoint_to_marker(engine: object, uri: str, root: Path, repeats: int) -> tuple[float, list[float]]:
    """(MB, seconds) from ``engine.save`` returning to the marker being visible to another node."""
    waits, size = [], 0.0
    for i in range(repeats):
        on_node(root, "learner")
        folder = storage.local_path(f"{uri}/iter_{i:06d}")
        engine.save(folder, rank=0)  # type: ignore[attr-defined]
        finished = time.perf_counter()
        storage.upload(folder)
        storage.mark_complete(folder)
        on_node(root, f"resumer-{i}")
        while not storage.exists(storage.local_path(f"{uri}/iter_{i:06d}")):
            time.sleep(0.01)
        waits.append(time.perf_counter() - finished)
        size = megabytes(folder)
    return size, waits


def line(what: str, mb: float, seconds: list[float]) -> str:
    median = statistics.median(seconds)
    return f"{what:<34} {mb:8.1f} MB  median {median:6.3f} s  {1000 * median / mb:6.2f} ms/MB  {mb / median:7.1f} MB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    machine.load_before(os.cpu_count())
    bucket = s3_server()
    root = Path(tempfile.mkdtemp(prefix="emprl-storage-bench-"))
    try:
        cfg = ModelConfig()
        tokenizer = build_policy_tokenizer(cfg, ["I am sorry to hear that.", "That sounds wonderful!"] * 50)
        torch.manual_seed(0)
        policy = build_policy(cfg, tokenizer)
        local = save_policy(policy, tokenizer, root / "policy")

        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
        )
        from actors.training.engines import make_engine

        engine = make_engine(
            EngineConfig(kind="deepspeed", zero_stage=1), OptimizerConfig(), policy, total_steps=10, micro_batch=4,
            world_size=1,
        )  # fmt: skip
        loss = sum(p.float().sum() for p in engine.module.parameters()) * 1e-9
        engine.step(loss)  # the AdamW state exists, as in a PPO checkpoint

        mb, ups, downs = transfer(local, f"{bucket}/sft/policy", root, args.repeats)
        ckpt_mb, waits = checkpoint_to_marker(engine, f"{bucket}/ppo/checkpoints", root, args.repeats)
        on_node(root, "learner")
        ckpt = storage.local_path(f"{bucket}/ppo/checkpoints/iter_000000")
        _, ckpt_ups, ckpt_downs = transfer(ckpt, f"{bucket}/ppo/copies", root, args.repeats)

        print(f"\nS3 protocol server (moto) on 127.0.0.1, {args.repeats} repeats, medians")
        print(line("SFT policy upload (publish)", mb, ups))
        print(line("SFT policy download (fetch)", mb, downs))
        print(line("PPO checkpoint upload (publish)", ckpt_mb, ckpt_ups))
        print(line("PPO checkpoint download (fetch)", ckpt_mb, ckpt_downs))
        print(line("checkpoint saved -> marker visible", ckpt_mb, waits))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        machine.load_after()


if __name__ == "__main__":
    main()
