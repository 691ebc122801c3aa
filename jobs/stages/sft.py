"""Init and SFT stages: the starting policy, then its supervised fine-tuning (MLE) on ED."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from actors.training.sft import SFTSpec, train_sft
from jobs.stages.data import prepared_data
from jobs.stages.result import StageResult
from pipeline import storage
from pipeline.config import Config
from pipeline.data import DataError, PreparedData
from pipeline.layout import RunLayout
from pipeline.models import build_policy, build_policy_tokenizer, load_tokenizer, save_policy
from pipeline.training.sft import encode_examples

logger = logging.getLogger(__name__)


def init_stage(cfg: Config, layout: RunLayout, data: PreparedData | None = None) -> StageResult:
    """Write the starting policy to ``layout.init.policy``: ``model.name_or_path``, or a seeded random
    T5 from ``model.*`` with a tokenizer trained on the ED train contexts and responses."""
    started = time.perf_counter()
    ed_train = prepared_data(cfg, data).ed["train"]
    tokenizer = build_policy_tokenizer(cfg.model, [*ed_train["context"], *ed_train["response"]])
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.model, tokenizer)
    folder = layout.init.policy
    save_policy(policy, tokenizer, folder)
    params = round(sum(p.numel() for p in policy.parameters()) / 1e6, 3)
    return StageResult(
        stage="init",
        folder=layout.init.path,
        metrics={"policy_params_M": params, "policy_vocab": len(tokenizer)},
        headline=f"policy of {params}M parameters, vocabulary {len(tokenizer)}",
        outputs={"policy": folder},
        seconds=time.perf_counter() - started,
    )


def sft_texts(data: PreparedData, layout: RunLayout, split: str) -> tuple[list[str], list[str]]:
    """(contexts, responses) of ``split``: the labelled split when present (fetched first when the
    run folder mirrors a URI), else the prepared ED."""
    labeled = storage.fetch(layout.labeled.split(split))
    if labeled.is_file():
        table = pq.read_table(labeled, columns=["context", "response"])
        return table["context"].to_pylist(), table["response"].to_pylist()
    if split not in data.ed:
        raise DataError(
            f"ED {split} split",
            f"SFT needs a {split} split (best epoch by validation loss) but data.splits has only {sorted(data.ed)}",
            fix="add it: data.splits=[train,valid]",
        )
    return list(data.ed[split]["context"]), list(data.ed[split]["response"])


def build_spec(
    cfg: Config, data: PreparedData, layout: RunLayout, start_dir: Path | None = None, **extra: Any
) -> SFTSpec:
    """Tokenise train and valid with the starting policy's tokenizer (``start_dir``, default the run's
    initial policy) into an :class:`SFTSpec`."""
    start_dir = start_dir or layout.init.policy
    tokenizer = load_tokenizer(str(start_dir), key="SFT start policy")
    encoded, texts = {}, {}
    for split in ("train", "valid"):
        texts[split] = sft_texts(data, layout, split)
        encoded[split] = encode_examples(
            tokenizer,
            *texts[split],
            max_source_len=cfg.model.max_source_len,
            max_target_len=cfg.model.max_target_len,
        )
    contexts, responses = texts["valid"]
    k = min(cfg.sft.num_samples, len(contexts))
    return SFTSpec(
        cfg=cfg.sft,
        start_dir=storage.portable(start_dir),
        out_dir=storage.portable(layout.sft.path),
        train=encoded["train"],
        valid=encoded["valid"],
        samples=tuple(zip(contexts[:k], responses[:k], strict=True)),
        decoding=cfg.rollout,
        seed=cfg.run.seed,
        torch_threads=cfg.resources.torch_threads,
        log_every=cfg.run.log_every,
        **extra,
    )


def sft_stage(
    cfg: Config, layout: RunLayout, data: PreparedData | None = None, *, resume: bool = True
) -> StageResult:
    """Fine-tune ``layout.init.policy`` (written by :func:`init_stage` when missing) into
    ``layout.sft.policy``, the best epoch by validation loss; resumes from the stage's checkpoints.

    Raises:
        ResumeError: the folder holds an SFT run with other settings or data.
    """
    started = time.perf_counter()
    data = prepared_data(cfg, data)
    init = layout.init.policy
    if storage.exists(init) and (storage.fetch(init) / "config.json").is_file():
        logger.info("SFT starts from %s", storage.display(init))
    else:
        logger.info("no initial policy in %s: building it from the model config", storage.display(init))
        init_stage(cfg, layout, data)
    spec = build_spec(cfg, data, layout)
    logger.info(
        "SFT: %d train / %d valid examples, %d worker(s), %s ZeRO-%d %s, %d epochs of batch %d",
        len(spec.train), len(spec.valid), cfg.sft.num_workers, cfg.sft.engine.kind, cfg.sft.engine.zero_stage,
        cfg.sft.engine.precision, cfg.sft.epochs, cfg.sft.batch_size,
    )  # fmt: skip
    metrics = train_sft(spec, cfg.resources, resume=resume)
    result = {
        "best_epoch": metrics["best_epoch"],
        "val_loss": metrics["best"]["val_loss"],
        "val_ppl": metrics["best"]["val_ppl"],
        "initial_val_ppl": metrics["initial"]["val_ppl"],
        "val_ppl_per_epoch": [h["val_ppl"] for h in metrics["history"]],
    }
    return StageResult(
        stage="sft",
        folder=layout.sft.path,
        metrics=result,
        headline=(
            f"validation perplexity {result['initial_val_ppl']:.1f} -> {result['val_ppl']:.1f} "
            f"(best epoch {result['best_epoch']})"
        ),
        outputs={"policy": layout.sft.policy},
        seconds=time.perf_counter() - started,
    )
