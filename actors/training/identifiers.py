"""Identifier training role: one Ray Train ``TorchTrainer`` run per empathy mechanism.

Owns the three identifier training runs (ER, IP, EX), concurrent when the cluster has CPUs for
more than one. Consumes EPITOME pairs with gold levels and a tokenizer folder; produces, per
mechanism, a ``save_identifier`` folder (the best epoch by dev macro-F1) and a metrics report on
dev and test. Each run uses ``identifiers.num_workers`` data-parallel workers of
``resources.trainer_cpus`` CPUs (``identifiers.engine``), checkpoints every epoch (model,
optimiser, scheduler, early-stopping state, best weights) and resumes from the last checkpoint
after a worker failure or a restart of the job (:mod:`actors.training.harness`). With an output
folder that mirrors a URI the checkpoints live in its bucket and the driver publishes each export
(its ``metrics.json`` inside), so a run resumes, and its identifiers load, on any node.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import ray
import torch
from safetensors.torch import load_file, save_file

from actors.training import harness, worker
from actors.training.engines import TrainEngine
from pipeline import storage
from pipeline.config import IdentifiersConfig, ResourcesConfig
from pipeline.evaluation.classification import majority_baseline
from pipeline.layout import IdentifiersDir, StageDir
from pipeline.models import EmpathyIdentifier, build_identifier, load_tokenizer, save_identifier
from pipeline.progress import PROGRESS, Progress
from pipeline.training.identifiers import (
    LabeledPairs,
    batch_loss,
    class_weights,
    epoch_batches,
    evaluate,
    is_better,
    seed_everything,
    steps_per_epoch,
)

logger = logging.getLogger(__name__)

BEST_FILE = "best_model.safetensors"
EXPORT_DIR = "identifier"


@dataclass(frozen=True)
class TrainSpec:
    """Everything one mechanism's training run needs (shipped to every worker)."""

    mechanism: str
    cfg: IdentifiersConfig
    tokenizer_dir: str
    """The identifier tokenizer's folder or URI (:func:`pipeline.storage.portable`), published."""
    train: LabeledPairs
    dev: LabeledPairs
    test: LabeledPairs
    seed: int
    torch_threads: int = 1
    crash_at_epoch: int | None = None
    """Fault injection for tests: the rank-0 worker dies once after checkpointing this epoch."""
    crash_marker: str | None = None
    """File that records the injected crash happened (so the restarted run does not repeat it)."""


def identifier(engine: TrainEngine) -> EmpathyIdentifier:
    """The engine's unwrapped model, typed."""
    return cast(EmpathyIdentifier, engine.module)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop for one mechanism (see the module docstring)."""
    spec = harness.stage_spec(config, TrainSpec)
    cfg = spec.cfg
    at = worker.join(spec.torch_threads)
    rank, world, device = at.rank, at.world, at.device
    tokenizer = load_tokenizer(spec.tokenizer_dir, key="identifier tokenizer")
    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    weights = class_weights(spec.train.labels, cfg.class_weighting)
    steps = steps_per_epoch(len(spec.train), cfg.batch_size, world)
    engine = worker.build_engine(cfg, build_identifier(cfg, tokenizer), at, steps_per_epoch=steps)
    lengths = {"max_context_len": cfg.max_context_len, "max_response_len": cfg.max_response_len}

    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": -1, "bad_epochs": 0, "history": []}
    best_weights = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    with worker.resume(config, epoch_checkpoint_order, engine) as resumed:
        if resumed is not None:
            folder, state = resumed
            best_weights = load_file(folder / BEST_FILE)
            logger.info("[%s rank %d] resumed after epoch %d", spec.mechanism, rank, state["epoch"])

    for epoch in range(state["epoch"], cfg.epochs):
        if state["bad_epochs"] >= cfg.patience:
            logger.info("[%s] early stop: no dev macro-F1 gain for %d epochs", spec.mechanism, cfg.patience)
            break
        seed_everything(spec.seed, epoch, rank)
        engine.model.train()
        t0, losses = time.perf_counter(), []
        progress = Progress(
            f"[{spec.mechanism}] epoch {epoch + 1}/{cfg.epochs}", steps, unit="steps", every_s=30
        )
        for indices in epoch_batches(
            len(spec.train), cfg.batch_size, seed=spec.seed, epoch=epoch, rank=rank, world_size=world
        ):
            loss = batch_loss(engine.model, tokenizer, spec.train, indices, weights, device=device, **lengths)
            engine.step(loss)
            losses.append(float(loss.detach()))
            if rank == 0:
                progress.update(loss=losses[-1])
        dev = evaluate(
            identifier(engine), tokenizer, spec.dev, device=device, batch_size=cfg.score_batch_size, **lengths
        )
        if is_better(dev["macro_f1"], state["best"]):
            state.update(best=dev["macro_f1"], best_epoch=epoch, bad_epochs=0)
            best_weights = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "train_loss": sum(losses) / max(len(losses), 1),
            "dev_macro_f1": dev["macro_f1"],
            "dev_accuracy": dev["accuracy"],
            "seconds": seconds,
            "pairs_per_s": len(spec.train) / seconds,
        }
        state["history"].append(record)
        state["epoch"] = epoch + 1
        logger.info(
            "[%s] epoch %d/%d loss %.4f dev macro-F1 %.4f acc %.4f (%.1f pairs/s)",
            spec.mechanism, epoch + 1, cfg.epochs, record["train_loss"], dev["macro_f1"], dev["accuracy"],
            record["pairs_per_s"], extra=PROGRESS,
        )  # fmt: skip
        harness.report(
            {**record, "final": False},
            rank=rank,
            state=state,
            engine=engine,
            write=functools.partial(_save_best, best_weights) if rank == 0 else None,
        )
        if (
            spec.crash_at_epoch == epoch
            and rank == 0
            and spec.crash_marker
            and not os.path.exists(spec.crash_marker)
        ):
            Path(spec.crash_marker).write_text(f"crashed after epoch {epoch}\n")
            os._exit(1)

    engine.module.load_state_dict(best_weights)
    final = {
        split: evaluate(
            identifier(engine), tokenizer, pairs, device=device, batch_size=cfg.score_batch_size, **lengths
        )
        for split, pairs in (("dev", spec.dev), ("test", spec.test))
    }
    harness.report(
        _final_metrics(state, final),
        rank=rank,
        state={**state, "eval": final},  # the finished run, whole: a new run of the job takes it as it is
        write=functools.partial(_export, identifier(engine), tokenizer) if rank == 0 else None,
    )


def _final_metrics(state: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    return {"final": True, "epoch": state["epoch"], "best_epoch": state["best_epoch"], "eval": final}


def _save_best(best: dict[str, torch.Tensor], folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in best.items()}, folder / BEST_FILE)


def _export(model: EmpathyIdentifier, tokenizer: Any, folder: Path) -> None:
    save_identifier(model, tokenizer, folder / EXPORT_DIR)


def epoch_checkpoint_order(folder: Path) -> int | None:
    """Completeness and order of a mechanism's checkpoints: epochs finished, for an epoch checkpoint
    with its state and best weights (the final one, holding the export, is not resumed from); a
    mirror path is looked at in its bucket."""
    state = harness.read_state(folder)
    return int(state["epoch"]) if state is not None and storage.exists(folder / BEST_FILE) else None


def finished_order(cfg: IdentifiersConfig, folder: Path) -> int | None:
    """Whether a mechanism's checkpoint is the final one of a run that ``cfg`` would not train further
    (all epochs, or early-stopped): its epochs, else ``None``; a mirror path is read in its bucket.
    Only the final checkpoint's state holds ``eval``, written after the export."""
    state = harness.read_state(folder)
    if state is None or "eval" not in state:
        return None
    done = state["epoch"] >= cfg.epochs or state["bad_epochs"] >= cfg.patience
    return int(state["epoch"]) if done else None


