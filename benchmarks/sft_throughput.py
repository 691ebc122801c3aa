"""SFT training throughput (tokens/s) with 1 and 2 Ray Train workers, ZeRO-2 vs ZeRO-3, side by side.

    python benchmarks/sft_throughput.py [--shapes local d256] [--ed ../shared/data/empatheticdialogues]
        [--warmup 3] [--steps 8] [--batch 8] [--cpus 2]

For each policy shape (``local``: the local preset's tiny T5; ``d256``: d_model 256, d_ff 1024, 4+4
layers, 4 heads, vocab 8000, source <= 200 / target <= 50 tokens, DESIGN.md's performance shape) and
each (workers, ZeRO stage), runs the SFT engine inside a Ray Train ``TorchTrainer`` on real ED pairs
(the demo set when absent) with length-grouped batches of the paper's global batch 8, and prints
the median tokens/s (non-padding source + target tokens) of the timed steps after warm-up. One
worker gets all ``--cpus`` threads, two workers split them. The load average is printed before and
after: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# first: the process defaults, before Ray or transformers load
from machine import ED, load_after, load_before

# isort: split

import ray  # noqa: TID251
import ray.train  # noqa: TID251
import ray.train.torch  # noqa: TID251
import torch
import torch.distributed as dist
from ray.train import Checkpoint, RunConfig, ScalingConfig  # noqa: TID251

from actors.cluster.session import init_ray, worker_runtime_env
from actors.training.engines import make_engine
from actors.training.trainer import OwnedTorchTrainer
from pipeline.config import DataConfig, EngineConfig, ModelConfig, ResourcesConfig, SFTConfig, load_config
from pipeline.data import parse_ed_split, prepare_datasets
from pipeline.models import build_policy, load_tokenizer, train_tokenizer
from pipeline.training.sft import (
    Seq2SeqExamples,
    collate,
    data_parallel_loss,
    encode_examples,
    length_grouped_batches,
    token_nll,
)

D256 = ModelConfig(
    vocab_size=8000, d_model=256, d_ff=1024, d_kv=64, num_layers=4, num_decoder_layers=4, num_heads=4,
    max_source_len=200, max_target_len=50,
)  # fmt: skip


def bench_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: warm-up steps, then timed steps; reports per-step global tokens and seconds."""
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    tokenizer = load_tokenizer(config["tokenizer"])
    torch.manual_seed(0)
    model = build_policy(config["model"], tokenizer).policy.to(device)
    sft: SFTConfig = config["sft"]
    examples: Seq2SeqExamples = config["examples"]
    steps = config["warmup"] + config["steps"]
    engine = make_engine(
        sft.engine,
        sft.optimizer,
        model,
        total_steps=steps,
        micro_batch=sft.batch_size // world,
        world_size=world,
        partition_aware=True,
    )
    batches = length_grouped_batches(
        examples.source_lengths,
        examples.target_lengths,
        sft.batch_size,
        seed=0,
        epoch=0,
        rank=rank,
        world_size=world,
    )
    pad = tokenizer.pad_token_id
    times, tokens = [], []
    engine.model.train()
    for step in range(steps):
        t0 = time.perf_counter()
        batch = collate(examples, batches[step], pad_id=pad, decoder_start_id=pad).to(device)
        counts = torch.tensor([batch.target_tokens, batch.source_tokens], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(counts)
        out = engine.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
            use_cache=False,
        )
        nll, _ = token_nll(out.logits, batch.labels)
        engine.step(data_parallel_loss(nll, global_tokens=float(counts[0]), world_size=world))
        if step >= config["warmup"]:
            times.append(time.perf_counter() - t0)
            tokens.append(float(counts.sum()))
    # Train V2 keeps the metrics of checkpointed reports: rank 0 attaches its timings as one
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            (Path(tmp) / "timings.json").write_text(json.dumps({"times": times, "tokens": tokens}))
        ray.train.report({"rank": rank}, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)


