"""PPO side by side with the paper's own stack: trl 0.9.6 ``PPOTrainer`` against this pipeline, one run.

    python benchmarks/ppo_vs_trl.py [--shapes local d256 t5-base] [--iterations 6] [--warmup 2] [--rounds 3]
        [--cpus 2] [--device cpu|cuda]
        [--precision fp32 bf16] [--trl-venv benchmarks/trl_baseline/.venv] [--trl-tuned-malloc] [--out FILE.json]

For each shape it builds one random-initialised policy, three tiny identifiers and the ED prompts
(``benchmarks/ppo_throughput.py``), then runs on them, one right after the other on this machine:

- **trl 0.9.6** (``benchmarks/trl_baseline/ppo_step.py``, in its own pinned virtual environment,
  created here on first use): ``AutoModelForSeq2SeqLMWithValueHead``, ``PPOTrainer`` with the
  paper's ``PPOConfig``, generation per mini-batch of 8 prompts as the official code does, the
  three identifiers scoring each batch, ``ppo_trainer.step``; one process, all ``--cpus`` threads;
- **ours**: the real PPO stage on Ray (rollout worker, reward scorers, reference policy, one-rank
  DeepSpeed learner) with the same settings, prompts and starting weights.

``--device cuda`` runs trl on the first GPU and gives every role of ours a fraction of it (as the
``paper_1gpu`` preset), fp32 and, with ``--precision fp32 bf16``, bf16 autocast; ``--shapes t5-base``
is the paper's policy size (random weights) for that comparison. The trl environment must then hold a
CUDA build of the same torch.

Both sides generate exactly ``--length`` tokens per response (a random-initialised policy almost
never samples ``</s>``; barring it until the last step makes the token counts equal by
construction), so the ratio compares equal work. The table gives the median seconds per phase over
the timed iterations (generation, identifier scoring, old log-probabilities/values and reference,
the PPO update, weight publishing), samples/s and our/trl ratio. ``--rounds N`` alternates the two
sides N times (each round with its own warm-up) and takes the medians over every round's steps, so
that a slow spell of a noisy machine weighs on both sides; it prints each round's ratio too. Our Ray
workers run with tuned glibc malloc settings (``actors.cluster.session.MALLOC_TUNING``); ``--trl-tuned-malloc`` adds a trl run with the
same settings, so the table shows what they would give trl too. Run it on an otherwise idle
machine: the load average is checked before and printed after.
"""

from __future__ import annotations

