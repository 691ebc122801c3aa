"""The HTTP API: :class:`ApiIngress` (the ingress deployment: the policy and identifier handles, what
is served) and :func:`build_api`, its FastAPI app: ``/healthz``, the chat page at ``/``,
``/v1/models``, ``/v1/respond``, ``/v1/score`` and the OpenAI-style ``/v1/chat/completions``.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations, which name request
# classes built at run time (their bounds come from the config).

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any, cast

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from actors.serving.errors import (
    CHAT_PATH,
    field_error,
    invalid_request,
    openai_error,
    overloaded,
    replica_lost,
)
from actors.serving.guard import Guard
from actors.serving.streaming import chat_stream
from pipeline.config import Config
from pipeline.generation import Sampled, SamplingSettings
from pipeline.serving import (
    CHAT_PAGE,
    LevelsOut,
    ModelsOut,
    RespondOut,
    RespondRequest,
    ScoreOut,
    ScoreRequest,
    dialogue_context,
    request_models,
    resolve_sampling,
)
from pipeline.serving.candidates import closest
from pipeline.serving.chat import (
    ChatAnswer,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    RequestFieldError,
    Usage,
    chat_sampling,
    chat_turns,
    check_chat,
    completion_id,
    now,
)
from pipeline.serving.messages import MAX_SEED, CandidateOut, ModelCard, ModelInfo

logger = logging.getLogger(__name__)

RETRIED = (RayActorError,)
"""Errors of a model call retried once: the replica died mid-request (the controller replaces it and
the handle routes the retry to a live one). Every call carries its seed, so a retry answers the same."""


def _random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") % (MAX_SEED + 1)


class ApiIngress:
    """The HTTP front: validates requests, maps dialogues to contexts, calls the policy then the
    identifiers through their handles."""

    def __init__(
        self,
        policy: DeploymentHandle[Any],
        identifiers: DeploymentHandle[Any],
        cfg: Config,
        key_digest: str | None,
    ) -> None:
        self.policy, self.identifiers, self.cfg, self.key_digest = policy, identifiers, cfg, key_digest
        self._models: ModelsOut | None = None
        self.started = int(time.time())

    async def models(self) -> ModelsOut:
        """What is served (asked of the deployments once, then kept)."""
        if self._models is None:
            policy: ModelInfo = await self.policy.describe.remote()
            identifiers, mechanisms = await self.identifiers.describe.remote()
            cfg = self.cfg
            r, s = cfg.rollout, cfg.serve
            self._models = ModelsOut(
                data=[ModelCard(id=policy.name, created=self.started)],
                policy=policy,
                identifiers=identifiers,
                mechanisms=mechanisms,
                defaults={"temperature": r.temperature, "top_k": r.top_k, "top_p": r.top_p,
                          "min_new_tokens": r.min_new_tokens,
                          "max_new_tokens": min(r.max_new_tokens, cfg.model.max_target_len)},
                limits={"max_turns": s.max_turns, "max_text_chars": s.max_text_chars,
                        "max_new_tokens": cfg.model.max_target_len, "max_body_bytes": s.max_body_bytes,
                        "max_candidates": s.max_candidates, "max_choices": s.max_choices},
            )  # fmt: skip
        return self._models

    async def _call(self, method: str, arg: Any) -> Any:
        handle = self.policy if method == "generate" else self.identifiers
        try:
            return await getattr(handle, method).remote(arg)
        except RETRIED as exc:
            logger.warning("%s: a replica died mid-request (%s); retrying once", method, type(exc).__name__)
            return await getattr(handle, method).remote(arg)

    async def candidates(
        self, context: str, settings: list[SamplingSettings]
    ) -> list[tuple[Sampled, dict[str, list[float]]]]:
        """Each setting's response and its level probabilities (the calls batch in the replicas)."""
        sampled: list[Sampled] = await asyncio.gather(
            *(self._call("generate", (context, s)) for s in settings)
        )
        probs = await asyncio.gather(*(self.score(context, r.text) for r in sampled))
        return list(zip(sampled, probs, strict=True))

    async def score(self, context: str, response: str) -> dict[str, list[float]]:
        """The identifiers' level probabilities of ``response`` (mechanism -> levels 0, 1, 2)."""
        return cast(dict[str, list[float]], await self._call("score", (context, response)))

    def stream(self, context: str, settings: SamplingSettings) -> DeploymentResponseGenerator[Any]:
        """The policy's events for one request, token by token (``PolicyDeployment.stream``)."""
        return cast(
            DeploymentResponseGenerator[Any],
            self.policy.options(stream=True).stream.remote((context, settings)),
        )

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, self.cfg, key_digest=self.key_digest)


def _context(turns: list[str], emotion: str | None, cfg: Config) -> str:
    try:
        return dialogue_context(turns, emotion, cfg.data)
    except ValueError as exc:
        raise field_error("emotion", str(exc)) from None


def _seeds(base: int, n: int) -> list[int]:
    return [(base + i) % (MAX_SEED + 1) for i in range(n)]


