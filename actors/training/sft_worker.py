"""SFT worker: the Ray Train loop each data-parallel rank of the SFT run executes.

Consumes an :class:`SFTSpec` (tokenised train/valid examples, the start policy folder); each epoch
trains on its length-grouped shard, validates on all ranks, and reports a Ray Train checkpoint
(engine state, data position, per-rank RNG, best weights) through :mod:`actors.training.harness`.
Rank 0 writes samples and TensorBoard logs (uploaded after every epoch when the stage folder
mirrors a URI) and, at the end, the exported policy. Driven by :mod:`actors.training.sft`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from transformers import T5ForConditionalGeneration

from actors.training import harness, worker
from actors.training.sft_samples import write_samples
from actors.training.sft_spec import EXPORT_DIR, SFTSpec, fingerprint, sft_checkpoint_order
from pipeline import storage
from pipeline.layout import PolicyDir
from pipeline.models import load_policy, save_policy
from pipeline.progress import PROGRESS, Progress
from pipeline.training.identifiers import seed_everything
from pipeline.training.sft import (
    Seq2SeqBatch,
    Seq2SeqExamples,
    collate,
    data_parallel_loss,
    eval_batches,
    length_grouped_batches,
    perplexity,
    steps_per_epoch,
    token_nll,
    warmup_linear,
)

logger = logging.getLogger(__name__)

BEST_FILE = "best_model.pt"


def _all_reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def _logits(model: Any, batch: Seq2SeqBatch) -> torch.Tensor:
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        decoder_input_ids=batch.decoder_input_ids,
        use_cache=False,
    )
    return cast(torch.Tensor, out.logits)


class _Worker:
    """One rank's view of the run: data, engine, and the state that goes into checkpoints."""

    def __init__(self, spec: SFTSpec) -> None:
        self.spec, self.cfg = spec, spec.cfg
        at = worker.join(spec.torch_threads)
        self.rank, self.world, self.device = at.rank, at.world, at.device
        policy, tokenizer = load_policy(spec.start_dir)  # the same weights on every rank
        self.tokenizer = tokenizer
        self.value_head = policy.value_head.state_dict()
        pad, start = policy.config.pad_token_id, policy.config.decoder_start_token_id
        assert isinstance(pad, int), "load_policy checks that the policy has a pad token"
        self.pad_id = pad
        self.start_id = int(start) if start is not None else pad
        self.steps = steps_per_epoch(len(spec.train), self.cfg.batch_size)
        total_steps = self.steps * self.cfg.epochs
        self.lr_factor = warmup_linear(total_steps, round(self.cfg.optimizer.warmup_ratio * total_steps))
        self.engine = worker.build_engine(
            self.cfg,
            policy.policy,
            at,
            steps_per_epoch=self.steps,
            schedule=self.lr_factor,
            partition_aware=True,  # weights are read through full_state_dict only
        )
        self.state: dict[str, Any] = {
            "epoch": 0,  # epochs finished
            "step": 0,  # steps finished inside the current epoch
            "global_step": 0,
            "best_val_loss": None,
            "best_epoch": 0,
            "initial": None,
            "history": [],
            "done": False,
            "fingerprint": fingerprint(spec),
        }
        # per rank, saved with mid-epoch checkpoints: RNG and this epoch's running sums
        self.accum = [0.0, 0.0, 0.0, 0.0]  # nll, target tokens, source tokens, seconds
        self.best: dict[str, torch.Tensor] | None = None
        self.writer: Any = None
        self.tensorboard = PolicyDir(storage.local_path(spec.out_dir)).tensorboard
        self.sampler: T5ForConditionalGeneration | None = None

    # --- checkpoints -------------------------------------------------------------------------

    def restore(self, path: Path, state: dict[str, Any]) -> None:
        """Adopt a checkpoint's ``state`` and this rank's files in ``path`` (the engine is restored)."""
        self.state = state
        if self.rank == 0 and (path / BEST_FILE).is_file():
            self.best = torch.load(path / BEST_FILE, map_location="cpu", weights_only=True)
        if self.state["step"] > 0:
            mine = torch.load(path / f"rank_{self.rank}.pt", map_location="cpu", weights_only=True)
            torch.set_rng_state(mine["rng"])
            if mine.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(mine["cuda_rng"])
            self.accum = mine["accum"]
        logger.info(
            "[sft rank %d] resumed at epoch %d step %d",
            self.rank,
            self.state["epoch"] + 1,
            self.state["step"],
        )

    def report(self, metrics: dict[str, Any], *, final_export: bool = False) -> None:
        """Report with a checkpoint: the engine, this rank's RNG and running sums, rank 0's best
        weights; or, at the end, rank 0's exported policy."""
        if final_export:
            write = (lambda folder: self.export(folder / EXPORT_DIR)) if self.rank == 0 else None
            harness.report(metrics, rank=self.rank, state=self.state, write=write)
        else:
            harness.report(
                metrics, rank=self.rank, state=self.state, engine=self.engine, write=self._save_rank
            )

    def _save_rank(self, folder: Path) -> None:
        rank_state = {
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "accum": self.accum,
        }
        torch.save(rank_state, folder / f"rank_{self.rank}.pt")
        if self.rank == 0 and self.best is not None:
            torch.save(self.best, folder / BEST_FILE)

    def export(self, folder: Path) -> None:
        """Rank 0: the best weights as a ``save_policy`` folder (value head from the start policy)."""
        policy, tokenizer = load_policy(self.spec.start_dir)
        assert self.best is not None
        policy.policy.load_state_dict(self.best)
        policy.value_head.load_state_dict(self.value_head)
        save_policy(policy, tokenizer, folder)

    # --- evaluation --------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Token-level mean NLL and perplexity over the whole validation split (all ranks)."""
        batches = eval_batches(
            self.spec.valid.source_lengths, self.cfg.eval_batch_size, rank=self.rank, world_size=self.world
        )
        model = self.engine.model
        model.eval()
        nll_sum, tokens = 0.0, 0.0
        with torch.no_grad():
            for indices in batches:
                batch = self._batch(self.spec.valid, indices)
                nll, n = token_nll(_logits(model, batch), batch.labels)
                nll_sum, tokens = nll_sum + float(nll), tokens + float(n)
        model.train()
        nll_sum, tokens = _all_reduce([nll_sum, tokens], self.device, self.world)
        return {"val_loss": nll_sum / max(tokens, 1.0), "val_ppl": perplexity(nll_sum, int(tokens))}

    def write_samples(self, epoch: int, weights: dict[str, torch.Tensor] | None) -> None:
        """Rank 0: sample a response to each fixed validation context (seeded) into ``samples/epoch_N.md``."""
        if self.rank != 0 or not self.spec.samples:
            return
        model: Any = self.engine.module
        if self.engine.partitioned:  # ZeRO-3: generate with a local copy of the gathered weights
            assert weights is not None
            if self.sampler is None:
                sampler: torch.nn.Module = T5ForConditionalGeneration(cast(Any, self.engine.module).config)
                self.sampler = cast(T5ForConditionalGeneration, sampler.to(self.device))
            self.sampler.load_state_dict(weights)
            model = self.sampler
        count = len(self.spec.samples)
        inputs = self.spec.valid.subset(range(count))
        batch = collate(inputs, range(count), pad_id=self.pad_id, decoder_start_id=self.start_id)
        write_samples(model, self.tokenizer, self.spec, batch, epoch=epoch, device=self.device)

    # --- training ----------------------------------------------------------------------------

    def _batch(self, examples: Seq2SeqExamples, indices: list[int]) -> Seq2SeqBatch:
        # a rank with no examples at this step runs a fully masked placeholder so that every
        # rank joins every collective (gradient all-reduce, ZeRO-3 parameter gathers)
        batch = collate(
            examples, indices or [0], pad_id=self.pad_id, decoder_start_id=self.start_id, masked=not indices
        )
        return batch.to(self.device)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, spec = self.cfg, self.spec
        if self.state["step"] == 0:
            seed_everything(spec.seed, epoch, self.rank)  # dropout replays identically on resume
            self.accum = [0.0, 0.0, 0.0, 0.0]
        batches = length_grouped_batches(
            spec.train.source_lengths,
            spec.train.target_lengths,
            cfg.batch_size,
            seed=spec.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world,
            group_batches=cfg.group_batches,
        )
        model = self.engine.model
        model.train()
        progress = Progress(
            f"[sft] epoch {epoch + 1}/{cfg.epochs}",
            len(batches) - self.state["step"],
            unit="steps",
            every_s=30,
        )
        window = [0.0, 0.0, 0.0]  # nll, target tokens, source tokens since the last log line
        t_window, steps_in_window = time.perf_counter(), 0
        t_epoch, epoch_tokens = t_window, 0.0  # global tokens of this attempt, for the progress rate
        for step in range(self.state["step"], len(batches)):
            t0 = time.perf_counter()
            batch = self._batch(spec.train, batches[step])
            src = float(batch.source_tokens) if batches[step] else 0.0
            tgt_global, _ = _all_reduce([float(batch.target_tokens), 0.0], self.device, self.world)
            nll, n = token_nll(_logits(model, batch), batch.labels)
            loss = data_parallel_loss(nll, global_tokens=tgt_global, world_size=self.world)
            grad_norm = self.engine.step(loss)
            values = [float(nll.detach()), float(n), src]
            self.accum = [a + v for a, v in zip(self.accum, [*values, time.perf_counter() - t0], strict=True)]
            window = [a + v for a, v in zip(window, values, strict=True)]
            steps_in_window += 1
            self.state["step"] = step + 1
            self.state["global_step"] += 1
            gstep = self.state["global_step"]
            if gstep % spec.log_every == 0 or step + 1 == len(batches):
                w_nll, w_tgt, w_src = _all_reduce(window, self.device, self.world)
                elapsed = max(time.perf_counter() - t_window, 1e-9)
                scalars = {
                    "sft/train_loss": w_nll / max(w_tgt, 1.0),
                    "sft/lr": cfg.optimizer.lr * self.lr_factor(gstep - 1),
                    "sft/grad_norm": grad_norm,
                    "perf/tokens_per_s": (w_src + w_tgt) / elapsed,
                }
                self.log_scalars(scalars, gstep)
                epoch_tokens += w_src + w_tgt
                if self.rank == 0:
                    rate = epoch_tokens / max(time.perf_counter() - t_epoch, 1e-9)
                    progress.update(steps_in_window, loss=scalars["sft/train_loss"], tokens_per_s=rate)
                window, t_window, steps_in_window = [0.0, 0.0, 0.0], time.perf_counter(), 0
            checkpoint_now = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
            if checkpoint_now and step + 1 < len(batches):
                self.report({"epoch": epoch, "step": step + 1, "global_step": gstep})
            self._maybe_crash(epoch, step + 1)
        nll_sum, tgt, src, seconds = _all_reduce(self.accum, self.device, self.world)
        seconds /= self.world
        return {
            "train_loss": nll_sum / max(tgt, 1.0),
            "steps": len(batches),
            "train_tokens": int(tgt + src),
            "seconds": seconds,
            "tokens_per_s": (tgt + src) / max(seconds, 1e-9),
        }

    def _maybe_crash(self, epoch: int, step: int) -> None:
        if self.spec.crash_dir is None or (epoch + 1, step, self.rank) not in self.spec.crash_points:
            return
        marker = Path(self.spec.crash_dir) / f"crash-epoch{epoch + 1}-step{step}-rank{self.rank}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("injected failure\n")
            os._exit(1)

    def end_of_epoch(self, epoch: int, train: dict[str, Any] | None) -> dict[str, Any]:
        """Validate, keep the best weights, write samples and logs; ``epoch`` 0 is before training."""
        t0 = time.perf_counter()
        val = self.validate()  # all-reduced: every rank takes the same decisions below
        best = self.state["best_val_loss"]
        improved = epoch > 0 and not math.isnan(val["val_loss"]) and (best is None or val["val_loss"] < best)
        need_weights = improved or (self.engine.partitioned and bool(self.spec.samples))
        weights = self.engine.full_state_dict(rank=self.rank) if need_weights else None  # collective
        if improved:
            self.state.update(best_val_loss=val["val_loss"], best_epoch=epoch)
            if self.rank == 0:
                self.best = weights
        self.write_samples(epoch, weights)
        record = {"epoch": epoch, **val, **(train or {}), "eval_seconds": time.perf_counter() - t0}
        self.log_scalars({f"sft/{k}": val[k] for k in ("val_loss", "val_ppl")}, self.state["global_step"])
        if train is not None:
            self.log_scalars({"time/epoch_s": train["seconds"]}, self.state["global_step"])
        if self.writer is not None:
            self.writer.flush()
            storage.upload(self.tensorboard)  # the event files so far, to the bucket of a URI stage folder
        if self.rank == 0:
            self._log_epoch(epoch, val, train)
        return record

    def _log_epoch(self, epoch: int, val: dict[str, float], train: dict[str, Any] | None) -> None:
        logger.info(
            "[sft] epoch %d/%d: %sval loss %.4f ppl %.2f%s",
            epoch,
            self.cfg.epochs,
            f"train loss {train['train_loss']:.4f}, " if train else "",
            val["val_loss"],
            val["val_ppl"],
            f" ({train['tokens_per_s']:.0f} tokens/s, {train['seconds']:.1f} s)"
            if train
            else " (before training)",
            extra=PROGRESS,
        )


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop (see the module docstring)."""
    spec = harness.stage_spec(config, SFTSpec)
    cfg = spec.cfg
    w = _Worker(spec)
    with worker.resume(config, sft_checkpoint_order, w.engine) as resumed:
        if resumed is not None:
            w.restore(*resumed)
    if w.rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a crashed attempt logged after the checkpoint it resumes from
        w.writer = SummaryWriter(str(w.tensorboard), purge_step=w.state["global_step"] + 1)
    if w.state["initial"] is None:
        w.state["initial"] = w.end_of_epoch(0, None)

    for epoch in range(w.state["epoch"], cfg.epochs):
        train = w.train_epoch(epoch)
        record = w.end_of_epoch(epoch + 1, train)
        w.state["history"].append(record)
        w.state.update(epoch=epoch + 1, step=0)
        w.report({**record, "global_step": w.state["global_step"]})

    if w.state["best_epoch"] == 0:  # no epoch improved (NaN losses): export the last weights
        weights = w.engine.full_state_dict(rank=w.rank)
        w.best = weights if w.rank == 0 else None
        w.state["best_epoch"] = cfg.epochs
    w.state["done"] = True
    if w.writer is not None:
        w.writer.close()
        storage.upload(w.tensorboard)
    w.report({"final": True, "best_epoch": w.state["best_epoch"]}, final_export=True)