import argparse
import json
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python benchmarks/ppo_vs_trl.py` from anywhere

from ppo_throughput import SHAPES, TINY_IDENTIFIER, build_inputs, prompts, run_one

from actors.cluster.session import MALLOC_TUNING
from pipeline.config import ResourcesConfig, load_config
from pipeline.generation import encode_prompts
from pipeline.models import load_tokenizer

HERE = Path(__file__).resolve().parent
TRL_DIR = HERE / "trl_baseline"
TRL_VENV = TRL_DIR / ".venv"
TRL_GENERATION_BATCH = 8
"""The official EmpRL code generates one mini-batch of 8 prompts at a time."""


def ensure_trl_venv(venv: Path, trl_dir: Path = TRL_DIR) -> Path:
    """The trl 0.9.6 environment's python, created from ``trl_baseline/requirements.txt`` if missing."""
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    requirements = trl_dir / "requirements.txt"
    if marker.is_file() and marker.read_text() == requirements.read_text():
        return python
    print(f"creating the trl 0.9.6 environment in {venv} (about 30 s) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    # one pip command with torch pinned inside: pip takes the local CPU build, not a CUDA one
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    marker.write_text(requirements.read_text())
    return python


def legacy_tokenizer_json(src: Path, dst: Path) -> None:
    """A ``tokenizer.json`` that ``tokenizers`` 0.19 (trl's pin) reads: BPE merges as ``"a b"`` strings,
    without the newer ``ignore_merges`` key (both spellings mean the same tokenizer)."""
    data = json.loads(src.read_text())
    model = data["model"]
    if "merges" in model:
        model["merges"] = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    model.pop("ignore_merges", None)
    dst.write_text(json.dumps(data))


def trl_inputs(folder: Path, overrides: list[str], contexts: list[str], length: int, seed: int) -> Path:
    """The trl program's inputs from the shape's folder: the same policy, prompts and settings."""
    cfg = load_config("local", overrides)
    out = folder / "trl"
    out.mkdir()
    (out / "policy").symlink_to(folder / "sft" / "policy")
    legacy_tokenizer_json(folder / "sft" / "policy" / "tokenizer.json", out / "policy_tokenizer.json")
    legacy_tokenizer_json(folder / "identifiers" / "ER" / "tokenizer.json", out / "identifier_tokenizer.json")
    tokenizer = load_tokenizer(str(folder / "sft" / "policy"), key="benchmark policy")
    encoded = encode_prompts(
        tokenizer, contexts, max_source_len=cfg.model.max_source_len, index=range(len(contexts)),
        gold_levels={}, seed=0,
    )  # fmt: skip
    ids = [
        row[mask.bool()].tolist() for row, mask in zip(encoded.prompt_ids, encoded.prompt_mask, strict=True)
    ]
    (out / "prompts.json").write_text(json.dumps({"contexts": contexts, "policy_ids": ids}))
    ppo, ident = cfg.ppo, TINY_IDENTIFIER
    settings = {
        "seed": seed,
        "batch_size": ppo.rollout_batch_size,
        "mini_batch_size": ppo.mini_batch_size,
        "ppo_epochs": ppo.ppo_epochs,
        "learning_rate": ppo.lr,
        "init_kl_coef": ppo.kl_coef,
        "target": ppo.kl_target,
        "horizon": ppo.kl_horizon,
        "cliprange": ppo.clip_ratio,
        "cliprange_value": ppo.value_clip,
        "vf_coef": ppo.vf_coef,
        "gamma": ppo.gamma,
        "lam": ppo.lam,
        "max_grad_norm": ppo.max_grad_norm,
        "generation": {
            "top_k": cfg.rollout.top_k,
            "top_p": cfg.rollout.top_p,
            "temperature": cfg.rollout.temperature,
            "min_new_tokens": length,
            "max_new_tokens": length,
            "batch_size": TRL_GENERATION_BATCH,
        },
        "identifier": {
            "d_model": ident.d_model,
            "d_ff": ident.d_ff,
            "num_layers": ident.num_layers,
            "num_heads": ident.num_heads,
            "vocab_size": ident.vocab_size,
            "dropout": ident.dropout,
            "max_context_len": IDENTIFIER_CONTEXT_LEN,
            "max_response_len": IDENTIFIER_RESPONSE_LEN,
            "pad_id": int(tokenizer.pad_token_id),
            "eos_id": int(tokenizer.eos_token_id),
        },
        "reward_weights": [cfg.reward.weights.er, cfg.reward.weights.ip, cfg.reward.weights.ex],
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    return out


IDENTIFIER_CONTEXT_LEN = 96
IDENTIFIER_RESPONSE_LEN = 48
"""The identifiers' truncation on both sides (``run_one`` sets the same for ours)."""


GPU_SHARES = [
    "resources.use_gpu=true", "resources.num_gpus=1", "resources.learner_gpus=0.4", "resources.rollout_gpus=0.3",
    "resources.reference_gpus=0.2", "resources.reward_gpus=0.1",
]  # fmt: skip
"""``--device cuda``: every role of ours on the one GPU by fraction, as the ``paper_1gpu`` preset."""


def run_trl(
    python: Path,
    inputs: Path,
    iterations: int,
    warmup: int,
    threads: int,
    trl_dir: Path = TRL_DIR,
    *,
    tuned_malloc: bool = False,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """The timed (non-warm-up) per-step rows of the trl program: with glibc's default malloc as a user
    would run it, or with ``tuned_malloc`` the settings our Ray workers get (:data:`MALLOC_TUNING`)."""
    result = inputs / "result.json"
    command = [
        str(python), str(trl_dir / "ppo_step.py"), "--inputs", str(inputs), "--out", str(result),
        "--iterations", str(iterations), "--warmup", str(warmup), "--threads", str(threads), "--device", device,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNING and k != "PYTHONPATH"}
    env.update(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **(MALLOC_TUNING if tuned_malloc else {})
    )
    subprocess.run(command, check=True, env=env)
    data = json.loads(result.read_text())
    print(f"trl side: {data['versions']}")
    return [r for r in data["rows"] if not r.get("warmup")]


Medians = Callable[[str], float]
"""One side's ``key -> median of that metric over its rows``."""
COLUMNS: dict[str, tuple[str | Callable[[Medians], float], str | Callable[[Medians], float]]] = {
    "generate": ("time/generate", "generate_s"),
    "score": ("time/score", "score_s"),
    "reference/values": (lambda med: max(med("time/reference"), med("time/values")), "forward_pass_s"),
    "evaluate (wall)": ("time/evaluate", lambda med: med("score_s") + med("forward_pass_s")),
    "update": ("time/update", "optimize_s"),
    "publish": ("time/publish", lambda med: 0.0),  # trl: one process, no weights to publish
    "iteration": ("time/iteration", "iteration_s"),
    "samples/s": ("perf/samples_per_s", "samples_per_s"),
    "tokens/sample": ("rollout/response_len", "tokens_per_sample"),
}
"""Each column of the table: where it comes from in our metrics rows, and in the trl program's rows
(a key whose median it is, or how it combines medians)."""


def table_row(rows: list[dict[str, Any]], side: int) -> dict[str, float]:
    """The table's columns from one side's rows (``side``: 0 ours, 1 trl's; see :data:`COLUMNS`)."""

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)

    columns = {name: sources[side] for name, sources in COLUMNS.items()}
    return {name: med(c) if isinstance(c, str) else c(med) for name, c in columns.items()}


def ours_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of our metrics rows in the table's terms."""
    return table_row(rows, 0)


def trl_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of the trl program's rows in the table's terms; its rates are per row, then the median."""
    per_row = [{**r, "samples_per_s": r["samples"] / r["iteration_s"],
                "tokens_per_sample": r["response_tokens"] / r["samples"]} for r in rows]  # fmt: skip
    return table_row(per_row, 1)


def print_table(results: dict[str, dict[str, dict[str, float]]]) -> None:
    keys = ["generate", "score", "reference/values", "evaluate (wall)", "update", "publish", "iteration"]
    print("\nmedian seconds per PPO step (trl: one process; ours: Ray roles, evaluate = score || reference)")
    print(
        f"{'shape':<6} {'side':<12} "
        + " ".join(f"{k:>16}" for k in keys)
        + f" {'tok/sample':>10} {'samples/s':>9}"
    )
    for shape, sides in results.items():
        for side, m in sides.items():
            cells = " ".join(f"{m[k]:>16.3f}" for k in keys)
            print(f"{shape:<6} {side:<12} {cells} {m['tokens/sample']:>10.1f} {m['samples/s']:>9.2f}")
    print()
    for shape, sides in results.items():
        for base, trl in sides.items():
            if not base.startswith("trl"):
                continue
            for side, m in sides.items():
                if not side.startswith("trl"):
                    print(
                        f"{shape} {side}: {m['samples/s']:.2f} samples/s vs {base} {trl['samples/s']:.2f} -> "
                        f"{m['samples/s'] / trl['samples/s']:.2f}x  (update {trl['update'] / m['update']:.2f}x, "
                        f"generation {trl['generate'] / m['generate']:.2f}x)"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["local", "d256"], choices=sorted(SHAPES))
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--iterations", type=int, default=6, help="timed PPO steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per side")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate the sides this many times; medians over all rounds' steps",
    )
    parser.add_argument("--length", type=int, default=30, help="tokens per response on both sides")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: trl on the first GPU, ours with every role on it by fraction (as paper_1gpu)",
    )
    parser.add_argument("--trl-venv", type=Path, default=TRL_VENV)
    parser.add_argument("--trl-dir", type=Path, default=TRL_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--ed", type=Path, default=ED)
    parser.add_argument(
        "--trl-tuned-malloc",
        action="store_true",
        help="also run trl with the glibc malloc settings our Ray workers get (actors.cluster.session.MALLOC_TUNING)",
    )
    parser.add_argument("--out", type=Path, help="write the medians as JSON")
    args = parser.parse_args()

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: this environment's torch sees no CUDA GPU")
        print(f"device: {torch.cuda.get_device_name(0)}")
    python = ensure_trl_venv(args.trl_venv, args.trl_dir)
    load_before(args.cpus)
    from actors.cluster.session import init_ray, shutdown_ray

    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ppo_vs_trl") as tmp:
        contexts, responses = prompts(args.ed, Path(tmp) / "cache")
        for shape in args.shapes:
            folder = Path(tmp) / shape
            overrides = [
                *SHAPES[shape],
                f"rollout.min_new_tokens={args.length}",
                f"rollout.max_new_tokens={args.length}",
            ]
            build_inputs(folder, overrides, contexts, responses)
            seed = load_config("local", overrides).run.seed
            inputs = trl_inputs(folder, overrides, contexts, args.length, seed)
            # rounds alternate the two sides, so that a slow spell of the machine hits both
            pooled: dict[str, list[dict[str, Any]]] = {}
            gpu = args.device == "cuda"
            for round_ in range(1, args.rounds + 1):
                start = time.perf_counter()
                sides = {"trl 0.9.6": False, **({"trl + malloc": True} if args.trl_tuned_malloc else {})}
                this: dict[str, dict[str, float]] = {}
                for side, tuned in sides.items():
                    rows = run_trl(
                        python,
                        inputs,
                        args.iterations,
                        args.warmup,
                        args.cpus,
                        args.trl_dir,
                        tuned_malloc=tuned,
                        device=args.device,
                    )
                    pooled.setdefault(side, []).extend(rows)
                    this[side] = trl_rows(rows)
                print(f"trl {shape}, round {round_}: {time.perf_counter() - start:.0f} s")
                init_ray(
                    ResourcesConfig(
                        num_cpus=args.cpus,
                        use_gpu=gpu,
                        num_gpus=1 if gpu else None,
                        object_store_memory=500_000_000,
                    )
                )
                try:
                    for precision in args.precision:
                        rows = run_one(
                            folder, overrides, 1, precision, args.warmup + args.iterations, args.cpus,
                            extra=GPU_SHARES if gpu else (), tag=f"_round{round_}",
                        )  # fmt: skip
                        pooled.setdefault(f"ours {precision}", []).extend(rows[args.warmup :])
                        this[f"ours {precision}"] = ours_rows(rows[args.warmup :])
                finally:
                    shutdown_ray()
                if args.rounds > 1:
                    ratios = ", ".join(
                        f"{side} {m['samples/s'] / this['trl 0.9.6']['samples/s']:.2f}x"
                        for side, m in this.items()
                        if side.startswith("ours")
                    )
                    print(f"{shape} round {round_}/{args.rounds}: {ratios}")
            results[shape] = {
                side: (ours_rows(rows) if side.startswith("ours") else trl_rows(rows))
                for side, rows in pooled.items()
            }
    load_after()
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