def fit_mechanism(
    spec: TrainSpec, res: ResourcesConfig, storage_dir: Path, *, max_failures: int = 2, resume: bool = True
) -> dict[str, Any]:
    """Run (or resume) one mechanism's Ray Train run in ``storage_dir``; returns its result summary."""
    run_dir = storage_dir / f"identifier-{spec.mechanism}"
    t0 = time.perf_counter()
    finished = (
        harness.newest_checkpoint(run_dir, functools.partial(finished_order, spec.cfg)) if resume else None
    )
    if finished is not None:  # a run of the job that finished: export its result again, train nothing
        logger.info("[%s] already trained: %s", spec.mechanism, storage.display(finished))
        state = harness.read_state(finished)
        assert state is not None, "finished_order read it"
        result = harness.StageResult(
            harness.checkpoint_at(finished), _final_metrics(state, state["eval"]), state
        )
        return {"result": result, "seconds": time.perf_counter() - t0}
    resume_from = harness.newest_checkpoint(run_dir, epoch_checkpoint_order) if resume else None
    if resume_from is not None:
        logger.info("[%s] resuming from %s", spec.mechanism, storage.display(resume_from))
    result = harness.fit_stage(
        f"identifier training ({spec.mechanism})",
        train_loop,
        spec,
        run_dir,
        resume_from=resume_from,
        res=res,
        max_failures=max_failures,
        keep_checkpoints=2,
    )
    return {"result": result, "seconds": time.perf_counter() - t0}


def train_identifiers(
    specs: list[TrainSpec], res: ResourcesConfig, out_dir: Path, *, resume: bool = True, max_failures: int = 2
) -> dict[str, Any]:
    """Train every mechanism (concurrently when CPUs allow) and export ``out_dir/<M>/``.

    Writes ``out_dir/<M>/metrics.json`` (dev and test reports, majority baseline, per-epoch
    history, wall time) and returns ``{mechanism: metrics}``; each ``out_dir/<M>`` is published
    when ``out_dir`` mirrors a URI.
    """
    stage = IdentifiersDir(out_dir)
    run_storage = storage.local_path(storage.portable(stage.ray_train))
    cpus = float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
    per_run = max(spec.cfg.num_workers for spec in specs) * res.trainer_cpus
    parallel = max(1, min(len(specs), int(cpus // max(per_run, 1e-9))))
    logger.info("training %d identifiers, %d at a time", len(specs), parallel)
    outcomes = harness.fit_concurrently(
        {
            s.mechanism: functools.partial(
                fit_mechanism, s, res, run_storage, max_failures=max_failures, resume=resume
            )
            for s in specs
        },
        parallel,
    )
    summary = {}
    for spec in specs:
        outcome = outcomes[spec.mechanism]
        result = outcome["result"]
        target = stage.mechanism(spec.mechanism)
        harness.export(result.checkpoint, EXPORT_DIR, target, publish=False)
        state = result.state
        metrics = {
            "mechanism": spec.mechanism,
            "dev": result.metrics["eval"]["dev"],
            "test": result.metrics["eval"]["test"],
            "majority_baseline_test": majority_baseline(spec.train.labels, spec.test.labels),
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "history": state["history"],
            "train_seconds": outcome["seconds"],
            "sizes": {"train": len(spec.train), "dev": len(spec.dev), "test": len(spec.test)},
        }
        StageDir(target).metrics.write_text(json.dumps(metrics, indent=2) + "\n")
        storage.publish(target)  # the identifier with its metrics, marker last
        summary[spec.mechanism] = metrics
    return summary
