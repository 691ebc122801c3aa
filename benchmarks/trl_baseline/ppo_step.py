"""The paper's PPO step (trl 0.9.6 ``PPOTrainer``) as a timed stand-alone program.

    /path/to/trl-venv/bin/python benchmarks/trl_baseline/ppo_step.py --inputs DIR --out result.json
        [--iterations 6] [--warmup 2] [--threads 2] [--device cpu|cuda]

It runs in its own pinned environment (``requirements.txt``: trl 0.9.6, transformers 4.44.2, ...) and
imports nothing of this project. ``DIR`` (written by the driver, ``benchmarks/ppo_vs_trl.py``) holds
``policy/`` (a T5ForConditionalGeneration folder), ``policy_tokenizer.json`` and
``identifier_tokenizer.json`` (``tokenizers`` 0.19 format), ``prompts.json`` (the contexts and their
policy token ids) and ``settings.json`` (PPO, generation and identifier settings).

Each step is one iteration of EmpRL's official training loop: sample ``batch_size`` prompts,
generate with ``PPOTrainer.generate`` one chunk of ``generation.batch_size`` prompts at a time,
score the responses with three random-initialised empathy identifiers (reward
``exp(-sum_m w_m CE_m)`` against fixed random gold levels), then ``PPOTrainer.step``. The per-step
rows (seconds per phase, trl's own timings, response tokens, KL, reward) go to ``--out`` as JSON;
warm-up steps are included and marked ``"warmup": true``.
"""

from __future__ import annotations

import os

# Before transformers/accelerate load: no hub calls, and tokenizers stays within --threads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import json
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import accelerate
import numpy as np
import tokenizers
import torch
import transformers
import trl
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel
from trl import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

INPUT_FILES = (
    "policy/config.json",
    "policy/model.safetensors",
    "policy_tokenizer.json",
    "identifier_tokenizer.json",
    "prompts.json",
    "settings.json",
)
"""What ``--inputs`` must hold (the policy folder's tokenizer files, if any, are ignored)."""

SETTINGS = (
    "seed", "batch_size", "mini_batch_size", "ppo_epochs", "learning_rate", "init_kl_coef", "target", "horizon",
    "cliprange", "cliprange_value", "vf_coef", "gamma", "lam", "max_grad_norm", "generation", "identifier",
    "reward_weights",
)  # fmt: skip
GENERATION = ("top_k", "top_p", "temperature", "min_new_tokens", "max_new_tokens", "batch_size")
IDENTIFIER = (
    "d_model", "d_ff", "num_layers", "num_heads", "vocab_size", "dropout", "max_context_len", "max_response_len",
    "pad_id", "eos_id",
)  # fmt: skip
"""The fields ``settings.json`` must have (top level, ``generation``, ``identifier``)."""

MECHANISMS = ("ER", "IP", "EX")
"""The three empathy communication mechanisms, one identifier each."""

NUM_LEVELS = 3
"""Empathy levels per mechanism (0, 1, 2)."""

TRL_TIMINGS = {
    "forward_pass_s": "time/ppo/forward_pass",
    "compute_rewards_s": "time/ppo/compute_rewards",
    "compute_advantages_s": "time/ppo/compute_advantages",
    "optimize_s": "time/ppo/optimize_step",
    "calc_stats_s": "time/ppo/calc_stats",
    "trl_total_s": "time/ppo/total",
}
"""Row key -> ``PPOTrainer.step`` timing stat (``forward_pass``: the no-grad policy and reference passes
giving old log-probabilities, values and reference log-probabilities)."""


