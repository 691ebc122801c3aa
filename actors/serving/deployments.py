"""The model deployments: :class:`PolicyDeployment` answers ``(context, SamplingSettings)`` with a
response, whole or token by token; :class:`IdentifierDeployment` answers ``(context, response)`` with
the ER/IP/EX level probabilities. Both batch with ``@serve.batch`` (``serve.max_batch_size``,
``serve.batch_wait_timeout_s``) and run ``serve.torch_threads`` threads, bf16 on a GPU, fp32 on the CPU.
A replica, on whichever node Serve places it, fetches its folders onto that node before loading them
(folders mirroring URIs; a plain local folder is read as it is).
"""

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import torch
from ray import serve

from pipeline import storage
from pipeline.config import Config
from pipeline.generation import Sampled, SamplingSettings, StepSampler, TextDeltas
from pipeline.models import load_policy, use_fastest_attention
from pipeline.scoring import EmpathyScorer, fetch_identifiers
from pipeline.serving import model_version
from pipeline.serving.messages import ModelInfo

logger = logging.getLogger(__name__)


def model_name(folder: str | Path) -> str:
    """``<run>/<stage>`` for a stage's ``policy`` folder (``demo/ppo``), else the folder's own name."""
    path = Path(folder).resolve()
    return f"{path.parent.parent.name}/{path.parent.name}" if path.name == "policy" else path.name


def _device(gpus: float, role: str) -> torch.device:
    """CUDA for a replica given GPUs (refused where there is none), else the CPU."""
    if gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"serve.{role}_gpus={gpus} but this replica sees no CUDA device. Fix: run on a GPU node or set "
            f"serve.{role}_gpus=0."
        )
    return torch.device("cuda")


def _dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (T5 overflows in fp16), fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _runtime(device: torch.device, dtype: torch.dtype) -> str:
    return f"{device.type} {str(dtype).removeprefix('torch.')}"


