"""Learner role: one data-parallel rank of the DeepSpeed PPO learner (policy + value head).

K ranks form a torch.distributed group (gloo on CPU, NCCL on GPU) that rank 0 hosts. Consumes
rollout shards (→ old log-probs and values), a :class:`~pipeline.ppo.experience.TrainBatch` with the
mini-batch plan (→ per-shard PPO stats), and save/load/export requests; produces weights for the
rollout workers (rank 0): an object-store reference, or a broadcast over the weight-sync group
(:mod:`actors.ppo.weight_sync`) that rank 0 joins beside DeepSpeed's group. Every method but the
``sync_*``/``join_sync`` set-up must be called on all ranks (ZeRO-3 gathers collectively).
Resources: ``resources.learner_cpus`` CPUs and ``resources.learner_gpus`` of a GPU per rank.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from actors.cluster.placement import RoleProcess
from actors.ppo.checkpoints import LEARNER
from actors.ppo.weight_sync import WeightGroup, checksum, device_id, host_store, layout, sync_tensors
from actors.training.engines import DeepSpeedEngine, make_engine, use_deepspeed_on
from pipeline import storage
from pipeline.config import LearnerConfig, OptimizerConfig, PPOConfig
from pipeline.models import load_policy, save_policy, use_fastest_attention
from pipeline.ppo.experience import IntArray, TrainBatch
from pipeline.ppo.iteration import iteration_lr_lambda, ppo_loss, response_forward

logger = logging.getLogger(__name__)

RNG_FILE = "rng_rank{rank}.pt"
RANK_FILE = re.compile(r"(?:zero_pp_rank_|rng_rank)(\d+)(?=[_.])")
"""The rank a checkpoint file belongs to, by its name: DeepSpeed's per-rank ZeRO shards
(``[bf16_]zero_pp_rank_<r>_mp_rank_00_{optim,model}_states.pt``) and :data:`RNG_FILE`. DeepSpeed
writes every other file (``mp_rank_00_model_states.pt``, ``latest``, ``zero_to_fp32.py``) on rank 0."""


def own_files(folder: Path, rank: int) -> list[Path]:
    """The files under ``folder`` that learner rank ``rank`` wrote in :meth:`LearnerWorker.save`: those
    :data:`RANK_FILE` names as its own, and for rank 0 those that name no rank. Ranks on one node share
    the folder; each uploads exactly its own files, whole once its save returned."""
    mine = []
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        match = RANK_FILE.search(file.name)
        if (int(match.group(1)) if match else 0) == rank:
            mine.append(file)
    return mine


class LearnerWorker(RoleProcess):
    """One learner rank; build the group with :meth:`address` (rank 0) then :meth:`setup` on every rank."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        policy_dir: str,
        ppo: PPOConfig,
        learner: LearnerConfig,
        torch_threads: int = 1,
        use_gpu: bool = False,
    ) -> None:
        torch.set_num_threads(torch_threads)
        self.rank, self.world_size, self.policy_dir = rank, world_size, policy_dir
        self.ppo, self.learner, self.use_gpu = ppo, learner, use_gpu
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        self._weights: WeightGroup | None = None
        self._sync_store: Any = None
        self._saved_env: dict[str, str | None] | None = None
        """The rendezvous variables as they were before :meth:`setup` (restored by :meth:`close`)."""

    def address(self) -> tuple[str, int]:
        """This node's address and a free TCP port on it, for the process group's rendezvous."""
        host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return host, int(s.getsockname()[1])

    def setup(self, master_addr: str, master_port: int, seed: int, timeout_s: float = 600.0) -> int:
        """Join the process group, load the starting policy and build the DeepSpeed engine."""
        use_deepspeed_on(self.device)
        import deepspeed

        rendezvous = {
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "RANK": str(self.rank),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": str(self.world_size),
        }
        self._saved_env = {key: os.environ.get(key) for key in rendezvous}
        os.environ.update(rendezvous)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() != self.world_size:
            raise RuntimeError(
                f"this process already belongs to a process group of {torch.distributed.get_world_size()} "
                f"ranks; learner rank {self.rank} needs one of {self.world_size}"
            )
        deepspeed.init_distributed(  # joins nothing new where an earlier in-process learner's group of one is
            dist_backend="nccl" if self.use_gpu else "gloo",
            auto_mpi_discovery=False,
            timeout=dt.timedelta(seconds=timeout_s),
            verbose=False,
        )
        torch.manual_seed(seed)
        model, self.tokenizer = load_policy(self.policy_dir)
        self.start_id = int(model.config.decoder_start_token_id)
        use_fastest_attention(model, self.device)
        updates_per_iteration = self.ppo.rollout_batch_size // self.ppo.mini_batch_size * self.ppo.ppo_epochs
        engine = make_engine(
            # bf16 is autocast around the forward passes: DeepSpeed keeps fp32
            dataclasses.replace(self.learner.engine, precision="fp32"),
            # trl's PPO uses plain Adam: no weight decay
            OptimizerConfig(lr=self.ppo.lr, weight_decay=0.0, max_grad_norm=self.ppo.max_grad_norm),
            model.to(self.device),
            total_steps=self.ppo.total_steps * updates_per_iteration,
            micro_batch=self.ppo.mini_batch_size // self.world_size,
            world_size=self.world_size,
            schedule=iteration_lr_lambda(
                total_steps=self.ppo.total_steps,
                updates_per_iteration=updates_per_iteration,
                schedule=self.ppo.lr_schedule,
            ),
            partition_aware=True,
        )
        assert isinstance(engine, DeepSpeedEngine), "validation: learner.engine.kind is deepspeed"
        self.engine = engine
        # dropout stays off in PPO (as trl: the policy is loaded in eval mode), so the first
        # epoch's ratio is exactly 1 and old log-probs match the update's forward pass
        self.engine.model.eval()
        return self.rank

    def close(self) -> None:
        """Put the rendezvous variables back (a learner in the driver's process, ``Config.in_process_learner``,
        leaves its environment as it found it). Its process group of one stays for the next in-process
        learner of the process: DeepSpeed keeps groups derived from it, which a new one would orphan. An
        actor rank needs none of it (its process ends)."""
        if self._weights is not None:
            self._weights.close()
            self._weights = None
        for key, value in (self._saved_env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = None

    def _autocast(self) -> Any:
        """``torch.autocast(bfloat16)`` for ``learner.engine.precision=bf16`` (fp32 weights and optimizer)."""
        enabled = self.learner.engine.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _batch(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(self.device) for t in tensors]

    @torch.no_grad()
    def evaluate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(old_logprobs, values)`` ``(B_k, T_r)`` of this rank's shard under the current weights."""
        p, pm, r, rm = self._batch(prompt_ids, prompt_mask, response_ids, response_mask)
        with self._autocast():
            logprobs, values, _ = response_forward(
                self.engine.model, p, pm, r, start_id=self.start_id, response_mask=rm
            )
        return logprobs.float().cpu(), values.float().cpu()

    def update(
        self, batch: TrainBatch, plan: list[IntArray], global_tokens: list[float]
    ) -> list[dict[str, float]]:
        """The PPO epochs: for mini-batch ``j`` of ``plan`` this rank takes its contiguous share of
        rows, and one optimiser step is taken per mini-batch. Returns one stats dict per mini-batch."""
        stats = []
        per_rank = len(plan[0]) // self.world_size
        for rows, tokens in zip(plan, global_tokens, strict=True):
            shard = batch.select(rows[self.rank * per_rank : (self.rank + 1) * per_rank])
            shard = shard.to(self.device)
            with self._autocast():
                loss, row = ppo_loss(
                    self.engine.model,
                    shard,
                    cfg=self.ppo,
                    start_id=self.start_id,
                    global_tokens=tokens,
                    world_size=self.world_size,
                )
            row["ppo/grad_norm"] = self.engine.step(loss)
            row["ppo/lr"] = float(self.engine.engine.get_lr()[0])
            stats.append(row)
        return stats

    def publish(self) -> list[Any] | None:
        """Rank 0: ``[ref]`` to the policy's and value head's weights (float32 CPU) put once in the
        object store (the rollout workers compute old log-probabilities and values as they sample)."""
        state = self.engine.full_state_dict(rank=self.rank, copy=False)  # ray.put copies
        if state is None:
            return None
        return [ray.put(state)]

    # ----- collective weight sync (learner.weight_sync=collective) ---------------------------------

    def sync_device_id(self) -> str | None:
        """The UUID of this rank's GPU (``None`` on the CPU)."""
        return device_id(self.device)

    def sync_store(self, world_size: int, timeout_s: float) -> tuple[str, int]:
        """Rank 0: host a new rendezvous store for a build of the weight-sync group; its address."""
        host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._sync_store, port = host_store(host, world_size, timeout_s)
        return host, port

    def join_sync(self, spec: dict[str, Any]) -> str:
        """Rank 0: join (rank 0 of) the weight-sync group ``spec`` describes; the model's layout digest."""
        if self._weights is not None:
            self._weights.close()
        self._weights = WeightGroup.join(**spec, own_host=spec["host"], store=self._sync_store)
        return layout(self.engine.module)

    def broadcast_weights(self, bucket_bytes: int) -> int:
        """All ranks (under ZeRO-3 each takes part in gathering the parameters); rank 0 broadcasts the
        policy and value head to the rollout workers. Returns the bytes sent (0 on other ranks)."""
        with self.engine.gathered() as module:
            if self.rank != 0:
                return 0
            if self._weights is None:
                raise RuntimeError("learner rank 0 is in no weight-sync group: call join_sync first")
            return self._weights.broadcast(sync_tensors(module), bucket_bytes=bucket_bytes)

    def weights_checksum(self) -> str | None:
        """All ranks: SHA-256 of the full weights (:func:`actors.ppo.weight_sync.checksum`) on rank 0."""
        with self.engine.gathered() as module:
            return checksum(module) if self.rank == 0 else None

    def save(self, checkpoint: str) -> None:
        """DeepSpeed checkpoint (model, optimizer, scheduler) plus this rank's RNG states, into the
        checkpoint folder's :data:`~actors.ppo.checkpoints.LEARNER` subfolder.

        When the folder mirrors an object store, this rank uploads the files it wrote (:func:`own_files`)
        before returning, and drops its local copies (a reader fetches the checkpoint whole): the
        controller marks the checkpoint complete only after every rank returned.
        """
        path = Path(checkpoint) / LEARNER
        path.mkdir(parents=True, exist_ok=True)
        self.engine.save(path, rank=self.rank)
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        torch.save(rng, path / RNG_FILE.format(rank=self.rank))
        if storage.uri_of(path) is None:
            return
        started, sent = time.perf_counter(), 0
        files = own_files(path, self.rank)
        for file in files:
            sent += storage.upload(file)
            file.unlink()
        logger.info(
            "learner rank %d uploaded %d files (%.1f MB) to %s in %.2f s",
            self.rank, len(files), sent / 1e6, storage.display(path), time.perf_counter() - started,
        )  # fmt: skip

    def load(self, checkpoint: str) -> None:
        """Restore what :meth:`save` wrote (first bringing this node's copy of the complete
        checkpoint up to date: this node may never have seen it)."""
        path = storage.fetch(Path(checkpoint)) / LEARNER
        self.engine.load(path)
        self._adopt_lr()
        self.engine.model.eval()
        rng_file = path / RNG_FILE.format(rank=self.rank)
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])

    def _adopt_lr(self) -> None:
        """After a restore: ``ppo.lr`` of the config in force, at the restored position of the schedule
        (the checkpoint's scheduler would otherwise keep the learning rate it was saved with)."""
        scheduler = self.engine.engine.lr_scheduler
        scheduler.base_lrs = [self.ppo.lr for _ in scheduler.base_lrs]
        for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = self.ppo.lr
            group["lr"] = self.ppo.lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def export(self, folder: str) -> str | None:
        """Rank 0 writes the policy and value head as a Hugging Face folder (:func:`save_policy`)."""
        state = self.engine.full_state_dict(rank=self.rank)
        if state is None:
            return None
        model, _ = load_policy(self.policy_dir)
        model.load_state_dict(state)
        save_policy(model, self.tokenizer, folder)
        return folder
