"""The PPO controller: one loop that reads like single-process code over the Ray role groups.

Each iteration: sample prompts → rollout workers generate → reward scorers, reference policy and
learner values run concurrently → KL-shaped rewards and GAE (pure functions) → learner PPO epochs
→ weights published to the rollout workers with a new version (object store, or a broadcast over
their own process group: ``learner.weight_sync``). Every phase is timed. Drives the role groups
(:mod:`actors.ppo.roles`); owns the KL controller, the running score statistics, checkpoints and
the metrics log (:mod:`actors.ppo.metrics`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from actors.cluster.group import Group, RoleDiedError, gather
from actors.cluster.placement import Reservation
from actors.ppo.checkpoints import CONTROLLER, CheckpointStore
from actors.ppo.metrics import IterationReport, MetricsLog, PhaseTimer, Sink
from actors.ppo.roles import PPORoles
from pipeline import storage
from pipeline.config import Config
from pipeline.config.diff import config_changes
from pipeline.generation import encode_prompts
from pipeline.layout import PPODir
from pipeline.models import load_tokenizer
from pipeline.ppo.experience import IntArray, PromptBatch, RewardScores, Rollouts, pad_stack, split_evenly
from pipeline.ppo.iteration import average_stats, build_train_batch, derive_seed, minibatch_plan, prompt_rows
from pipeline.ppo.kl import KLController, make_kl_controller
from pipeline.ppo.rewards import RunningMoments
from pipeline.progress import Progress

__all__ = ["Hook", "IterationReport", "PPOController", "PPOInputs", "Sink"]

logger = logging.getLogger(__name__)

Hook = Callable[["PPOController", int, str], None]
"""Called as ``hook(controller, iteration, phase)`` before each phase (fault-injection tests)."""


@dataclass(frozen=True)
class PPOInputs:
    """What PPO starts from: the SFT policy, the identifiers and the prompts with gold levels."""

    policy_dir: Path
    identifiers_dir: Path
    contexts: list[str]
    gold_levels: dict[str, IntArray]


class PPOController:
    """Runs ``cfg.ppo.total_steps`` PPO iterations into ``out`` (resuming from its checkpoints).

    Every role is placed in one bundle of ``reservation`` (by default one the controller makes from
    :func:`~actors.cluster.placement.ppo_bundles` and releases on :meth:`shutdown`); each iteration's
    :class:`IterationReport` goes to every sink.
    """

    def __init__(
        self,
        cfg: Config,
        inputs: PPOInputs,
        out: PPODir,
        *,
        sinks: Sequence[Sink] = (),
        hooks: Sequence[Hook] = (),
        reservation: Reservation | None = None,
    ) -> None:
        self.cfg, self.inputs, self.out, self.hooks, self.sinks = cfg, inputs, out, list(hooks), list(sinks)
        self.tokenizer = load_tokenizer(str(inputs.policy_dir), key="PPO start policy")
        self.store = CheckpointStore(out.checkpoints, keep=cfg.ppo.keep_checkpoints)
        self.metrics = MetricsLog(out.log, out.tensorboard)
        self.iteration, self.samples, self.version, self.learner_recoveries = 0, 0, 0, 0
        self.kl: KLController = make_kl_controller(cfg.ppo)
        self.moments = RunningMoments()
        self.roles = PPORoles(
            cfg,
            inputs.policy_dir,
            inputs.identifiers_dir,
            reservation=reservation,
            version=lambda: self.version,
        )
        roles = self.roles
        self.rollout, self.reward, self.reference = roles.rollout, roles.reward, roles.reference
        self.sync, self.reservation = roles.sync, roles.reservation

    @property
    def learner(self) -> Group | None:
        """The learner group while it runs."""
        return self.roles.learner

    def groups(self) -> dict[str, Group]:
        """Every role group that is running, by role."""
        return self.roles.groups()

    def shutdown(self) -> None:
        """End every actor this controller started and release a reservation it made."""
        self.roles.shutdown()
        self.metrics.close()

    # ----- the loop --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train to ``ppo.total_steps``, recovering the learner from checkpoints; returns the summary."""
        total = self.cfg.ppo.total_steps
        self._restore()
        with Progress("PPO", total, unit="it", every_s=0.0) as progress:
            progress.done = self.iteration
            while self.iteration < total:
                try:
                    row = self.step(self.iteration + 1)
                    progress.update(
                        1,
                        reward=row["reward/score"],
                        kl=row["rollout/kl"],
                        kl_coef=row["rollout/kl_coef"],
                        samples_per_s=row["perf/samples_per_s"],
                    )
                    checkpoint = None
                    if self.iteration % self.cfg.ppo.save_every == 0 or self.iteration == total:
                        checkpoint = self.save()
                except RoleDiedError as exc:  # a learner rank died, mid-checkpoint too
                    if exc.role != "learner":
                        raise
                    self._recover_learner(exc)
                    progress.done = self.iteration
                    continue
                report = IterationReport(self.iteration, row, checkpoint)
                for sink in self.sinks:
                    sink(report)
        policy = self.export_policy(self.out.policy)
        return {
            "iterations": self.iteration,
            "samples": self.samples,
            "version": self.version,
            "policy": storage.display(policy),
            "learner_recoveries": self.learner_recoveries,
            "node_losses": len(self.roles.node_losses),
            "worker_restarts": {g.role: g.restarts for g in (self.rollout, self.reward, self.reference)},
        }

    def export_policy(self, folder: Path) -> Path:
        """Write the learner's current policy and value head to ``folder`` (a Hugging Face folder, as
        ``ppo/policy``); a sink or hook can score the policy mid-run this way (a sweep's dev metric)."""
        gather(self.roles.learner_group().submit_all("export", str(folder)))
        return folder

    def _hook(self, iteration: int, phase: str) -> None:
        for hook in self.hooks:
            hook(self, iteration, phase)

    def step(self, iteration: int) -> dict[str, float]:
        """One PPO iteration; appends its metrics row and returns it."""
        cfg, t = self.cfg, PhaseTimer()
        learner = self.roles.learner_group()
        start = time.perf_counter()
        with t("sample"):
            chunks = self.prompt_chunks(iteration)
        self._hook(iteration, "generate")
        with t("generate"):
            parts: list[Rollouts] = gather(self.rollout.submit("generate", [(c,) for c in chunks]))[0]
            rollouts = Rollouts.concat(parts)
        self._hook(iteration, "evaluate")
        from_rollout = self.old_logprobs_from_rollout(rollouts)
        with t("evaluate"):  # identifiers, reference policy (and learner values) run concurrently
            p = rollouts.prompts
            scored = self.reward.submit(
                "score", [(r.prompts.contexts, r.responses, r.prompts.gold_levels) for r in parts]
            )
            # side by side, or the scorers alone first so that the rest then has every core
            scores = None if cfg.resources.overlap_evaluate else gather(scored)[0]
            pending = [
                self.reference.submit(
                    "logprobs",
                    [
                        (r.prompts.prompt_ids, r.prompts.prompt_mask, r.response_ids, r.response_mask)
                        for r in parts
                    ],
                ),
            ]
            if not from_rollout:
                shards = split_evenly(range(len(rollouts)), len(learner))
                pending.append(
                    learner.submit(
                        "evaluate",
                        [
                            (
                                p.prompt_ids[s],
                                p.prompt_mask[s],
                                rollouts.response_ids[s],
                                rollouts.response_mask[s],
                            )
                            for s in shards
                        ],
                    )
                )
            if scores is None:
                scores, ref_parts, *value_parts = gather(scored, *pending)
            else:
                ref_parts, *value_parts = gather(*pending)
        for name, done in zip(("score", "reference", "values"), [scored, *pending], strict=False):
            t.seconds[f"time/{name}"] = (done.finished or done.started) - done.started
        if from_rollout:
            assert rollouts.values is not None
            old_logprobs, old_values = rollouts.logprobs, rollouts.values
            t.seconds["time/values"] = 0.0
        else:
            old_logprobs = torch.cat([lp for lp, _ in value_parts[0]])
            old_values = torch.cat([v for _, v in value_parts[0]])
        with t("advantages"):
            batch, stats = build_train_batch(
                rollouts,
                RewardScores.concat(scores),
                ref_logprobs=pad_stack(ref_parts, value=0.0),
                old_logprobs=old_logprobs,
                old_values=old_values,
                kl_coef=self.kl.value,
                ppo=cfg.ppo,
                reward=cfg.reward,
                moments=self.moments,
            )
            plan = minibatch_plan(
                len(batch), mini_batch_size=cfg.ppo.mini_batch_size, epochs=cfg.ppo.ppo_epochs,
                seed=derive_seed(cfg.run.seed, iteration, 1),
            )  # fmt: skip
            tokens = [float(batch.response_mask[rows].sum()) for rows in plan]
            stats["rollout/old_logprobs_from_rollout"] = float(from_rollout)
        self._hook(iteration, "update")
        with t("update"):
            batch_ref = ray.put(batch)
            per_rank = gather(learner.submit_all("update", batch_ref, plan, tokens))[0]
            stats.update(average_stats([row for rank_rows in per_rank for row in rank_rows]))
            # before the first optimiser step the ratio is 1 up to float rounding: the gap between the
            # old log-probabilities (rollout workers or learner) and the learner's own forward pass
            stats["ppo/first_ratio_gap"] = max(rank_rows[0]["ppo/ratio_max_dev"] for rank_rows in per_rank)
        self._hook(iteration, "publish")
        with t("publish"):
            self.publish(self.version + 1)
        self.kl.update(stats["rollout/kl"], len(batch))
        self.iteration, self.samples = iteration, self.samples + len(batch)
        wall = time.perf_counter() - start
        row = {
            "iteration": iteration,
            "samples": self.samples,
            "version": self.version,
            "rollout/version": rollouts.version,
            **stats,
            **t.seconds,
            "time/iteration": wall,
            "perf/samples_per_s": len(batch) / wall,
            "perf/response_tokens_per_s": float(batch.response_mask.sum()) / wall,
        }
        self.metrics.append(row)
        return row

    def old_logprobs_from_rollout(self, rollouts: Rollouts) -> bool:
        """Whether PPO's old log-probabilities and values are the rollout workers' (``ppo.old_logprobs``):
        only for rollouts of the learner's current version that carry values."""
        mode = self.cfg.ppo.old_logprobs
        if mode == "auto":
            fp32 = self.cfg.rollout.precision == "fp32" and self.cfg.learner.engine.precision == "fp32"
            mode = "rollout" if fp32 else "learner"
        return mode == "rollout" and rollouts.values is not None and rollouts.version == self.version

    def prompt_chunks(self, iteration: int) -> list[PromptBatch]:
        """The iteration's prompts in generation chunks of ``rollout.batch_size``, each with its own seed.

        Chunks, not workers, fix the sampler's batches and seeds, so results do not depend on how
        many rollout workers share the chunks.
        """
        cfg = self.cfg
        rows = prompt_rows(
            iteration,
            batch_size=cfg.ppo.rollout_batch_size,
            num_rows=len(self.inputs.contexts),
            seed=cfg.run.seed,
        )
        # length-sorted, so each generation chunk pads little (a deterministic order: resume and
        # worker counts do not change it)
        lengths = [len(ids) for ids in self.tokenizer([self.inputs.contexts[i] for i in rows])["input_ids"]]
        rows = rows[np.argsort(np.minimum(lengths, cfg.model.max_source_len), kind="stable")]
        size = cfg.rollout.batch_size
        chunks = []
        for k, start in enumerate(range(0, len(rows), size)):
            idx = rows[start : start + size]
            chunks.append(
                encode_prompts(
                    self.tokenizer,
                    [self.inputs.contexts[i] for i in idx],
                    max_source_len=cfg.model.max_source_len,
                    index=idx,
                    gold_levels={m: v[idx] for m, v in self.inputs.gold_levels.items()},
                    seed=derive_seed(cfg.run.seed, iteration, 0, k),
                )
            )
        return chunks

    def publish(self, version: int) -> None:
        """The learner's weights to every rollout worker as ``version`` (see :mod:`actors.ppo.weight_sync`)."""
        self.roles.publish(version)
        self.version = version

    def weight_checksums(self) -> tuple[str, list[str]]:
        """SHA-256 of the learner's full weights and of each rollout worker's (equal after a publish)."""
        learner, workers = gather(
            self.roles.learner_group().submit_all("weights_checksum"),
            self.rollout.submit_all("weights_checksum"),
        )
        return learner[0], workers

    # ----- checkpoints, recovery, metrics ----------------------------------------------------

    def save(self) -> Path:
        """Checkpoint the learner and the controller state atomically (see :class:`CheckpointStore`;
        in an object store every learner rank uploads its own files, the controller its state, and the
        checkpoint is marked complete once all of them are there)."""
        state = {
            "iteration": self.iteration,
            "samples": self.samples,
            "version": self.version,
            "kl": self.kl.state_dict(),
            "moments": self.moments.state_dict(),
            "seed": self.cfg.run.seed,
            "data_position": self.samples,
            "num_prompts": len(self.inputs.contexts),
            "config": self.cfg.to_dict(),
        }
        with self.store.writing(self.iteration) as folder:
            gather(self.roles.learner_group().submit_all("save", str(folder)))
            storage.write_text(folder / CONTROLLER, json.dumps(state, indent=2))
        self.metrics.publish()
        saved = self.store.folder(self.iteration)
        logger.info("checkpoint: iteration %d -> %s", self.iteration, storage.display(saved))
        return saved

    def _restore(self) -> None:
        """Adopt the latest checkpoint (or the start), load it into the learner and publish the weights."""
        folder = self.store.latest()
        learner = self.roles.learner_group()
        if folder is None:
            self.iteration = self.samples = self.version = 0
            self.kl, self.moments = make_kl_controller(self.cfg.ppo), RunningMoments()
        else:
            text = storage.read_text(folder / CONTROLLER)  # from the store: this node may never have seen it
            if text is None:
                raise FileNotFoundError(
                    f"checkpoint {storage.display(folder)} has no {CONTROLLER}. Fix: delete that checkpoint "
                    "folder to resume from the one before it, or start a fresh run folder."
                )
            state = json.loads(text)
            if state["num_prompts"] != len(self.inputs.contexts) or state["seed"] != self.cfg.run.seed:
                raise ValueError(
                    f"checkpoint {storage.display(folder)} was made with {state['num_prompts']} prompts and seed {state['seed']}; "
                    f"this run has {len(self.inputs.contexts)} and {self.cfg.run.seed}. Fix: resume with the "
                    "same data and run.seed, or start a fresh run folder."
                )
            gather(learner.submit_all("load", str(folder)))  # each rank fetches it to its node
            self.iteration, self.samples, self.version = (
                state["iteration"],
                state["samples"],
                state["version"],
            )
            self.kl = self._restored_kl(state)
            self.moments.load_state_dict(state["moments"])
            logger.info(
                "resumed from %s: iteration %d, %d samples",
                storage.display(folder),
                self.iteration,
                self.samples,
            )
            changes = config_changes(state.get("config", {}), self.cfg.to_dict())
            if changes:
                logger.info(
                    "settings in force that differ from the checkpoint's: %s",
                    ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes),
                )
        self.metrics.resume_at(self.iteration)
        self.publish(self.version)

    def _restored_kl(self, state: dict[str, Any]) -> KLController:
        """The KL controller of the config in force (mode, target, horizon), with the coefficient the
        adaptive controller had reached, unless the config names another mode or initial coefficient."""
        kl = make_kl_controller(self.cfg.ppo)
        old = state.get("config", {}).get("ppo", {})
        now = self.cfg.ppo
        same_start = (
            old.get("kl_mode", now.kl_mode) == now.kl_mode and old.get("kl_coef", now.kl_coef) == now.kl_coef
        )
        if now.kl_mode == "adaptive" and same_start:
            kl.load_state_dict(state["kl"])
        return kl

    def _recover_learner(self, exc: RoleDiedError) -> None:
        self.learner_recoveries += 1
        if self.learner_recoveries > self.cfg.ppo.max_restarts:
            raise RuntimeError(
                f"the learner failed {self.learner_recoveries} times (ppo.max_restarts={self.cfg.ppo.max_restarts})"
            ) from exc
        logger.warning("%s; restarting the learner group from the last checkpoint", exc)
        self.roles.kill_learner()
        self.roles.await_capacity()  # its node may have died: its bundles must be on a live node again
        self._restore()

    def read_metrics(self) -> list[dict[str, float]]:
        """Every logged iteration's metrics row, in order."""
        return self.metrics.read()
