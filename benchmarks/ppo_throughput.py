"""PPO throughput on Ray: time per phase, samples/s and its scaling, weight-publish latency per policy size.

    python benchmarks/ppo_throughput.py [--shapes local d256] [--workers 1 2 4] [--ranks 1 2]
        [--precision fp32 bf16] [--iterations 6] [--warmup 2] [--publish-shapes local d256 t5-small t5-base]
        [--ed ../shared/data/empatheticdialogues] [--cpus 2]

For each policy shape (``local``: the local preset's tiny T5 with its PPO settings; ``d256``: DESIGN.md's
performance shape, d_model 256, d_ff 1024, 4+4 layers, 4 heads, vocab 8000, contexts <= 200 tokens, with
the paper's PPO settings: 32 rollouts, mini-batch 8, 4 epochs, 5-30 tokens), runs the real PPO stage
(rollout workers, three reward identifiers on tiny T5 encoders, the reference policy, a DeepSpeed
learner) on ED prompts (the demo set when the ED folder is absent) with random gold levels, with 1, 2, 4
rollout workers (one learner rank) and with 1 and 2 learner ranks (one worker), sharing ``--cpus``
cores; it prints the median over the timed iterations of each phase, samples/s and its ratio to the
1-worker 1-rank run. Then it times one weight publish through each path of ``learner.weight_sync``
(object store: a real learner's gather and ``ray.put``, a rollout worker's load; collective: a bucketed
broadcast into the worker's parameters, gloo on CPU) for policies from the local shape to T5-base,
ignoring the first publish of each path (it builds the collective group). Run it on an otherwise idle
machine: the load average is printed before and after. The side-by-side comparison with the paper's
trl 0.9.6 step is ``benchmarks/ppo_vs_trl.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# first: the process defaults, before Ray or transformers load
from machine import ED, load_after, load_before

# isort: split

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from actors.cluster.session import init_ray, shutdown_ray
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

SHAPES: dict[str, list[str]] = {
    "local": [],
    "d256": [
        "model.vocab_size=8000", "model.d_model=256", "model.d_ff=1024", "model.d_kv=64", "model.num_layers=4",
        "model.num_decoder_layers=4", "model.num_heads=4", "model.max_source_len=200",
        "ppo.rollout_batch_size=32", "ppo.mini_batch_size=8", "ppo.ppo_epochs=4",
        "rollout.min_new_tokens=5", "rollout.max_new_tokens=30",
    ],
    # the paper's policy size (random weights) with its PPO settings: the shape of the GPU comparison
    "t5-base": [
        "model.vocab_size=32128", "model.d_model=768", "model.d_ff=3072", "model.d_kv=64", "model.num_layers=12",
        "model.num_decoder_layers=12", "model.num_heads=12", "model.max_source_len=200",
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
    extra: Sequence[str] = (),
    tag: str = "",
) -> list[dict[str, Any]]:
    """The PPO stage on ``folder``'s inputs for ``iterations`` iterations; its metrics rows."""
    run_dir = folder / f"run_w{workers}_{precision}{tag}"
    run_dir.mkdir()
    for sub in ("sft", "identifiers", "labeled"):
        (run_dir / sub).symlink_to(folder / sub)
    rollouts = load_config("local", overrides).ppo.rollout_batch_size
    ranks = load_config("local", [*overrides, *extra]).learner.num_ranks
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
            # the roles' CPU shares add up to 2 whatever the counts (they run one phase at a time)
            f"resources.rollout_cpus={0.8 / workers}",
            "resources.reward_cpus=0.4",
            "resources.reference_cpus=0.2",
            f"resources.learner_cpus={0.6 / ranks}",
            f"resources.learner_threads={cpus}",
            f"resources.rollout_threads={max(1, cpus // workers)}",
            # scorers, then reference, each with every core (they share the node's cores)
            "resources.overlap_evaluate=false",
            f"resources.reward_threads={cpus}",
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


PUBLISH_SHAPES: dict[str, list[str]] = {
    **{k: v for k, v in SHAPES.items() if k != "t5-base"},
    "t5-small": [
        "model.vocab_size=32128", "model.d_model=512", "model.d_ff=2048", "model.d_kv=64", "model.num_layers=6",
        "model.num_decoder_layers=6", "model.num_heads=8",
    ],
    "t5-base": [
        "model.vocab_size=32128", "model.d_model=768", "model.d_ff=3072", "model.d_kv=64", "model.num_layers=12",
        "model.num_decoder_layers=12", "model.num_heads=12",
    ],
}  # fmt: skip
"""Policy sizes of the publish-latency sweep: the PPO shapes and T5-small/base (random weights)."""


