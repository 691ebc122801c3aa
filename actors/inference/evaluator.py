"""Evaluation worker role: responses and gold-response likelihoods of any policy folder.

Consumes a policy folder with a :class:`~pipeline.ppo.experience.PromptBatch` (``generate``: sampled
with ``rollout.*`` under the batch's seed, or greedy) or with (context, gold response) text pairs
(``gold_nll``); produces response text, or per-example NLL sums and token counts. A worker loads a
policy on first use and keeps the last one, so one group serves several policies in turn and every
call is self-contained (a replacement actor needs no replay). Resources: ``resources.rollout_cpus``
CPUs (and ``resources.role_gpus`` of a GPU) and ``resources.torch_threads`` threads.
:func:`evaluate_policies` fans a labelled split out over a group of these and a group of
:class:`~actors.inference.scorer.IdentifierScorerWorker` (identifiers). Policy and identifier folders may
mirror URIs: every actor loads them through :func:`~pipeline.models.load_policy` and
:func:`~pipeline.scoring.fetch_identifiers`, which bring its node's copy up to date first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from actors.cluster.group import Group, LocalGroup, Pending, RoleGroup, gather
from actors.cluster.placement import Reservation, RoleProcess, evaluation_bundles
from actors.cluster.recovery import await_reservation
from actors.cluster.session import worker_runtime_env
from actors.inference.scorer import IdentifierScorerWorker
from pipeline import storage
from pipeline.config import Config, RolloutConfig
from pipeline.evaluation.bootstrap import FloatArray, IntArray
from pipeline.evaluation.suite import LabeledSplit, PolicyOutputs
from pipeline.generation import encode_prompts, sample_responses
from pipeline.models import load_policy, load_tokenizer, use_fastest_attention
from pipeline.ppo.experience import PromptBatch
from pipeline.ppo.iteration import derive_seed
from pipeline.progress import Progress
from pipeline.scoring import LevelScores
from pipeline.training.sft import encode_examples, gold_nll

logger = logging.getLogger(__name__)


class EvaluationWorker(RoleProcess):
    """Generates responses and scores gold responses with a policy; usable in-process or as an actor."""

    def __init__(
        self,
        decoding: RolloutConfig,
        max_source_len: int,
        max_target_len: int,
        nll_batch_size: int = 32,
        torch_threads: int = 1,
        device: str = "cpu",
    ) -> None:
        torch.set_num_threads(torch_threads)
        self.decoding, self.device = decoding, device
        self.max_source_len, self.max_target_len, self.nll_batch_size = (
            max_source_len,
            max_target_len,
            nll_batch_size,
        )
        self.folder: str | None = None
        self.model: T5ForConditionalGeneration | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def load(self, policy_dir: str) -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase]:
        """The policy of ``policy_dir`` in eval mode, loaded unless it is the one already held (a folder
        mirroring a URI is fetched onto this node by :func:`~pipeline.models.load_policy`)."""
        if self.folder != policy_dir or self.model is None or self.tokenizer is None:
            model, self.tokenizer = load_policy(policy_dir)
            self.model = model.to(self.device).policy
            use_fastest_attention(self.model, self.device)
            self.model.train(False)
            self.folder = policy_dir
            logger.info("evaluation worker %d loaded %s", os.getpid(), storage.display(policy_dir))
        return self.model, self.tokenizer

    def generate(self, policy_dir: str, prompts: PromptBatch, greedy: bool = False) -> tuple[str, ...]:
        """One response per prompt (:func:`pipeline.generation.sample_responses`, seeded by ``prompts.seed``)."""
        model, tokenizer = self.load(policy_dir)
        on_device = replace(
            prompts,
            prompt_ids=prompts.prompt_ids.to(self.device),
            prompt_mask=prompts.prompt_mask.to(self.device),
        )
        return sample_responses(model, tokenizer, on_device, self.decoding, greedy=greedy).responses

    def gold_nll(
        self, policy_dir: str, contexts: Sequence[str], responses: Sequence[str]
    ) -> tuple[FloatArray, IntArray]:
        """(N,) teacher-forced NLL sums and (N,) token counts of ``responses`` given ``contexts``."""
        model, tokenizer = self.load(policy_dir)
        examples = encode_examples(
            tokenizer,
            contexts,
            responses,
            max_source_len=self.max_source_len,
            max_target_len=self.max_target_len,
        )
        return gold_nll(
            model,
            examples,
            pad_id=int(tokenizer.pad_token_id),
            decoder_start_id=int(model.config.decoder_start_token_id),
            batch_size=self.nll_batch_size,
        )


@dataclass(frozen=True)
class PolicySource:
    """A policy to evaluate: its report name and its folder (saved by ``save_policy``)."""

    name: str
    folder: Path


@dataclass
class _Wave:
    policy: int
    chunks: list[int]
    generated: Pending
    nll: Pending
    scored: Pending | None = None


def prompt_chunks(cfg: Config, tokenizer: PreTrainedTokenizerBase, split: LabeledSplit) -> list[PromptBatch]:
    """The split's prompts in chunks of ``rollout.batch_size``; chunk ``k`` samples with seed
    ``derive_seed(run.seed, k)``, so responses do not depend on the number of workers."""
    size = cfg.rollout.batch_size
    chunks = []
    for k, start in enumerate(range(0, len(split), size)):
        rows = np.arange(start, min(start + size, len(split)), dtype=np.int64)
        chunks.append(
            encode_prompts(
                tokenizer,
                [split.contexts[i] for i in rows],
                max_source_len=cfg.model.max_source_len,
                index=rows,
                gold_levels={m: v[rows] for m, v in split.gold_levels.items()},
                seed=derive_seed(cfg.run.seed, k),
            )
        )
    return chunks


def evaluate_policies(
    cfg: Config,
    split: LabeledSplit,
    policies: Sequence[PolicySource],
    identifiers_dir: Path,
    *,
    greedy: bool = False,
    num_workers: int | None = None,
    wave_chunks: int = 4,
    reservation: Reservation | None = None,
    local: tuple[EvaluationWorker, IdentifierScorerWorker] | None = None,
) -> tuple[list[PolicyOutputs], dict[str, float]]:
    """Responses, identifier levels and gold NLLs of every policy on ``split``, and run statistics
    (``time/generate``, ``time/score_wait`` seconds and ``restarts`` of dead actors).

    Every generation and NLL call is submitted at once, in waves of ``wave_chunks`` chunks per
    worker; as each wave is gathered its responses go to the identifier scorers, so scoring overlaps
    generation. The workers are placed in ``reservation`` (by default one made from
    :func:`~actors.cluster.placement.evaluation_bundles` and released at the end). Ray must be up.
    ``local`` (an evaluation worker and an identifier scorer already built in this process, e.g. a CPU
    sweep trial's dev evaluator) does the work instead, one call after another, with no actor and no
    reservation: the responses and levels are the same, every chunk being seeded.
    """
    if not policies:
        raise ValueError("evaluate_policies: no policy given. Fix: pass at least one PolicySource.")
    start = time.perf_counter()
    chunks = [
        prompt_chunks(cfg, load_tokenizer(str(p.folder), key=f"policy {p.name}"), split) for p in policies
    ]
    if local is not None:  # in-process instances: no actor, no reservation
        workers: Group = LocalGroup("evaluation worker", local[0])
        scorers: Group = LocalGroup("identifier scorer", local[1])
        release: Callable[[], None] = lambda: None  # noqa: E731
    else:
        # an actor without a chunk would only cost start-up time
        workers_n = min(num_workers or cfg.rollout.num_workers, len(chunks[0]))
        workers, scorers, release = _actor_groups(cfg, identifiers_dir, workers_n, reservation)
    try:
        waves = _submit(workers, policies, chunks, split, greedy=greedy, per_wave=len(workers) * wave_chunks)
        responses: list[dict[int, tuple[str, ...]]] = [{} for _ in policies]
        nlls: list[dict[int, tuple[FloatArray, IntArray]]] = [{} for _ in policies]
        with Progress("evaluate: generate", len(policies) * len(split), unit="responses", log=logger) as bar:
            for wave in waves:
                texts, nll = gather(wave.generated, wave.nll)
                pol = wave.policy
                responses[pol].update(zip(wave.chunks, texts, strict=True))
                nlls[pol].update(zip(wave.chunks, nll, strict=True))
                shards = [(chunks[pol][k].contexts, responses[pol][k]) for k in wave.chunks]
                wave.scored = scorers.submit("score", shards)
                bar.update(sum(len(chunks[pol][k]) for k in wave.chunks))
        generated = time.perf_counter()
        levels: list[dict[int, LevelScores]] = [{} for _ in policies]
        with Progress(
            "evaluate: identifiers", len(policies) * len(split), unit="responses", log=logger
        ) as bar:
            for wave in waves:
                assert wave.scored is not None
                (scores,) = gather(wave.scored)
                levels[wave.policy].update(zip(wave.chunks, scores, strict=True))
                bar.update(sum(len(s) for s in scores))
        scored = time.perf_counter()
    finally:
        workers.kill()
        scorers.kill()
        release()
    outputs = [_outputs(p, responses[i], nlls[i], levels[i], len(chunks[i])) for i, p in enumerate(policies)]
    stats = {
        "time/generate": generated - start,
        "time/score_wait": scored - generated,
        "restarts": float(workers.restarts + scorers.restarts),
    }
    return outputs, stats


def _actor_groups(
    cfg: Config, identifiers_dir: Path, workers_n: int, reservation: Reservation | None
) -> tuple[RoleGroup, RoleGroup, Callable[[], None]]:
    """``workers_n`` evaluation workers and ``reward.num_scorers`` identifier scorers placed in
    ``reservation`` (by default a new one), and the call that releases it."""
    res = cfg.resources
    device = "cuda" if res.use_gpu else "cpu"
    bundles = evaluation_bundles(cfg, workers_n)
    reservation = reservation or Reservation.create(
        "evaluation", bundles, scale_up_wait_s=res.scale_up_wait_s, strategy=res.placement
    )
    try:
        placement = reservation.place("evaluation", bundles)
    except BaseException:
        reservation.release()
        raise
    env = worker_runtime_env(res)
    workers = RoleGroup(
        "evaluation worker",
        EvaluationWorker,
        (cfg.rollout, cfg.model.max_source_len, cfg.model.max_target_len, cfg.sft.eval_batch_size,
         res.torch_threads, device),
        count=workers_n,
        options={"runtime_env": env},
        make_options=lambda rank: placement.options("evaluation worker", rank),
        max_restarts=cfg.ppo.max_restarts,
    )  # fmt: skip
    scorers = RoleGroup(
        "identifier scorer",
        IdentifierScorerWorker,
        (storage.portable(identifiers_dir), cfg.identifiers, res.torch_threads, device),
        count=cfg.reward.num_scorers,
        options={"runtime_env": env},
        make_options=lambda rank: placement.options("identifier scorer", rank),
        max_restarts=cfg.ppo.max_restarts,
    )

    def await_capacity() -> None:  # a dead actor's node may be gone: wait for its bundle on a live one
        await_reservation(reservation, "evaluation", res.node_loss_wait_s)

    workers.before_replace = scorers.before_replace = await_capacity
    return workers, scorers, reservation.release


def _submit(
    workers: Group,
    policies: Sequence[PolicySource],
    chunks: list[list[PromptBatch]],
    split: LabeledSplit,
    *,
    greedy: bool,
    per_wave: int,
) -> list[_Wave]:
    waves = []
    for p, policy in enumerate(policies):
        folder = storage.portable(policy.folder)
        for first in range(0, len(chunks[p]), per_wave):
            ks = list(range(first, min(first + per_wave, len(chunks[p]))))
            gold = [[split.references[int(i)] for i in chunks[p][k].index] for k in ks]
            waves.append(
                _Wave(
                    policy=p,
                    chunks=ks,
                    generated=workers.submit("generate", [(folder, chunks[p][k], greedy) for k in ks]),
                    nll=workers.submit(
                        "gold_nll",
                        [(folder, chunks[p][k].contexts, g) for k, g in zip(ks, gold, strict=True)],
                    ),
                )
            )
    return waves


def _outputs(
    policy: PolicySource,
    responses: dict[int, tuple[str, ...]],
    nlls: dict[int, tuple[FloatArray, IntArray]],
    levels: dict[int, LevelScores],
    n_chunks: int,
) -> PolicyOutputs:
    order = range(n_chunks)
    scores = LevelScores.concat([levels[k] for k in order])
    return PolicyOutputs(
        name=policy.name,
        folder=storage.display(policy.folder),
        responses=tuple(r for k in order for r in responses[k]),
        pred_levels=dict(scores.levels),
        nll_sums=np.concatenate([nlls[k][0] for k in order]),
        nll_tokens=np.concatenate([nlls[k][1] for k in order]),
    )
