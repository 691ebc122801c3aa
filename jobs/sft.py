"""SFT stage: supervised fine-tuning (MLE) of the T5 policy on ED, context → listener response.

Laptop:        emprl sft [--preset local] [--run-dir runs/sft] [KEY=VALUE ...]   (same --run-dir resumes)
Cluster job:   ray job submit --working-dir . -- python -m jobs.sft --preset paper \
                   --run-dir /shared/runs/paper resources.address=auto sft.num_workers=8 sft.zero_stage=3
Sweep:         for lr in 3e-5 1e-4 3e-4; do emprl sft --run-dir runs/sft-lr$lr sft.lr=$lr; done
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from actors.cluster import init_ray, shutdown_ray
from actors.sft_trainer import ResumeError, SFTSpec, train_sft
from jobs.common import add_config_args, config_from_args, make_run_dir, run_module, setup_logging, write_json
from pipeline.config import Config, save_config
from pipeline.data import DataError, PreparedData, prepare_datasets
from pipeline.models import build_policy, build_policy_tokenizer, load_tokenizer, save_policy
from pipeline.training.sft import encode_examples

logger = logging.getLogger(__name__)


def init_policy(cfg: Config, data: PreparedData, folder: Path) -> dict[str, Any]:
    """Write the starting policy: ``model.name_or_path``, or a seeded random T5 from ``model.*`` with
    a tokenizer trained on the ED train contexts and responses."""
    ed_train = data.ed["train"]
    tokenizer = build_policy_tokenizer(cfg.model, [*ed_train["context"], *ed_train["response"]])
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.model, tokenizer)
    save_policy(policy, tokenizer, folder)
    return {
        "policy": str(folder),
        "policy_params_M": round(sum(p.numel() for p in policy.parameters()) / 1e6, 3),
        "policy_vocab": len(tokenizer),
    }


def start_policy(cfg: Config, data: PreparedData, run_dir: Path) -> Path:
    """``<run>/init/policy`` (the init stage's output), written by :func:`init_policy` when missing."""
    folder = run_dir / "init" / "policy"
    if (folder / "config.json").is_file():
        logger.info("SFT starts from %s", folder)
    else:
        logger.info("no initial policy in %s: building it from the model config", folder)
        init_policy(cfg, data, folder)
    return folder


def sft_texts(data: PreparedData, run_dir: Path, split: str) -> tuple[list[str], list[str]]:
    """(contexts, responses) of ``split``: ``<run>/labeled/<split>.parquet`` when present, else the prepared ED."""
    labeled = run_dir / "labeled" / f"{split}.parquet"
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


def build_spec(cfg: Config, data: PreparedData, run_dir: Path, start_dir: Path, **extra: Any) -> SFTSpec:
    """Tokenise train and valid with the starting policy's tokenizer into an :class:`SFTSpec`."""
    tokenizer = load_tokenizer(str(start_dir), key="SFT start policy")
    encoded, texts = {}, {}
    for split in ("train", "valid"):
        texts[split] = sft_texts(data, run_dir, split)
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
        start_dir=str(start_dir.resolve()),
        out_dir=str((run_dir / "sft").resolve()),
        train=encoded["train"],
        valid=encoded["valid"],
        samples=tuple(zip(contexts[:k], responses[:k], strict=True)),
        decoding=cfg.rollout,
        seed=cfg.run.seed,
        torch_threads=cfg.resources.torch_threads,
        log_every=cfg.run.log_every,
        **extra,
    )


def sft_stage(cfg: Config, data: PreparedData, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Fine-tune the run's starting policy into ``<run>/sft/policy``; Ray must be up."""
    spec = build_spec(cfg, data, run_dir, start_policy(cfg, data, run_dir))
    logger.info(
        "SFT: %d train / %d valid examples, %d worker(s), %s ZeRO-%d %s, %d epochs of batch %d",
        len(spec.train), len(spec.valid), cfg.sft.num_workers, cfg.sft.engine, cfg.sft.zero_stage,
        cfg.sft.precision, cfg.sft.epochs, cfg.sft.batch_size,
    )  # fmt: skip
    metrics = train_sft(spec, cfg.resources, resume=resume)
    return {
        "policy": metrics["policy"],
        "best_epoch": metrics["best_epoch"],
        "val_loss": metrics["best"]["val_loss"],
        "val_ppl": metrics["best"]["val_ppl"],
        "initial_val_ppl": metrics["initial"]["val_ppl"],
        "val_ppl_per_epoch": [h["val_ppl"] for h in metrics["history"]],
    }


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "sft", help="supervised fine-tuning of the T5 policy on ED (Ray Train + DeepSpeed)"
    )
    add_config_args(parser)
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (re-use one to resume)")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run folder")
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    run_dir = args.run_dir or make_run_dir(cfg, "sft")
    (run_dir / "sft").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "sft" / "config.yaml")
    try:
        data = prepare_datasets(cfg.data)
        owns = init_ray(cfg.resources)
        try:
            result = sft_stage(cfg, data, run_dir, resume=not args.no_resume)
        finally:
            if owns:
                shutdown_ray()
    except DataError as exc:
        raise SystemExit(f"data error: {exc}") from None
    except ResumeError as exc:
        raise SystemExit(f"resume error: {exc}") from None
    write_json(run_dir / "sft" / "summary.json", result)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    run_module("sft", add_parser, argv)


if __name__ == "__main__":
    main()
