"""SFT epoch samples: after every epoch rank 0 answers the first validation contexts by sampling.

Writes ``<out>/samples/epoch_N.md`` (each context, its gold response and the policy's answer, with
the sampling settings and seed), so one can read how the answers change over training, and
publishes each page when ``<out>`` mirrors a URI. Seeded on a forked RNG: writing samples never
changes the training run.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from actors.training.sft_spec import SFTSpec
from pipeline import storage
from pipeline.layout import PolicyDir
from pipeline.training.sft import Seq2SeqBatch


def write_samples(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    spec: SFTSpec,
    batch: Seq2SeqBatch,
    *,
    epoch: int,
    device: torch.device,
) -> None:
    """Sample ``model``'s (on ``device``, in eval mode) answer to each of ``batch``'s contexts (the
    first ones of ``spec.samples``) into ``samples/epoch_<epoch>.md``."""
    d = spec.decoding
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        out = model.generate(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            do_sample=True,
            top_k=d.top_k,
            top_p=d.top_p,
            temperature=d.temperature,
            min_new_tokens=d.min_new_tokens,
            max_new_tokens=d.max_new_tokens,
        )
    model.train(was_training)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    folder = PolicyDir(storage.local_path(spec.out_dir)).samples
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / f"epoch_{epoch}.md"
    page.write_text(_page(spec, epoch, texts))
    storage.publish(page)  # this rank wrote it, on whichever node: it uploads it


def _page(spec: SFTSpec, epoch: int, texts: list[str]) -> str:
    d = spec.decoding
    lines = [
        f"# SFT samples after epoch {epoch}",
        "",
        f"Sampling: top-k {d.top_k}, top-p {d.top_p}, temperature {d.temperature}, "
        f"{d.min_new_tokens}-{d.max_new_tokens} new tokens, seed {spec.seed}.",
        "",
    ]
    for i, ((context, gold), text) in enumerate(zip(spec.samples, texts, strict=True), 1):
        lines += [
            f"## {i}",
            "",
            f"**Context:** {context}",
            "",
            f"**Gold:** {gold}",
            "",
            f"**Policy:** {text}",
            "",
        ]
    return "\n".join(lines)