def run_case(
    shape: str,
    model: ModelConfig,
    examples: Seq2SeqExamples,
    tokenizer_dir: str,
    args: argparse.Namespace,
    workers: int,
    zero: int,
    storage: str,
) -> dict[str, float]:
    threads = max(args.cpus // workers, 1)
    res = ResourcesConfig(trainer_cpus=float(threads), torch_threads=threads)
    sft = SFTConfig(
        batch_size=args.batch, num_workers=workers, engine=EngineConfig(kind="deepspeed", zero_stage=zero)
    )
    trainer = OwnedTorchTrainer(  # its controller ends with fit
        bench_loop,
        train_loop_config={
            "threads": threads,
            "tokenizer": tokenizer_dir,
            "model": model,
            "sft": sft,
            "examples": examples,
            "warmup": args.warmup,
            "steps": args.steps,
        },
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": float(threads)}),
        run_config=RunConfig(
            name=f"{shape}-w{workers}-z{zero}",
            storage_path=storage,
            worker_runtime_env=worker_runtime_env(res),  # type: ignore[call-arg]
        ),
    )
    result = trainer.fit()
    assert result.checkpoint is not None, result.error
    with result.checkpoint.as_directory() as folder:
        metrics = json.loads((Path(folder) / "timings.json").read_text())
    rates = [n / t for n, t in zip(metrics["tokens"], metrics["times"], strict=True)]
    return {
        "threads": threads,
        "tokens_per_s": statistics.median(rates),
        "step_s": statistics.median(metrics["times"]),
        "tokens_per_step": statistics.mean(metrics["tokens"]),
    }


def texts(ed: Path) -> tuple[list[str], list[str], str]:
    if (ed / "train.csv").is_file():
        examples = parse_ed_split(ed / "train.csv", DataConfig()).examples
        return [e.context for e in examples], [e.response for e in examples], f"real ED train ({ed})"
    data = prepare_datasets(DataConfig())
    return list(data.ed["train"]["context"]), list(data.ed["train"]["response"]), "demo ED train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["local", "d256"], choices=["local", "d256"])
    parser.add_argument("--ed", type=Path, default=ED)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=["1:2", "2:2", "1:3", "2:3"], help="WORKERS:ZERO")
    args = parser.parse_args()

    contexts, responses, source = texts(args.ed)
    shapes = {"local": load_config("local").model, "d256": D256}
    load_before()
    print(
        f"data: {source}; global batch {args.batch}; median of {args.steps} steps after {args.warmup} warm-up"
    )
    init_ray(ResourcesConfig(num_cpus=args.cpus, object_store_memory=300_000_000))
    rows = []
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp:
        for shape in args.shapes:
            model = shapes[shape]
            tokenizer = train_tokenizer([*contexts[:20000], *responses[:20000]], model.vocab_size)
            tokenizer_dir = str(Path(tmp) / f"tok-{shape}")
            tokenizer.save_pretrained(tokenizer_dir)
            n = args.batch * (args.warmup + args.steps) * 50  # enough for full length-grouped batches
            examples = encode_examples(
                tokenizer,
                contexts[:n],
                responses[:n],
                max_source_len=model.max_source_len,
                max_target_len=model.max_target_len,
            )
            for case in args.cases:
                workers, zero = (int(x) for x in case.split(":"))
                r = run_case(shape, model, examples, tokenizer_dir, args, workers, zero, tmp)
                rows.append((shape, workers, zero, r))
                print(
                    f"  {shape} workers={workers} ZeRO-{zero}: {r['tokens_per_s']:.0f} tokens/s", flush=True
                )
    print()
    print(
        f"{'shape':6} {'workers':>7} {'threads/w':>9} {'ZeRO':>4} {'tokens/s':>9} {'s/step':>7} {'tokens/step':>11}"
    )
    for shape, workers, zero, r in rows:
        print(
            f"{shape:6} {workers:7d} {r['threads']:9d} {zero:4d} {r['tokens_per_s']:9.0f} "
            f"{r['step_s']:7.3f} {r['tokens_per_step']:11.0f}"
        )
    load_after()
    ray.shutdown()


if __name__ == "__main__":
    main()
