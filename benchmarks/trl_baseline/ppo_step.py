"""The paper's PPO step with trl 0.9.6, timed: the baseline of ``benchmarks/ppo_vs_trl.py``.

    <trl venv>/bin/python benchmarks/trl_baseline/ppo_step.py --inputs DIR --out result.json
        [--iterations 6] [--warmup 2] [--threads 2]

Runs in its own environment (``requirements.txt``: trl 0.9.6, transformers 4.44.2, ...) and imports
nothing of this project. ``DIR`` (written by the driver) holds ``policy/`` (a T5 folder),
``policy_tokenizer.json`` and ``identifier_tokenizer.json`` (``tokenizers`` 0.19 format),
``prompts.json`` (``contexts`` and their policy token ids) and ``settings.json`` (the PPO,
generation and identifier settings). Each step is what EmpRL's official training loop does:
sample a batch of prompts, generate responses per mini-batch of prompts with
``PPOTrainer.generate``, score them with three empathy identifiers (``exp(-sum_m w_m CE_m)``
against gold levels), then ``PPOTrainer.step``. The rows (seconds per phase, tokens, KL, reward)
go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

INPUT_FILES = (
    "policy",
    "policy_tokenizer.json",
    "identifier_tokenizer.json",
    "prompts.json",
    "settings.json",
)


class Identifier(nn.Module):
    """EmpRL's empathy identifier: context and response T5 encoders, one-head cross-attention
    (query = response), residual + dropout, masked mean pooling, Linear -> Tanh -> Dropout -> Linear(3)."""

    def __init__(self, s: dict[str, Any]) -> None:
        super().__init__()
        config = T5Config(
            vocab_size=s["vocab_size"], d_model=s["d_model"], d_kv=s["d_model"] // s["num_heads"],
            d_ff=s["d_ff"], num_layers=s["num_layers"], num_heads=s["num_heads"], dropout_rate=s["dropout"],
            feed_forward_proj="relu", is_encoder_decoder=False, pad_token_id=s["pad_id"],
            eos_token_id=s["eos_id"],
        )  # fmt: skip
        d = s["d_model"]
        self.context_encoder = T5EncoderModel(config)
        self.response_encoder = T5EncoderModel(config)
        self.cross_attention = nn.MultiheadAttention(d, 1, batch_first=True)
        self.dropout = nn.Dropout(s["dropout"])
        self.head = nn.Sequential(
            nn.Linear(d, d // 2), nn.Tanh(), nn.Dropout(s["dropout"]), nn.Linear(d // 2, 3)
        )

    def forward(
        self, c_ids: torch.Tensor, c_mask: torch.Tensor, r_ids: torch.Tensor, r_mask: torch.Tensor
    ) -> torch.Tensor:
        context = self.context_encoder(input_ids=c_ids, attention_mask=c_mask).last_hidden_state
        response = self.response_encoder(input_ids=r_ids, attention_mask=r_mask).last_hidden_state
        attended, _ = self.cross_attention(
            response, context, context, key_padding_mask=c_mask == 0, need_weights=False
        )
        hidden = response + self.dropout(attended)
        w = r_mask.to(hidden.dtype).unsqueeze(-1)
        return self.head((hidden * w).sum(1) / w.sum(1).clamp(min=1.0))


def pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in INPUT_FILES:
        if not (args.inputs / name).exists():
            sys.exit(
                f"ppo_step.py: {args.inputs / name} is missing (the driver benchmarks/ppo_vs_trl.py writes it)"
            )

    import transformers
    import trl
    from trl import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

    torch.set_num_threads(args.threads)
    s = json.loads((args.inputs / "settings.json").read_text())
    gen, ident = s["generation"], s["identifier"]
    random.seed(s["seed"])
    np.random.seed(s["seed"])
    torch.manual_seed(s["seed"])
    prompts = json.loads((args.inputs / "prompts.json").read_text())
    contexts, policy_ids = prompts["contexts"], prompts["policy_ids"]

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(args.inputs / "policy_tokenizer.json"),
        pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
    )  # fmt: skip
    id_tokenizer = Tokenizer.from_file(str(args.inputs / "identifier_tokenizer.json"))
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(str(args.inputs / "policy"))
    config = PPOConfig(
        seed=s["seed"], batch_size=s["batch_size"], mini_batch_size=s["mini_batch_size"], ppo_epochs=s["ppo_epochs"],
        learning_rate=s["learning_rate"], adap_kl_ctrl=True, init_kl_coef=s["init_kl_coef"], target=s["target"],
        horizon=s["horizon"], cliprange=s["cliprange"], cliprange_value=s["cliprange_value"], vf_coef=s["vf_coef"],
        gamma=s["gamma"], lam=s["lam"], max_grad_norm=s["max_grad_norm"], log_with=None,
    )  # fmt: skip
    trainer = PPOTrainer(config=config, model=model, ref_model=None, tokenizer=tokenizer)
    identifiers = []
    for m in range(3):
        torch.manual_seed(s["seed"] + m)
        identifiers.append(Identifier(ident).eval())
    weights = torch.tensor(s["reward_weights"], dtype=torch.float32)
    rng = np.random.default_rng(s["seed"])
    gold = torch.from_numpy(rng.integers(0, 3, size=(len(contexts), 3)))
    gen_kwargs = {
        "do_sample": True, "top_k": gen["top_k"], "top_p": gen["top_p"], "temperature": gen["temperature"],
        "min_new_tokens": gen["min_new_tokens"], "max_new_tokens": gen["max_new_tokens"],
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
    }  # fmt: skip

    def id_encode(texts: list[str], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [e.ids[:limit] for e in id_tokenizer.encode_batch(texts)]
        return pad([r if r else [ident["eos_id"]] for r in rows], ident["pad_id"])

    rows: list[dict[str, Any]] = []
    for step in range(args.warmup + args.iterations):
        start = time.perf_counter()
        picked = rng.choice(len(contexts), size=s["batch_size"], replace=False)
        queries = [torch.tensor(policy_ids[i], dtype=torch.long) for i in picked]
        t = time.perf_counter()
        responses: list[torch.Tensor] = []
        for i in range(0, len(queries), gen["batch_size"]):  # one mini-batch of prompts at a time
            responses += trainer.generate(
                queries[i : i + gen["batch_size"]],
                batch_size=gen["batch_size"],
                return_prompt=False,
                **gen_kwargs,
            )
        generate_s = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            c_ids, c_mask = id_encode([contexts[i] for i in picked], ident["max_context_len"])
            r_ids, r_mask = id_encode(texts, ident["max_response_len"])
            ce = torch.stack(
                [
                    nn.functional.cross_entropy(
                        f(c_ids, c_mask, r_ids, r_mask), gold[picked, m], reduction="none"
                    )
                    for m, f in enumerate(identifiers)
                ],
                dim=1,
            )
            rewards = list(torch.exp(-(ce * weights).sum(1)))
        score_s = time.perf_counter() - t
        t = time.perf_counter()
        stats = trainer.step(queries, responses, rewards)
        step_s = time.perf_counter() - t
        iteration_s = time.perf_counter() - start
        row = {
            "step": step + 1,
            "warmup": step < args.warmup,
            "samples": len(queries),
            # encoder-decoder responses start with the decoder start token, which trl skips
            "response_tokens": int(sum(len(r) - 1 for r in responses)),
            "generate_s": generate_s,
            "score_s": score_s,
            "step_s": step_s,
            "forward_pass_s": float(stats["time/ppo/forward_pass"]),
            "optimize_s": float(stats["time/ppo/optimize_step"]),
            "iteration_s": iteration_s,
            "kl": float(stats["objective/kl"]),
            "reward": float(torch.stack(rewards).mean()),
        }
        rows.append(row)
        print(
            f"trl step {step + 1}/{args.warmup + args.iterations}{' (warm-up)' if row['warmup'] else ''}: "
            f"{iteration_s:.2f} s (generate {generate_s:.2f}, score {score_s:.2f}, step {step_s:.2f}, "
            f"{row['response_tokens'] / len(queries):.1f} tokens/response)",
            file=sys.stderr,
            flush=True,
        )
    versions = {
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "numpy": np.__version__, "tokenizers": __import__("tokenizers").__version__,
        "accelerate": __import__("accelerate").__version__,
    }  # fmt: skip
    args.out.write_text(
        json.dumps({"versions": versions, "threads": args.threads, "warmup": args.warmup, "rows": rows})
    )
    if not all(math.isfinite(r["kl"]) for r in rows):
        sys.exit("ppo_step.py: a step's KL is not finite")


if __name__ == "__main__":
    main()
