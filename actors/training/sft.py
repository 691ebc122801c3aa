"""SFT role: supervised fine-tuning of the T5 policy on ED with one Ray Train ``TorchTrainer`` run.

Owns the SFT training run. Consumes tokenised (context → listener response) train and valid
examples and a starting policy folder (``save_policy`` form); produces ``<out>/policy`` (the best
epoch by validation loss, a plain Hugging Face folder plus the starting value head),
``<out>/metrics.json``, ``<out>/samples/epoch_N.md`` and TensorBoard logs in ``<out>/tensorboard``.
Runs ``sft.num_workers`` data-parallel workers of ``resources.trainer_cpus`` CPUs (or one GPU)
with ``sft.engine`` (DeepSpeed ZeRO 0–3 or DDP; the worker loop is :mod:`actors.training.sft_worker`), and
resumes exactly from the last checkpoint after a worker failure or a restart of the job
(:mod:`actors.training.harness`). With a stage folder that mirrors a URI the checkpoints live in
its bucket, the driver publishes the policy and ``metrics.json``, and rank 0 the samples and logs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from actors.training import harness
from actors.training.sft_spec import EXPORT_DIR, SFTSpec, fingerprint, sft_checkpoint_order
from actors.training.sft_worker import train_loop
from pipeline import storage
from pipeline.config import ResourcesConfig
from pipeline.layout import PolicyDir

__all__ = ["ResumeError", "SFTSpec", "fit_sft", "sft_checkpoint_order", "train_sft"]

logger = logging.getLogger(__name__)

RUN_NAME = "sft"


class ResumeError(ValueError):
    """The run folder holds an SFT run whose settings or data differ from this one's."""


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
            f"{storage.display(folder)} holds an SFT run with other settings ({'; '.join(changed)}); resuming it would mix "
            "the two. Fix: use a new --run-dir, pass --no-resume to start over, or restore the settings."
        )


def fit_sft(
    spec: SFTSpec, res: ResourcesConfig, storage_dir: Path, *, max_failures: int = 2, resume: bool = True
) -> dict[str, Any]:
    """Run (or resume) the SFT Ray Train run in ``storage_dir``; returns the final checkpoint, its
    state and wall time."""
    t0 = time.perf_counter()
    run_dir = storage_dir / RUN_NAME
    if not resume:
        storage.remove(run_dir)
        storage.remove(PolicyDir(storage.local_path(spec.out_dir)).tensorboard)
    found = harness.newest_checkpoint(run_dir, sft_checkpoint_order) if resume else None
    state = harness.read_state(found) if found is not None else None
    if found is not None and state is not None:
        _check_resumable(state, spec, run_dir)
        if state["done"]:
            logger.info("[sft] already finished: %s", storage.display(found))
            return {
                "checkpoint": harness.checkpoint_at(found),
                "state": state,
                "seconds": time.perf_counter() - t0,
            }
        logger.info("[sft] resuming from %s", storage.display(found))
    result = harness.fit_stage(
        "SFT",
        train_loop,
        spec,
        run_dir,
        resume_from=found,
        res=res,
        max_failures=max_failures,
        keep_checkpoints=spec.cfg.keep_checkpoints,
    )
    return {"checkpoint": result.checkpoint, "state": result.state, "seconds": time.perf_counter() - t0}


def train_sft(
    spec: SFTSpec, res: ResourcesConfig, *, resume: bool = True, max_failures: int = 2
) -> dict[str, Any]:
    """Train (or resume) SFT and export ``<out_dir>/policy``; writes and returns ``metrics.json``
    (both published when ``out_dir`` is a URI)."""
    stage = PolicyDir(storage.local_path(spec.out_dir))
    run_storage = storage.local_path(storage.portable(stage.ray_train))
    outcome = fit_sft(spec, res, run_storage, max_failures=max_failures, resume=resume)
    target = stage.policy
    harness.export(outcome["checkpoint"], EXPORT_DIR, target)
    state = outcome["state"]
    history = state["history"]
    best = next((h for h in history if h["epoch"] == state["best_epoch"]), history[-1] if history else {})
    metrics = {
        "initial": {k: state["initial"][k] for k in ("val_loss", "val_ppl")},
        "best_epoch": state["best_epoch"],
        "best": {k: best.get(k) for k in ("val_loss", "val_ppl", "train_loss")},
        "history": history,
        "train_seconds": outcome["seconds"],
        "sizes": {"train": len(spec.train), "valid": len(spec.valid)},
        "engine": {**dataclasses.asdict(spec.cfg.engine), "num_workers": spec.cfg.num_workers},
        "policy": storage.display(target),
    }
    storage.write_text(stage.metrics, json.dumps(metrics, indent=2) + "\n")
    return metrics