def build_api(ingress: ApiIngress, cfg: Config, *, key_digest: str | None) -> FastAPI:
    """The FastAPI app of ``ingress``, :class:`Guard` first; ``/docs`` shows the bounded request models."""
    models = request_models(cfg.serve, cfg.model)
    app = FastAPI(
        title="EmpRL",
        description="Empathetic responses from a T5 policy, with their ER/IP/EX empathy levels. "
        "The chat page is at `/`.",
        version="1",
    )
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(BackPressureError, overloaded)
    for lost in RETRIED:
        app.add_exception_handler(lost, replica_lost)
    page = CHAT_PAGE.read_bytes()  # one static file, no build step, nothing from a CDN

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def chat_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/v1/models")
    async def list_models() -> ModelsOut:
        return await ingress.models()

    respond_body, score_body = models

    @app.post("/v1/respond")
    async def respond(body: respond_body) -> RespondOut:  # type: ignore[valid-type]
        req = cast(RespondRequest, body)
        context = _context(req.turns, req.emotion, cfg)
        base = resolve_sampling(
            req.sampling, cfg.rollout, max_target_len=cfg.model.max_target_len,
            seed=_random_seed() if req.sampling.seed is None else req.sampling.seed,
        )  # fmt: skip
        settings = [dataclasses.replace(base, seed=seed) for seed in _seeds(base.seed, req.n_candidates)]
        drawn = await ingress.candidates(context, settings)
        targets = req.target_levels.by_mechanism() if req.target_levels else None
        chosen, distances = closest([p for _, p in drawn], targets) if targets else (0, None)
        info = await ingress.models()
        candidates = None
        if req.return_candidates:
            candidates = [
                CandidateOut(response=r.text, levels=LevelsOut.from_probs(p), seed=s.seed,
                             distance=None if distances is None else distances[i])
                for i, ((r, p), s) in enumerate(zip(drawn, settings, strict=True))
            ]  # fmt: skip
        response, probs = drawn[chosen]
        return RespondOut(
            response=response.text,
            levels=LevelsOut.from_probs(probs),
            context=context,
            sampling=dataclasses.asdict(settings[chosen]),
            model=info.policy,
            identifiers=info.identifiers,
            target_levels={m.lower(): v for m, v in targets.items()} if targets else None,
            chosen=chosen,
            distance=None if distances is None else distances[chosen],
            candidates=candidates,
        )

    @app.post("/v1/score")
    async def score(body: score_body) -> ScoreOut:  # type: ignore[valid-type]
        pair = cast(ScoreRequest, body)
        probs = await ingress.score(pair.context, pair.response)
        info = await ingress.models()
        return ScoreOut(levels=LevelsOut.from_probs(probs), identifiers=info.identifiers)

    @app.post(CHAT_PATH, response_model=None)
    async def chat_completions(
        req: ChatCompletionRequest,
    ) -> ChatCompletion | StreamingResponse | JSONResponse:
        info = await ingress.models()
        if req.model not in (info.policy.name, "emprl"):
            return openai_error(
                404, f"model {req.model!r} is not served here: use {info.policy.name!r} (GET /v1/models)",
                param="model", code="model_not_found",
            )  # fmt: skip
        try:
            check_chat(req, cfg.serve, cfg.model)
            turns = chat_turns(req.messages, cfg.serve)
        except RequestFieldError as exc:
            raise field_error(exc.field, str(exc)) from None
        context = _context(turns, req.emotion, cfg)
        base = chat_sampling(
            req, cfg.rollout, max_target_len=cfg.model.max_target_len,
            seed=_random_seed() if req.seed is None else req.seed,
        )  # fmt: skip
        k = req.n_candidates
        seeds = _seeds(base.seed, req.n * k)
        head: dict[str, Any] = {"id": completion_id(), "created": now(), "model": info.policy.name,
                "system_fingerprint": info.policy.version}  # fmt: skip
        if req.stream:
            settings = [dataclasses.replace(base, seed=seed) for seed in seeds]
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                chat_stream(ingress, context, settings, head, include_usage=include_usage),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        targets = req.target_levels.by_mechanism() if req.target_levels else None
        per_choice = [[dataclasses.replace(base, seed=seed) for seed in seeds[i * k : (i + 1) * k]]
                      for i in range(req.n)]  # fmt: skip
        # every choice's candidates at once, so they share the replicas' batches
        drawn = await asyncio.gather(*(ingress.candidates(context, settings) for settings in per_choice))
        choices, completion_tokens, prompt_tokens = [], 0, 0
        for i, candidates in enumerate(drawn):
            best = closest([p for _, p in candidates], targets)[0] if targets else 0
            sampled, probs = candidates[best]
            choices.append(
                ChatChoice(index=i, message=ChatAnswer(content=sampled.text),
                           finish_reason=sampled.finish_reason, empathy=LevelsOut.from_probs(probs))
            )  # fmt: skip
            completion_tokens += sampled.completion_tokens
            prompt_tokens = sampled.prompt_tokens
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens)  # fmt: skip
        return ChatCompletion(
            id=head["id"], created=head["created"], model=head["model"],
            system_fingerprint=head["system_fingerprint"], choices=choices, usage=usage,
        )  # fmt: skip

    app.add_middleware(
        Guard,
        max_body_bytes=cfg.serve.max_body_bytes,
        key_digest=key_digest,
        timeout_s=cfg.serve.request_timeout_s,
    )
    return app
