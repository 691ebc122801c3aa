"""SFT role: supervised fine-tuning of the T5 policy on ED with one Ray Train ``TorchTrainer`` run.

Owns the SFT training run. Consumes tokenised (context → listener response) train and valid
examples and a starting policy folder (``save_policy`` form); produces ``<out>/policy`` (the best
epoch by validation loss, a plain Hugging Face folder plus the starting value head),
``<out>/metrics.json``, ``<out>/samples/epoch_N.md`` and TensorBoard logs in ``<out>/tensorboard``.
Runs ``sft.num_workers`` data-parallel workers of ``resources.trainer_cpus`` CPUs (or one GPU)
with DeepSpeed ZeRO 0–3 or DDP (the worker loop is :mod:`actors.sft_worker`), and resumes exactly
from the last checkpoint after a worker failure (``FailureConfig``) or a restart of the job.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ray.train import Checkpoint

from actors.cluster import torch_trainer
from actors.sft_worker import EXPORT_DIR, STATE_FILE, SFTSpec, fingerprint, make_engine, train_loop
from pipeline.config import ResourcesConfig

__all__ = ["ResumeError", "SFTSpec", "fit_sft", "latest_checkpoint", "make_engine", "train_sft"]

logger = logging.getLogger(__name__)

RUN_NAME = "sft"


class ResumeError(ValueError):
    """The run folder holds an SFT run whose settings or data differ from this one's."""


def _state(path: Path) -> dict[str, Any] | None:
    state_file = path / STATE_FILE
    return json.loads(state_file.read_text()) if state_file.is_file() else None


def latest_checkpoint(run_dir: Path) -> tuple[Checkpoint, dict[str, Any]] | None:
    """The newest complete checkpoint of the SFT Ray Train run folder and its state, if any."""
    found = []
    for path in run_dir.glob("checkpoint_*"):
        state = _state(path)
        if state is not None:
            found.append(((state["done"], state["global_step"]), str(path), state))
    if not found:
        return None
    _, newest, state = max(found)
    return Checkpoint.from_directory(newest), state


def _check_resumable(state: dict[str, Any], spec: SFTSpec, folder: Path) -> None:
    old, new = state.get("fingerprint", {}), fingerprint(spec)
    changed = [
        f"sft.{k}: {v!r} -> {new['sft'].get(k)!r}"
        for k, v in old.get("sft", {}).items()
        if new["sft"].get(k) != v
    ]
    if old.get("seed") != new["seed"]:
        changed.append(f"run.seed: {old.get('seed')!r} -> {new['seed']!r}")
    if old.get("data_sha256") != new["data_sha256"]:
        changed.append("the tokenised train/valid data (data.*, model.max_*_len or the tokenizer)")
    if changed:
        raise ResumeError(
            f"{folder} holds an SFT run with other settings ({'; '.join(changed)}); resuming it would mix "
            "the two. Fix: use a new --run-dir, pass --no-resume to start over, or restore the settings."
        )


def fit_sft(
    spec: SFTSpec, res: ResourcesConfig, storage: Path, *, max_failures: int = 2, resume: bool = True
) -> dict[str, Any]:
    """Run (or resume) the SFT Ray Train run; returns the final checkpoint, its state and wall time."""
    t0 = time.perf_counter()
    if not resume:
        shutil.rmtree(storage / RUN_NAME, ignore_errors=True)
        shutil.rmtree(Path(spec.out_dir) / "tensorboard", ignore_errors=True)
    found = latest_checkpoint(storage / RUN_NAME) if resume else None
    if found is not None:
        _check_resumable(found[1], spec, storage / RUN_NAME)
    if found is not None and found[1]["done"]:
        logger.info("[sft] already finished: %s", found[0].path)
        return {"checkpoint": found[0], "state": found[1], "seconds": time.perf_counter() - t0}
    if found is not None:
        logger.info("[sft] resuming from %s", found[0].path)
    trainer = torch_trainer(
        train_loop,
        {"spec": spec, "resume_from": found[0].path if found else None},
        name=RUN_NAME,
        storage=storage,
        num_workers=spec.cfg.num_workers,
        res=res,
        max_failures=max_failures,
        keep_checkpoints=spec.cfg.keep_checkpoints,
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"SFT training failed: {result.error}") from result.error
    assert result.checkpoint is not None and result.metrics is not None and result.metrics.get("final")
    state = _state(Path(result.checkpoint.path))
    assert state is not None
    return {"checkpoint": result.checkpoint, "state": state, "seconds": time.perf_counter() - t0}


def train_sft(
    spec: SFTSpec, res: ResourcesConfig, *, resume: bool = True, max_failures: int = 2
) -> dict[str, Any]:
    """Train (or resume) SFT and export ``<out_dir>/policy``; writes and returns ``metrics.json``."""
    out_dir = Path(spec.out_dir)
    outcome = fit_sft(spec, res, (out_dir / "ray_train").resolve(), max_failures=max_failures, resume=resume)
    target = out_dir / EXPORT_DIR
    with outcome["checkpoint"].as_directory() as folder:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(folder) / EXPORT_DIR, target)
    state = outcome["state"]
    history = state["history"]
    best = next((h for h in history if h["epoch"] == state["best_epoch"]), history[-1] if history else {})
    cfg = spec.cfg
    metrics = {
        "initial": {k: state["initial"][k] for k in ("val_loss", "val_ppl")},
        "best_epoch": state["best_epoch"],
        "best": {k: best.get(k) for k in ("val_loss", "val_ppl", "train_loss")},
        "history": history,
        "train_seconds": outcome["seconds"],
        "sizes": {"train": len(spec.train), "valid": len(spec.valid)},
        "engine": {
            "engine": cfg.engine,
            "num_workers": cfg.num_workers,
            "zero_stage": cfg.zero_stage,
            "precision": cfg.precision,
            "offload": cfg.offload,
        },
        "policy": str(target),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
