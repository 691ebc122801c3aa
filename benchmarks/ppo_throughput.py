"""PPO iteration throughput on Ray: time per phase, samples/s, weight-publish latency, 1 vs 2 rollout workers.

    python benchmarks/ppo_throughput.py [--shapes local d256] [--workers 1 2] [--iterations 6] [--warmup 2]
        [--ed ../shared/data/empatheticdialogues] [--cpus 2]

For each policy shape (``local``: the local preset's tiny T5 with its PPO settings; ``d256``: DESIGN.md's
performance shape, d_model 256, d_ff 1024, 4+4 layers, 4 heads, vocab 8000, contexts <= 200 tokens, with
the paper's PPO settings: 32 rollouts, mini-batch 8, 4 epochs, 5-30 tokens) and each rollout worker
count, runs the real PPO stage (rollout workers, three reward identifiers on tiny T5 encoders, the
reference policy and a one-rank DeepSpeed learner on all ``--cpus`` threads) on ED prompts (the demo
set when the ED folder is absent) with random gold levels, and prints the median over the timed
iterations of each phase, samples/s and the publish latency, plus the trl 0.9.6 reference figure
(6.8 samples/s for d256 on this 2-core CPU). Run it on an otherwise idle machine: the load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import jobs  # noqa: F401  (first: loopback-only Ray, quiet libraries, CPU DeepSpeed)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from actors.cluster import init_ray, shutdown_ray
from jobs.stages import ppo_stage
from pipeline.config import MECHANISMS, DataConfig, IdentifiersConfig, ResourcesConfig, load_config
from pipeline.data import parse_ed_split, prepare_datasets
from pipeline.layout import RunLayout
from pipeline.models import (
    build_identifier,
    build_identifier_tokenizer,
    build_policy,
    build_policy_tokenizer,
    save_identifier,
    save_policy,
)

TRL_D256_SAMPLES_PER_S = 6.8
"""DESIGN.md: trl 0.9.6 PPOTrainer, d256 shape, paper settings, idle 2-core CPU (4.7 s per 32-sample step)."""

SHAPES: dict[str, list[str]] = {
    "local": [],
    "d256": [
        "model.vocab_size=8000", "model.d_model=256", "model.d_ff=1024", "model.d_kv=64", "model.num_layers=4",
        "model.num_decoder_layers=4", "model.num_heads=4", "model.max_source_len=200",
        "ppo.rollout_batch_size=32", "ppo.mini_batch_size=8", "ppo.ppo_epochs=4",
        "rollout.min_new_tokens=5", "rollout.max_new_tokens=30",
    ],
}  # fmt: skip
PHASES = (
    "generate",
    "evaluate",
    "score",
    "reference",
    "values",
    "advantages",
    "update",
    "publish",
    "iteration",
)
TINY_IDENTIFIER = IdentifiersConfig(d_model=64, d_ff=256, num_layers=2, num_heads=4, vocab_size=2000)


def prompts(ed: Path | None, cache: Path) -> tuple[list[str], list[str]]:
    """ED train (contexts, responses): the real split when ``ed`` exists, else the demo set."""
    if ed is not None and (ed / "train.csv").is_file():
        examples = parse_ed_split(ed / "train.csv", DataConfig()).examples[:4000]
        return [e.context for e in examples], [e.response for e in examples]
    demo = prepare_datasets(DataConfig(cache_dir=str(cache)))
    return list(demo.ed["train"]["context"]), list(demo.ed["train"]["response"])


def build_inputs(folder: Path, overrides: list[str], contexts: list[str], responses: list[str]) -> None:
    """Random-init policy of the shape, tiny random identifiers, prompts with random gold levels."""
    cfg = load_config("local", overrides)
    tokenizer = build_policy_tokenizer(cfg.model, contexts + responses)
    torch.manual_seed(0)
    save_policy(build_policy(cfg.model, tokenizer), tokenizer, folder / "sft" / "policy")
    id_tokenizer = build_identifier_tokenizer(TINY_IDENTIFIER, contexts)
    for i, m in enumerate(MECHANISMS):
        torch.manual_seed(i)
        save_identifier(
            build_identifier(TINY_IDENTIFIER, id_tokenizer), id_tokenizer, folder / "identifiers" / m
        )
    rng = np.random.default_rng(0)
    columns: dict[str, Any] = {"context": contexts}
    columns.update({f"{m.lower()}_level": rng.integers(0, 3, len(contexts)) for m in MECHANISMS})
    (folder / "labeled").mkdir(parents=True)
    pq.write_table(pa.table(columns), folder / "labeled" / "train.parquet")


def run_one(
    folder: Path,
    overrides: list[str],
    workers: int,
    precision: str,
    iterations: int,
    cpus: int,
    *,
    extra: list[str] = (),  # type: ignore[assignment]
) -> list[dict[str, Any]]:
    """The PPO stage on ``folder``'s inputs for ``iterations`` iterations; its metrics rows."""
    run_dir = folder / f"run_w{workers}_{precision}"
    run_dir.mkdir()
    for sub in ("sft", "identifiers", "labeled"):
        (run_dir / sub).symlink_to(folder / sub)
    rollouts = load_config("local", overrides).ppo.rollout_batch_size
    cfg = load_config(
        "local",
        [
            *overrides,
            f"rollout.num_workers={workers}",
            # one generation chunk per worker
            f"rollout.batch_size={-(-rollouts // workers)}",
            f"ppo.total_steps={iterations}",
            f"ppo.save_every={iterations}",
            "identifiers.max_context_len=96",
            "identifiers.max_response_len=48",
            "resources.rollout_cpus=0.4",
            "resources.reward_cpus=0.4",
            "resources.reference_cpus=0.2",
            "resources.learner_cpus=0.4",
            f"resources.learner_threads={cpus}",
            f"resources.rollout_threads={max(1, cpus // workers)}",
            f"resources.reference_threads={cpus}",
            f"learner.engine.precision={precision}",
            f"rollout.precision={precision}",
            *extra,
        ],
    )
    layout = RunLayout(run_dir)
    ppo_stage(cfg, layout)
    rows = [json.loads(line) for line in layout.ppo.log.read_text().splitlines()]
    return rows


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["local", "d256"], choices=sorted(SHAPES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first iterations")
    parser.add_argument(
        "--ed",
        type=Path,
        default=Path(os.environ.get("EMPRL_SHARED_DATA", "../shared/data")) / "empatheticdialogues",
    )
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()}")
    init_ray(ResourcesConfig(num_cpus=args.cpus, object_store_memory=500_000_000))
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ppo_bench") as tmp:
            contexts, responses = prompts(args.ed, Path(tmp) / "cache")
            for shape in args.shapes:
                folder = Path(tmp) / shape
                build_inputs(folder, SHAPES[shape], contexts, responses)
                for precision in args.precision:
                    for workers in args.workers:
                        iterations = args.warmup + args.iterations
                        rows = run_one(folder, SHAPES[shape], workers, precision, iterations, args.cpus)
                        results[(shape, workers, precision)] = rows[args.warmup :]
    finally:
        shutdown_ray()
    print(f"load average after: {os.getloadavg()}")

    header = f"{'shape':<6} {'learner':>7} {'workers':>7} " + " ".join(f"{p:>10}" for p in PHASES)
    print("\nmedian seconds per phase (evaluate = score || reference || values, run concurrently)")
    print(header + f" {'samples/s':>10}")
    for (shape, workers, precision), rows in results.items():
        phases = " ".join(f"{median(rows, f'time/{p}'):>10.3f}" for p in PHASES)
        print(f"{shape:<6} {precision:>7} {workers:>7} {phases} {median(rows, 'perf/samples_per_s'):>10.2f}")
    print(
        "\nweight publish latency (learner gather + ray.put once + load on every rollout worker), median ms"
    )
    for (shape, workers, precision), rows in results.items():
        print(f"{shape:<6} {precision:>5} {workers} worker(s): {1000 * median(rows, 'time/publish'):.1f}")
    print()
    for shape in args.shapes:
        for precision in args.precision:
            one, two = results.get((shape, 1, precision)), results.get((shape, 2, precision))
            if one and two:
                ratio = median(two, "perf/samples_per_s") / median(one, "perf/samples_per_s")
                print(f"{shape} {precision}: samples/s with 2 rollout workers / 1 = {ratio:.2f}")
    for (shape, workers, precision), rows in results.items():
        if shape == "d256":
            ours = median(rows, "perf/samples_per_s")
            print(
                f"d256 {precision}, {workers} rollout worker(s): {ours:.2f} samples/s vs trl 0.9.6 fp32 "
                f"{TRL_D256_SAMPLES_PER_S} -> {ours / TRL_D256_SAMPLES_PER_S:.2f}x (target >= 1.5x)"
            )


if __name__ == "__main__":
    main()
