"""What the PPO roles' CPU settings buy, one at a time: the attention kernel and glibc's malloc settings.

    python benchmarks/cpu_settings.py [--shape d256] [--repeats 5] [--rounds 3] [--cpus 2]

Builds the shape's random policy and the tiny identifiers (as ``benchmarks/ppo_throughput.py``), then
runs four variants, each in a fresh process (glibc reads its malloc settings at start-up): attention
``sdpa`` (Hugging Face's default) or ``eager`` (what :func:`~pipeline.models.use_fastest_attention`
picks on the CPU), with glibc's default malloc or the settings every Ray worker gets
(:data:`actors.cluster.session.MALLOC_TUNING`). Each variant times, on the same 32 ED prompts and 30-token
responses: one PPO update (the paper's 4 epochs x 4 mini-batches of 8, on a real one-rank DeepSpeed
learner), one generation of the 32 responses (the rollout workers' sampler) and one scoring of them by
the three identifiers. The variants take turns for ``--rounds`` rounds (so a slow spell of the machine
hits them alike); it prints each variant's median over all its runs, the page faults of one update
and the speed-up over the default. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# first: the process defaults, before Ray or transformers load
from machine import ED, load_after, load_before

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere

from ppo_throughput import SHAPES, build_inputs, prompts

from actors.cluster.session import MALLOC_TUNING
from pipeline.config import load_config

VARIANTS = [("sdpa", False), ("eager", False), ("sdpa", True), ("eager", True)]
BATCH, LENGTH = 32, 30


def child(folder: Path, shape: str, kernel: str, repeats: int, cpus: int) -> dict[str, Any]:
    """One variant in this process: median seconds of update, generation and scoring."""
    import resource

    import numpy as np
    import torch

    from actors.ppo.learner import LearnerWorker
    from pipeline.generation import encode_prompts, sample_responses
    from pipeline.models import load_policy, use_fastest_attention
    from pipeline.ppo.experience import TrainBatch
    from pipeline.ppo.iteration import minibatch_plan
    from pipeline.scoring import EmpathyScorer

    torch.set_num_threads(cpus)
    device = "cpu" if kernel == "eager" else "cuda"  # only the kernel choice: everything runs on the CPU
    cfg = load_config(
        "local", [*SHAPES[shape], f"rollout.min_new_tokens={LENGTH}", f"rollout.max_new_tokens={LENGTH}"]
    )
    policy_dir = folder / "sft" / "policy"
    contexts = json.loads((folder / "contexts.json").read_text())

    def timed(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    model, tokenizer = load_policy(policy_dir)
    model.eval()
    use_fastest_attention(model, device)
    batch = encode_prompts(
        tokenizer,
        contexts,
        max_source_len=cfg.model.max_source_len,
        index=np.arange(BATCH),
        gold_levels={},
        seed=0,
    )
    rollouts = sample_responses(model, tokenizer, batch, cfg.rollout)
    generate = timed(lambda: sample_responses(model, tokenizer, batch, cfg.rollout))

    scorer = EmpathyScorer.from_folder(folder / "identifiers", max_context_len=96, max_response_len=48)
    for identifier in scorer.identifiers.values():
        use_fastest_attention(identifier, device)
    score = timed(lambda: scorer.score(contexts, list(rollouts.responses)))

    learner = LearnerWorker(0, 1, str(policy_dir), cfg.ppo, cfg.learner, torch_threads=cpus)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    learner.setup("127.0.0.1", port, seed=0)
    use_fastest_attention(learner.engine.module, device)
    generator = torch.Generator().manual_seed(0)
    shape_ = rollouts.response_ids.shape
    train = TrainBatch(
        prompt_ids=batch.prompt_ids,
        prompt_mask=batch.prompt_mask,
        response_ids=rollouts.response_ids,
        response_mask=rollouts.response_mask,
        old_logprobs=rollouts.logprobs,
        old_values=torch.zeros(shape_),
        advantages=torch.randn(shape_, generator=generator),
        returns=torch.randn(shape_, generator=generator),
        version=0,
    )
    plan = minibatch_plan(BATCH, mini_batch_size=cfg.ppo.mini_batch_size, epochs=cfg.ppo.ppo_epochs, seed=0)
    tokens = [float(train.response_mask[rows].sum()) for rows in plan]
    update = timed(lambda: learner.update(train, plan, tokens))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    learner.update(train, plan, tokens)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {"update": update, "generate": generate, "score": score, "update page faults": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="d256", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the four variants, interleaved")
    parser.add_argument("--cpus", type=int, default=2, help="torch threads")
    parser.add_argument("--ed", type=Path, default=ED)
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "KERNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, kernel = args.child
        print(json.dumps(child(Path(folder), args.shape, kernel, args.repeats, args.cpus)))
        return

    load_before(args.cpus)
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cpu_settings") as tmp:
        folder = Path(tmp) / args.shape
        contexts, responses = prompts(args.ed, Path(tmp) / "cache")
        build_inputs(folder, SHAPES[args.shape], contexts, responses)
        (folder / "contexts.json").write_text(json.dumps(contexts[:BATCH]))
        for round_ in range(args.rounds):
            for kernel, tuned in VARIANTS:
                env = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNING}
                if tuned:
                    env.update(MALLOC_TUNING)
                name = f"{kernel} attention, {'tuned' if tuned else 'default'} malloc"
                out = subprocess.run(
                    [sys.executable, __file__, "--shape", args.shape, "--repeats", str(args.repeats),
                     "--cpus", str(args.cpus), "--child", str(folder), kernel],
                    env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                if out.returncode != 0:
                    sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
                runs.setdefault(name, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {round_ + 1}, {name}: {runs[name][-1]}", flush=True)
    load_after()
    results = {
        name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in runs.items()
    }
    base = next(iter(results.values()))
    print(
        f"\n{args.shape}, {args.cpus} threads, median of {args.rounds} rounds x {args.repeats} repeats "
        "(seconds; speed-up over the first row)"
    )
    print(f"{'variant':<34}{'update':>16}{'generate':>16}{'score':>16}{'update faults':>15}")
    for name, row in results.items():
        cells = "".join(f"{row[k]:>9.3f} {base[k] / row[k]:>5.2f}x" for k in ("update", "generate", "score"))
        print(f"{name:<34}{cells}{row['update page faults']:>15.0f}")


if __name__ == "__main__":
    main()