def publish_latency(
    folder: Path, overrides: list[str], workers: int, repeats: int
) -> tuple[float, dict[str, float]]:
    """``(parameters in millions, {path: median seconds})`` of one weight publish at a policy size,
    through each path the PPO loop has (:mod:`actors.ppo.weight_sync`): ``object_store`` (learner rank 0
    gathers and puts them in the object store once, every rollout worker loads the reference) and ``collective`` (a
    bucketed broadcast from learner rank 0 into the workers' parameters: gloo here, NCCL between GPUs).
    A real one-rank learner and ``workers`` rollout workers; the first publish of each path (which
    builds the collective group) is not timed."""
    from actors.cluster.group import RoleGroup, gather
    from actors.ppo.learner import LearnerWorker
    from actors.ppo.rollout import RolloutWorker
    from actors.ppo.weight_sync import CollectiveSync, ObjectStoreSync, WeightSync
    from pipeline.models import load_tokenizer

    cfg = load_config("local", overrides)
    texts = ["a short text to train a tokenizer on"] * 50
    tokenizer = build_policy_tokenizer(cfg.model, texts)
    model = build_policy(cfg.model, tokenizer)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    save_policy(model, tokenizer, folder)
    del model
    load_tokenizer(str(folder), key="publish benchmark")
    options = {"num_cpus": 0.1}
    learner = RoleGroup(
        "learner", LearnerWorker, (1, str(folder), cfg.ppo, cfg.learner, 1), count=1, options=options,
        rank_args=True, restartable=False,
    )  # fmt: skip
    rollout = RoleGroup(
        "rollout", RolloutWorker, (str(folder), cfg.rollout, 1), count=workers, options=options, restartable=False
    )  # fmt: skip
    paths: dict[str, WeightSync] = {
        "object_store": ObjectStoreSync(),
        "collective": CollectiveSync(use_gpu=False, bucket_mb=cfg.learner.weight_sync_bucket_mb, retries=0),
    }
    medians = {}
    try:
        host, port = gather(learner.submit_all("address"))[0][0]
        gather(learner.submit_all("setup", host, port, 0))
        for name, sync in paths.items():
            times = []
            for version in range(repeats + 1):
                start = time.perf_counter()
                sync.publish(learner, rollout, version)
                times.append(time.perf_counter() - start)
            medians[name] = statistics.median(times[1:])
    finally:
        learner.kill()
        rollout.kill()
    return params, medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["local", "d256"], choices=sorted(SHAPES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4], help="rollout worker counts")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2], help="learner rank counts")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first iterations")
    parser.add_argument(
        "--publish-shapes", nargs="*", default=["local", "d256", "t5-small", "t5-base"], choices=sorted(PUBLISH_SHAPES),
        help="policy sizes of the weight-publish latency sweep (none: skip it)",
    )  # fmt: skip
    parser.add_argument("--ed", type=Path, default=ED)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    load_before()
    init_ray(ResourcesConfig(num_cpus=args.cpus, object_store_memory=2_000_000_000))
    results: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    publish: dict[str, tuple[float, dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ppo_bench") as tmp:
            contexts, responses = prompts(args.ed, Path(tmp) / "cache")
            for shape in args.shapes:
                folder = Path(tmp) / shape
                build_inputs(folder, SHAPES[shape], contexts, responses)
                for precision in args.precision:
                    # rollout workers scale with learner ranks fixed at 1, and ranks with one worker
                    setups = [(w, 1) for w in args.workers] + [(1, r) for r in args.ranks if r != 1]
                    for workers, ranks in setups:
                        rows = run_one(
                            folder, SHAPES[shape], workers, precision, args.warmup + args.iterations, args.cpus,
                            extra=[f"learner.num_ranks={ranks}",
                                   f"resources.learner_threads={max(1, args.cpus // ranks)}"],
                            tag=f"r{ranks}",
                        )  # fmt: skip
                        results[(shape, precision, workers, ranks)] = rows[args.warmup :]
            for shape in args.publish_shapes:
                publish[shape] = publish_latency(Path(tmp) / f"publish_{shape}", PUBLISH_SHAPES[shape], 1, 5)
    finally:
        shutdown_ray()
    load_after()

    header = f"{'shape':<6} {'prec':>5} {'workers':>7} {'ranks':>5} " + " ".join(f"{p:>10}" for p in PHASES)
    print("\nmedian seconds per phase (evaluate = score || reference || values, run concurrently)")
    print(header + f" {'samples/s':>10} {'vs 1/1':>7}")
    for (shape, precision, workers, ranks), rows in results.items():
        phases = " ".join(f"{median(rows, f'time/{p}'):>10.3f}" for p in PHASES)
        base = results.get((shape, precision, 1, 1))
        speed = median(rows, "perf/samples_per_s")
        ratio = speed / median(base, "perf/samples_per_s") if base else float("nan")
        print(f"{shape:<6} {precision:>5} {workers:>7} {ranks:>5} {phases} {speed:>10.2f} {ratio:>6.2f}x")
    if publish:
        print(
            "\nweight publish latency per policy size, learner rank 0 to one rollout worker (milliseconds)\n"
            "object_store: gather + ray.put once + load; collective: bucketed gloo broadcast into the parameters"
        )
        print(f"{'shape':<9} {'parameters':>11} {'object_store':>13} {'collective':>11}")
        for shape, (params, seconds) in publish.items():
            cells = " ".join(
                f"{1000 * seconds[k]:>{w}.1f}" for k, w in (("object_store", 13), ("collective", 11))
            )
            print(f"{shape:<9} {params:>9.1f} M {cells}")
    print("\nside by side with trl 0.9.6 on the same shapes: python benchmarks/ppo_vs_trl.py")


if __name__ == "__main__":
    main()
