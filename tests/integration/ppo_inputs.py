"""Tiny PPO inputs built from config: a random T5 policy, random identifiers and labelled demo prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.config import MECHANISMS, Config, DataConfig, IdentifiersConfig, ModelConfig, load_config
from pipeline.data import prepare_datasets
from pipeline.layout import RunLayout
from pipeline.models import (
    build_identifier,
    build_policy,
    build_policy_tokenizer,
    save_identifier,
    save_policy,
)
from pipeline.models import train_tokenizer as train_identifier_tokenizer

IDENTIFIERS = IdentifiersConfig(
    d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=400, max_context_len=64, max_response_len=32
)
POLICY = ModelConfig(
    vocab_size=600, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2,
    max_source_len=48, max_target_len=16,
)  # fmt: skip


def build_run_dir(run_dir: Path, cache: Path, *, rows: int = 64, seed: int = 0, valid: bool = False) -> Path:
    """``run_dir`` with ``sft/policy``, ``identifiers/{ER,IP,EX}`` and ``labeled/train.parquet`` (tiny, random);
    with ``valid`` the same rows as ``labeled/valid.parquet`` too."""
    demo = prepare_datasets(DataConfig(cache_dir=str(cache)))
    train = demo.ed["train"]
    contexts, responses = list(train["context"])[:rows], list(train["response"])[:rows]
    torch.manual_seed(seed)
    tokenizer = build_policy_tokenizer(POLICY, contexts + responses)
    save_policy(build_policy(POLICY, tokenizer), tokenizer, run_dir / "sft" / "policy")
    texts = contexts + responses
    for i, m in enumerate(MECHANISMS):
        torch.manual_seed(seed + i + 1)
        tok = train_identifier_tokenizer(texts[i * 10 :], IDENTIFIERS.vocab_size)
        save_identifier(build_identifier(IDENTIFIERS, tok), tok, run_dir / "identifiers" / m)
    rng = np.random.default_rng(seed)
    table: dict[str, Any] = {"context": contexts, "response": responses}
    for m in MECHANISMS:
        table[f"{m.lower()}_level"] = rng.integers(0, 3, size=len(contexts))
    (run_dir / "labeled").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), run_dir / "labeled" / "train.parquet")
    if valid:
        pq.write_table(pa.table(table), run_dir / "labeled" / "valid.parquet")
    return run_dir


def linked_run(inputs: Path, folder: Path) -> RunLayout:
    """A new run folder ``folder/run`` whose SFT policy, identifiers and labelled splits are those of
    ``inputs`` (linked), and whose PPO and evaluation outputs are its own."""
    layout = RunLayout(folder / "run")
    layout.root.mkdir()
    source = RunLayout(inputs)
    for mine, theirs in ((layout.sft, source.sft), (layout.identifiers, source.identifiers),
                         (layout.labeled, source.labeled)):  # fmt: skip
        mine.path.symlink_to(theirs.path)
    return layout


def tiny_overrides(**overrides: Any) -> list[str]:
    """Dotted ``KEY=VALUE`` overrides of the local preset for the tiny inputs above, plus ``overrides``
    (``a__b=v`` → ``a.b=v``)."""
    base = {
        "model.max_source_len": POLICY.max_source_len,
        "identifiers.d_model": IDENTIFIERS.d_model,
        "identifiers.max_context_len": IDENTIFIERS.max_context_len,
        "identifiers.max_response_len": IDENTIFIERS.max_response_len,
        "rollout.max_new_tokens": 8,
        "rollout.min_new_tokens": 2,
        "rollout.batch_size": 4,
        "ppo.rollout_batch_size": 8,
        "ppo.mini_batch_size": 4,
        "ppo.ppo_epochs": 2,
        "ppo.total_steps": 1,
        "ppo.save_every": 1,
        "ppo.lr": 1e-3,
        "resources.rollout_cpus": 0.2,
        "resources.reward_cpus": 0.2,
        "resources.reference_cpus": 0.2,
        "resources.learner_cpus": 0.2,
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(**overrides: Any) -> Config:
    """The local preset with :func:`tiny_overrides`."""
    return load_config("local", tiny_overrides(**overrides))


def publish_run(inputs: Path, uri: str, splits: tuple[str, ...] = ("train",)) -> RunLayout:
    """A run folder at ``uri`` (a bucket) holding copies of ``inputs``' SFT policy, identifiers and the
    labelled ``splits``, published as the stages that make them do; its layout (the mirror folder)."""
    import shutil

    from pipeline import storage

    layout, source = RunLayout(storage.local_path(uri)), RunLayout(inputs)
    folders = [(source.sft.policy, layout.sft.policy)]
    folders += [(source.identifiers.path / m, layout.identifiers.path / m) for m in MECHANISMS]
    for theirs, mine in folders:
        shutil.copytree(theirs, mine)
        storage.publish(mine)
    for split in splits:
        target = layout.labeled.split(split)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.labeled.split(split), target)
        storage.publish(target)
    return layout