class Identifier(nn.Module):
    """EmpRL's empathy identifier: context and response T5 encoders, one-head cross-attention
    (query = response states, key/value = context states), residual + dropout, masked mean pooling
    over response tokens, then ``Linear(d, d/2) -> Tanh -> Dropout -> Linear(d/2, 3)``."""

    def __init__(self, shape: dict[str, Any]) -> None:
        super().__init__()
        d_model = int(shape["d_model"])
        config = T5Config(
            vocab_size=shape["vocab_size"],
            d_model=d_model,
            d_kv=d_model // shape["num_heads"],
            d_ff=shape["d_ff"],
            num_layers=shape["num_layers"],
            num_heads=shape["num_heads"],
            dropout_rate=shape["dropout"],
            feed_forward_proj="relu",
            is_encoder_decoder=False,
            pad_token_id=shape["pad_id"],
            eos_token_id=shape["eos_id"],
        )
        self.context_encoder = T5EncoderModel(config)
        self.response_encoder = T5EncoderModel(config)
        self.cross_attention = nn.MultiheadAttention(d_model, 1, batch_first=True)
        self.dropout = nn.Dropout(shape["dropout"])
        self.head = nn.Sequential(
            nn.Linear(d_model, d_model // 2),
            nn.Tanh(),
            nn.Dropout(shape["dropout"]),
            nn.Linear(d_model // 2, NUM_LEVELS),
        )

    def forward(
        self,
        context_ids: torch.Tensor,
        context_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """(B, 3) level logits of ``B`` right-padded (context, response) pairs."""
        context = self.context_encoder(input_ids=context_ids, attention_mask=context_mask).last_hidden_state
        response = self.response_encoder(
            input_ids=response_ids, attention_mask=response_mask
        ).last_hidden_state
        ignore = context_mask == 0
        ignore[:, 0] &= context_mask.any(dim=1)  # a context without tokens attends to position 0, not NaN
        attended, _ = self.cross_attention(
            response, context, context, key_padding_mask=ignore, need_weights=False
        )
        hidden = response + self.dropout(attended)
        weights = response_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def check_inputs(folder: Path) -> None:
    """Exit with a message naming the first file ``folder`` lacks."""
    if not folder.is_dir():
        sys.exit(f"ppo_step.py: --inputs {folder} is not a folder")
    for name in INPUT_FILES:
        if not (folder / name).is_file():
            sys.exit(f"ppo_step.py: {folder / name} is missing (benchmarks/ppo_vs_trl.py writes the inputs)")


def require(data: Any, keys: Sequence[str], where: str) -> dict[str, Any]:
    """``data`` when it is a JSON object with all ``keys``; else exits naming ``where`` and what is missing."""
    if not isinstance(data, dict):
        sys.exit(f"ppo_step.py: {where} is not a JSON object")
    missing = [k for k in keys if k not in data]
    if missing:
        sys.exit(f"ppo_step.py: {where} lacks {', '.join(missing)}")
    return data


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, mask)`` of ragged token rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def identifier_batch(
    tokenizer: Tokenizer, texts: list[str], limit: int, *, keep_end: bool, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identifier inputs as our pipeline builds them: a context keeps its last ``limit`` tokens, a
    response its first ``limit`` (the closing ``</s>`` kept); an empty text encodes as ``</s>``."""
    rows = []
    for encoding in tokenizer.encode_batch([t if t.strip() else "" for t in texts]):
        ids = encoding.ids
        if not ids:
            ids = [eos_id]
        elif len(ids) > limit:
            if keep_end:
                ids = ids[len(ids) - limit :]
            else:
                tail = [eos_id] if ids[-1] == eos_id else []
                ids = ids[: limit - len(tail)] + tail
        rows.append(ids)
    return pad_rows(rows, pad_id)


def strip_response(generated: torch.Tensor, eos_id: int) -> torch.Tensor:
    """A generated row as trl's ``step`` wants it: the decoder start token first (trl feeds the row as
    ``decoder_input_ids`` unshifted), cut after the first ``</s>`` so no padding trails it (trl's
    ``generate`` already cuts there; this is a guard)."""
    hits = (generated[1:] == eos_id).nonzero()
    if len(hits):
        generated = generated[: int(hits[0, 0]) + 2]
    return generated


def build_trainer(inputs: Path, settings: dict[str, Any], device: str = "cpu") -> PPOTrainer:
    """``PPOTrainer`` with the paper's ``PPOConfig`` on the policy folder; trl copies the reference."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(inputs / "policy_tokenizer.json"),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=True,  # the 4.44 default, set to silence its FutureWarning
    )
    # trl pads the query tensors with tokenizer.pad(), which a fast tokenizer warns about: mark it shown
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(str(inputs / "policy"))
    config = PPOConfig(
        batch_size=settings["batch_size"],
        mini_batch_size=settings["mini_batch_size"],
        ppo_epochs=settings["ppo_epochs"],
        learning_rate=settings["learning_rate"],
        adap_kl_ctrl=True,
        init_kl_coef=settings["init_kl_coef"],
        target=settings["target"],
        horizon=settings["horizon"],
        cliprange=settings["cliprange"],
        cliprange_value=settings["cliprange_value"],
        vf_coef=settings["vf_coef"],
        gamma=settings["gamma"],
        lam=settings["lam"],
        max_grad_norm=settings["max_grad_norm"],
        seed=settings["seed"],
        log_with=None,
        # one process: on the CPU whatever accelerator the machine has, or on its first GPU
        accelerator_kwargs={"cpu": device == "cpu"},
    )
    with warnings.catch_warnings():  # "No dataset is provided": we feed batches to step() ourselves
        warnings.filterwarnings("ignore", message="No dataset is provided")
        return PPOTrainer(config=config, model=model, ref_model=None, tokenizer=tokenizer)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All steps on ``args.inputs``; the result document written to ``--out``."""
    check_inputs(args.inputs)
    path = args.inputs / "settings.json"
    settings = require(json.loads(path.read_text()), SETTINGS, str(path))
    gen = require(settings["generation"], GENERATION, f"{path} generation")
    shape = require(settings["identifier"], IDENTIFIER, f"{path} identifier")
    path = args.inputs / "prompts.json"
    prompts = require(json.loads(path.read_text()), ["contexts", "policy_ids"], str(path))
    contexts: list[str] = prompts["contexts"]
    policy_ids: list[list[int]] = prompts["policy_ids"]
    if len(contexts) != len(policy_ids) or not contexts:
        sys.exit(f"ppo_step.py: {path}: contexts and policy_ids must be non-empty and pair up")

    torch.set_num_threads(args.threads)
    seed = int(settings["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("ppo_step.py: --device cuda, but this environment's torch sees no CUDA GPU")

    def now() -> float:  # GPU work is asynchronous: a phase ends when its kernels have
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    trainer = build_trainer(args.inputs, settings, args.device)
    pad_id, eos_id = trainer.tokenizer.pad_token_id, trainer.tokenizer.eos_token_id
    id_tokenizer = Tokenizer.from_file(str(args.inputs / "identifier_tokenizer.json"))
    identifiers = []
    for m in range(len(MECHANISMS)):
        torch.manual_seed(seed + m)
        identifiers.append(Identifier(shape).eval().to(device))
    weights = torch.tensor(settings["reward_weights"], dtype=torch.float32, device=device)
    rng = np.random.default_rng(seed)
    gold = torch.from_numpy(rng.integers(0, NUM_LEVELS, size=(len(contexts), len(MECHANISMS)))).to(device)
    gen_kwargs = {
        "do_sample": True,
        "top_k": gen["top_k"],
        "top_p": gen["top_p"],
        "temperature": gen["temperature"],
        "min_new_tokens": gen["min_new_tokens"],
        "max_new_tokens": gen["max_new_tokens"],
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
    }
    batch_size = int(settings["batch_size"])

    rows: list[dict[str, Any]] = []
    total = args.warmup + args.iterations
    for step in range(total):
        start = now()
        picked = rng.choice(len(contexts), size=batch_size, replace=len(contexts) < batch_size)
        queries = [torch.tensor(policy_ids[i], dtype=torch.long) for i in picked]

        t = now()
        trainer.model.eval()  # as the official loop does: step() leaves the policy in train mode (dropout)
        # trl pads and generates one chunk of generation.batch_size queries at a time
        generated = trainer.generate(queries, batch_size=gen["batch_size"], return_prompt=False, **gen_kwargs)
        responses = [strip_response(r, eos_id) for r in generated]
        generate_s = now() - t

        t = now()
        with torch.no_grad():
            texts = trainer.tokenizer.batch_decode(responses, skip_special_tokens=True)
            c_ids, c_mask = identifier_batch(
                id_tokenizer, [contexts[i] for i in picked], shape["max_context_len"],
                keep_end=True, eos_id=shape["eos_id"], pad_id=shape["pad_id"],
            )  # fmt: skip
            r_ids, r_mask = identifier_batch(
                id_tokenizer, texts, shape["max_response_len"],
                keep_end=False, eos_id=shape["eos_id"], pad_id=shape["pad_id"],
            )  # fmt: skip
            c_ids, c_mask, r_ids, r_mask = (x.to(device) for x in (c_ids, c_mask, r_ids, r_mask))
            ce = torch.stack(
                [
                    nn.functional.cross_entropy(
                        f(c_ids, c_mask, r_ids, r_mask), gold[picked, m], reduction="none"
                    )
                    for m, f in enumerate(identifiers)
                ],
                dim=1,
            )
            rewards = list(torch.exp(-(ce * weights).sum(dim=1)))
        score_s = now() - t

        t = now()
        stats = trainer.step(queries, responses, rewards)
        step_s = now() - t
        iteration_s = now() - start

        row: dict[str, Any] = {
            "step": step + 1,
            "warmup": step < args.warmup,
            "samples": len(queries),
            # the decoder start token is not a generated token
            "response_tokens": int(sum(len(r) - 1 for r in responses)),
            "generate_s": generate_s,
            "score_s": score_s,
            "step_s": step_s,
            "iteration_s": iteration_s,
        }
        row.update({key: float(stats[name]) for key, name in TRL_TIMINGS.items() if name in stats})
        row["kl"] = float(stats["objective/kl"])
        row["kl_coef"] = float(stats["objective/kl_coef"])
        row["reward"] = float(torch.stack(rewards).mean())
        rows.append(row)
        print(
            f"trl step {step + 1}/{total}{' (warm-up)' if row['warmup'] else ''}: {iteration_s:.2f} s "
            f"(generate {generate_s:.2f}, score {score_s:.2f}, step {step_s:.2f}: forward "
            f"{row.get('forward_pass_s', math.nan):.2f}, optimize {row.get('optimize_s', math.nan):.2f}); "
            f"{row['response_tokens'] / len(queries):.1f} tokens/response, kl {row['kl']:.4f}, "
            f"reward {row['reward']:.4f}",
            file=sys.stderr,
            flush=True,
        )

    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "accelerate": accelerate.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    return {"versions": versions, "threads": args.threads, "rows": rows, "warmup": args.warmup}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run the steps, write ``--out`` and print the timed medians."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--inputs", type=Path, required=True, help="folder written by the driver")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--iterations", type=int, default=6, help="timed PPO steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (still in the rows)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where trl runs (one process)"
    )
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("need --iterations >= 1, --warmup >= 0, --threads >= 1")

    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    timed = [r for r in result["rows"] if not r["warmup"]]
    medians = ", ".join(
        f"{k} {statistics.median(r[k] for r in timed):.3f}"
        for k in ("iteration_s", "generate_s", "score_s", "step_s", "forward_pass_s", "optimize_s")
        if all(k in r for r in timed)
    )
    print(f"trl 0.9.6, {args.threads} threads, medians over {len(timed)} steps: {medians}", file=sys.stderr)
    if not all(math.isfinite(r["kl"]) for r in result["rows"]):
        sys.exit("ppo_step.py: a step's KL is not finite")


if __name__ == "__main__":
    main()