class PolicyDeployment:
    """A policy answering contexts, each request sampled with its own settings and seed; whole
    responses (:meth:`generate`) or token by token (:meth:`stream`), both batched."""

    def __init__(self, policy_dir: str, cfg: Config) -> None:
        # Threads beyond the CPUs this replica was given make every process on the node crawl.
        torch.set_num_threads(cfg.serve.torch_threads)
        model, self.tokenizer = load_policy(policy_dir)  # fetched onto this node when it is a URI
        folder = storage.local_path(policy_dir)
        self.device = _device(cfg.serve.policy_gpus, "policy")
        dtype = _dtype(self.device)
        self.model = cast(Any, model.policy).to(self.device, dtype=dtype)
        self.model.train(False)
        use_fastest_attention(self.model, self.device)
        self.max_source_len = cfg.model.max_source_len
        self.info = ModelInfo(
            name=model_name(folder),
            version=model_version(folder),
            runtime=_runtime(self.device, dtype),
        )
        batched: list[Any] = [self._generate_batch, self._stream_batch]  # type: ignore[misc]
        for method in batched:
            method.set_max_batch_size(cfg.serve.max_batch_size)
            method.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)
        logger.info(
            "policy replica ready: %s (%s) from %s on %s, pid %d", self.info.name, self.info.version,
            storage.display(policy_dir), self.device, os.getpid(),
        )  # fmt: skip

    def describe(self) -> ModelInfo:
        """The served policy's name and version."""
        return self.info

    async def check_health(self) -> None:
        """Serve's periodic health check: one encoder pass over one token (raises if the model can't run)."""
        await asyncio.to_thread(self._probe)

    @torch.no_grad()
    def _probe(self) -> None:
        ids = torch.tensor([[int(self.tokenizer.eos_token_id)]], device=self.device)
        self.model.get_encoder()(input_ids=ids, return_dict=True)

    async def generate(self, request: tuple[str, SamplingSettings]) -> Sampled:
        """The response to ``(context, settings)``, batched with concurrent ones (:meth:`_generate_batch`).
        A caller that goes away (timeout, disconnect) stops its row, not the batch."""
        gone = threading.Event()
        batched: Any = self._generate_batch  # Serve types it as list -> list
        try:
            return cast(Sampled, await batched((*request, gone)))
        except asyncio.CancelledError:
            gone.set()
            raise

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(
        self, requests: list[tuple[str, SamplingSettings, threading.Event]]
    ) -> list[Sampled]:
        """A thread runs the model so the replica's event loop keeps answering health checks, filling
        the next batch and noticing callers that went away."""
        sampler = StepSampler(
            self.model, self.tokenizer, [c for c, _, _ in requests], [s for _, s, _ in requests],
            max_source_len=self.max_source_len, abandoned=[gone.is_set for _, _, gone in requests],
        )  # fmt: skip

        def run() -> list[Sampled]:
            for _ in sampler:
                pass
            return sampler.results()

        return await asyncio.to_thread(run)

    async def stream(self, request: tuple[str, SamplingSettings]) -> AsyncIterator[dict[str, Any]]:
        """One request's events, token by token: ``{"delta": text}``, the last one also with ``text``,
        ``finish_reason``, ``prompt_tokens`` and ``completion_tokens``. Call it with
        ``handle.options(stream=True)``; concurrent streams are batched by :meth:`_stream_batch`."""
        # Serve's replica runs a plain method returning an async generator (what @serve.batch makes of
        # an async generator) in a thread and refuses it; this async generator wraps it.
        gone = threading.Event()
        batched: Any = self._stream_batch  # type: ignore[misc]  # Serve types it as list -> list
        try:
            async for event in batched((*request, gone)):
                yield event
        finally:  # done, or the caller went away (cancelled, closed): stop its row either way
            gone.set()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # type: ignore[arg-type]
    async def _stream_batch(  # type: ignore[misc]
        self, requests: list[tuple[str, SamplingSettings, threading.Event]]
    ) -> AsyncIterator[list[Any]]:
        """Per decoding step, one event per request (see :meth:`stream`); a request already finished
        gets ``StopIteration``, which ends its stream."""
        sampler = StepSampler(
            self.model, self.tokenizer, [c for c, _, _ in requests], [s for _, s, _ in requests],
            max_source_len=self.max_source_len, abandoned=[gone.is_set for _, _, gone in requests],
        )  # fmt: skip
        steps = iter(sampler)
        deltas = [TextDeltas() for _ in requests]
        ended = [False] * len(requests)
        while not all(ended):
            drawn = await asyncio.to_thread(next, steps, None)
            if drawn is None:  # every row stopped at the same step as its last token
                break
            events: list[Any] = []
            for i, token in enumerate(drawn):
                if ended[i] or token is None:
                    events.append(StopIteration)
                    ended[i] = True
                    continue
                event: dict[str, Any] = {"delta": deltas[i].update(sampler.text(i))}
                if sampler.done[i]:
                    done = sampler.result(i)
                    event.update(text=done.text, finish_reason=done.finish_reason,
                                 prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens)  # fmt: skip
                    ended[i] = True
                events.append(event)
            yield events


class IdentifierDeployment:
    """The ER/IP/EX identifiers in one replica, scoring (context, response) pairs."""

    def __init__(self, identifiers_dir: str, cfg: Config) -> None:
        torch.set_num_threads(cfg.serve.torch_threads)
        device = _device(cfg.serve.identifier_gpus, "identifier")
        folder = fetch_identifiers(identifiers_dir)
        self.scorer = EmpathyScorer.from_config(folder, cfg.identifiers, device=device)
        dtype = _dtype(device)
        for model in self.scorer.identifiers.values():
            model.to(dtype=dtype)
        self.info = ModelInfo(
            name=model_name(folder),
            version=model_version(folder, cfg.identifiers.mechanisms),
            runtime=_runtime(device, dtype),
        )
        self.score.set_max_batch_size(cfg.serve.max_batch_size)  # type: ignore[attr-defined]
        self.score.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)  # type: ignore[attr-defined]
        logger.info(
            "identifier replica ready: %s on %s, pid %d", list(self.scorer.mechanisms), device, os.getpid()
        )

    def describe(self) -> tuple[ModelInfo, list[str]]:
        """The identifiers' name and version, and the mechanisms they score."""
        return self.info, list(self.scorer.mechanisms)

    async def check_health(self) -> None:
        """Serve's periodic health check: one pair scored (raises if an identifier can't run)."""
        await asyncio.to_thread(self.scorer.score, ["hi"], ["hello"])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score(self, pairs: list[tuple[str, str]]) -> list[dict[str, list[float]]]:
        """Per pair: mechanism -> the probabilities of levels 0, 1, 2."""
        scores = await asyncio.to_thread(self.scorer.score, [c for c, _ in pairs], [r for _, r in pairs])
        return [{m: scores.probs[m][i].tolist() for m in scores.mechanisms} for i in range(len(pairs))]
