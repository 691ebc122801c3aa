"""Serving roles (Ray Serve): the policy, the identifiers and the HTTP ingress, composed through handles.

:class:`PolicyDeployment` owns a policy folder and answers ``(context, SamplingSettings)`` with a
response; :class:`IdentifierDeployment` owns the ER/IP/EX identifiers and answers ``(context,
response)`` with level probabilities; both batch with ``@serve.batch`` (``serve.max_batch_size``,
``serve.batch_wait_timeout_s``) and run ``serve.torch_threads`` threads on ``serve.policy_cpus`` /
``serve.identifier_cpus`` CPUs. :class:`ApiIngress` serves the FastAPI app of :func:`build_api`.
:func:`build_app` binds the three; :func:`start_serve` starts Serve's HTTP proxy on ``serve.host``.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations, which name request
# classes built at run time (their bounds come from the config).

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from actors.cluster.session import worker_env
from pipeline.config import Config, ConfigError, ServeConfig
from pipeline.generation import Sampled, SamplingSettings, StepSampler, TextDeltas
from pipeline.models import load_policy, use_fastest_attention
from pipeline.scoring import EmpathyScorer
from pipeline.serving import (
    CHAT_PAGE,
    LevelsOut,
    ModelsOut,
    RespondOut,
    RespondRequest,
    ScoreOut,
    ScoreRequest,
    dialogue_context,
    model_version,
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
    chunk,
    completion_id,
    now,
    sse,
)
from pipeline.serving.messages import MAX_SEED, CandidateOut, ModelCard, ModelInfo

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/"})
"""Paths answered without the API key: health, and the chat page (static; its calls carry the key)."""


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
        model, self.tokenizer = load_policy(policy_dir)
        self.device = _device(cfg.serve.policy_gpus, "policy")
        dtype = _dtype(self.device)
        self.model = cast(Any, model.policy).to(self.device, dtype=dtype)
        self.model.train(False)
        use_fastest_attention(self.model, self.device)
        self.max_source_len = cfg.model.max_source_len
        self.info = ModelInfo(
            name=model_name(policy_dir),
            version=model_version(policy_dir),
            runtime=_runtime(self.device, dtype),
        )
        batched: list[Any] = [self._generate_batch, self._stream_batch]  # type: ignore[misc]
        for method in batched:
            method.set_max_batch_size(cfg.serve.max_batch_size)
            method.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)
        logger.info(
            "policy replica ready: %s (%s) on %s, pid %d", self.info.name, self.info.version, self.device,
            os.getpid(),
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
        self.scorer = EmpathyScorer.from_config(identifiers_dir, cfg.identifiers, device=device)
        dtype = _dtype(device)
        for model in self.scorer.identifiers.values():
            model.to(dtype=dtype)
        self.info = ModelInfo(
            name=model_name(identifiers_dir),
            version=model_version(identifiers_dir),
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


async def _send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        *headers],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware run before any body is parsed: the API key (401 without it, but on
    :data:`OPEN_PATHS`), then the body size (413 over ``max_body_bytes``, by ``Content-Length`` or
    while reading a body without one). The body read here is replayed to the app, which gets
    ``timeout_s`` to answer: 408 past it (a stream already started is ended). Serve's proxy has the same
    timeout, but a client can lift that one with its ``x-request-timeout-seconds`` header."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, key_digest: str | None, timeout_s: float | None = None
    ) -> None:
        self.app, self.max_body_bytes, self.key_digest = app, max_body_bytes, key_digest
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, root = scope.get("path", ""), scope.get("root_path", "")
        route = path[len(root) :] if root and path.startswith(root) else path
        if self.key_digest is not None and route not in OPEN_PATHS and not self._authorized(headers):
            await _send_error(send, 401, "missing or wrong API key: send Authorization: Bearer <key>",
                              [(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        too_big = f"request body over {self.max_body_bytes} bytes"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _send_error(send, 413, too_big, [])
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_error(send, 413, too_big, [])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, replay, tracked)
        except TimeoutError:
            logger.warning("%s timed out after %s s", route, self.timeout_s)
            if started:  # the status is sent: end the body
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await _send_error(send, 408, f"request timed out after {self.timeout_s:g} s", [])

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        return hmac.compare_digest(digest, self.key_digest or "")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts[1:] if parts[:1] == ["body"] else parts) or "body"


def _is_chat(request: Request) -> bool:
    return request.url.path.endswith(CHAT_PATH)


def _openai_error(
    status: int, message: str, *, param: str | None, code: str | None, **extra: Any
) -> JSONResponse:
    """OpenAI's error body (what its clients read), with this service's own fields beside it."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}, **extra}
    return JSONResponse(body, status_code=status)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 naming every bad field (``sampling.temperature``), without echoing the input back; in
    OpenAI's error shape too on the chat endpoint."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"field": _field(tuple(e["loc"])), "loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    if _is_chat(request) and detail:
        message = "; ".join(f"{d['field']}: {d['msg']}" for d in detail)
        return _openai_error(422, message, param=detail[0]["field"], code="invalid_value", detail=detail)
    return JSONResponse({"detail": detail}, status_code=422)


def _field_error(field: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ("body", *field.split(".")), "msg": message, "type": "value_error"}]
    )


async def _overloaded(request: Request, exc: Exception) -> JSONResponse:
    """503 when a model deployment's queue is full (``serve.max_queued_requests``): retry later."""
    message = "the service is overloaded (request queue full): retry in a moment"
    if _is_chat(request):
        response = _openai_error(503, message, param=None, code="overloaded")
    else:
        response = JSONResponse({"detail": message}, status_code=503)
    response.headers["retry-after"] = "1"
    return response


CHAT_PATH = "/v1/chat/completions"
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
        probs = await asyncio.gather(*(self._call("score", (context, r.text)) for r in sampled))
        return list(zip(sampled, probs, strict=True))

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, self.cfg, key_digest=self.key_digest)


def _context(turns: list[str], emotion: str | None, cfg: Config) -> str:
    try:
        return dialogue_context(turns, emotion, cfg.data)
    except ValueError as exc:
        raise _field_error("emotion", str(exc)) from None


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
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(BackPressureError, _overloaded)
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
        probs = await ingress._call("score", (pair.context, pair.response))
        info = await ingress.models()
        return ScoreOut(levels=LevelsOut.from_probs(probs), identifiers=info.identifiers)

    @app.post(CHAT_PATH, response_model=None)
    async def chat_completions(
        req: ChatCompletionRequest,
    ) -> ChatCompletion | StreamingResponse | JSONResponse:
        info = await ingress.models()
        if req.model not in (info.policy.name, "emprl"):
            return _openai_error(
                404, f"model {req.model!r} is not served here: use {info.policy.name!r} (GET /v1/models)",
                param="model", code="model_not_found",
            )  # fmt: skip
        try:
            check_chat(req, cfg.serve, cfg.model)
            turns = chat_turns(req.messages, cfg.serve)
        except RequestFieldError as exc:
            raise _field_error(exc.field, str(exc)) from None
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
                _chat_stream(ingress, context, settings, head, include_usage=include_usage),
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


async def _chat_stream(
    ingress: ApiIngress,
    context: str,
    settings: list[SamplingSettings],
    head: dict[str, Any],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Server-sent events of ``len(settings)`` choices streamed token by token, each choice's last
    chunk with its ``finish_reason`` and ``empathy``, then the usage (if asked) and ``[DONE]``."""
    queue: asyncio.Queue[tuple[int, dict[str, Any] | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, s: SamplingSettings) -> None:
        try:
            events = cast(
                DeploymentResponseGenerator[Any],
                ingress.policy.options(stream=True).stream.remote((context, s)),
            )
            async for event in events:
                await queue.put((i, event))
        except Exception as exc:
            await queue.put((i, exc))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(settings)]
    prompt_tokens = completion_tokens = 0
    try:
        for i in range(len(settings)):
            yield sse(chunk(head, i, {"role": "assistant", "content": ""}))
        open_streams = len(settings)
        while open_streams:
            i, event = await queue.get()
            if event is None:
                open_streams -= 1
                continue
            if isinstance(event, BaseException):
                logger.error("stream of choice %d failed: %s", i, event)
                yield sse({"error": {"message": f"generation failed: {type(event).__name__}",
                                     "type": "server_error", "param": None, "code": None}})  # fmt: skip
                return
            if event["delta"]:
                yield sse(chunk(head, i, {"content": event["delta"]}))
            if "finish_reason" in event:
                probs = await ingress._call("score", (context, event["text"]))
                levels = LevelsOut.from_probs(probs).model_dump()
                yield sse(chunk(head, i, {}, event["finish_reason"], empathy=levels))
                prompt_tokens = event["prompt_tokens"]
                completion_tokens += event["completion_tokens"]
        if include_usage:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
            yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield sse("[DONE]")
    finally:
        for task in tasks:
            task.cancel()


def api_key(s: ServeConfig) -> str:
    """The API key: the variable ``serve.api_key_env``, else the first line of ``serve.api_key_file``;
    empty when neither is set.

    Raises:
        ConfigError: ``serve.api_key_file`` is set but unreadable or empty.
    """
    key = os.environ.get(s.api_key_env, "").strip()
    if key or not s.api_key_file:
        return key
    path = Path(s.api_key_file).expanduser()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(
            f"serve.api_key_file={path}: cannot read it ({exc.strerror}). Fix: point it at a file holding the key."
        ) from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ConfigError(f"serve.api_key_file={path} is empty. Fix: write the key on its first line.")
    return key


def deployment_options(s: ServeConfig, role: str, env: dict[str, Any]) -> dict[str, Any]:
    """Serve options of the ``policy`` or ``identifiers`` deployment from the ``serve`` section:
    replicas (or autoscaling), CPUs/GPUs, the request bounds and the health checks."""
    cpus, gpus, replicas = (
        (s.policy_cpus, s.policy_gpus, s.policy_replicas)
        if role == "policy"
        else (s.identifier_cpus, s.identifier_gpus, s.identifier_replicas)
    )
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus, "runtime_env": env},
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "health_check_period_s": s.health_check_period_s,
        "health_check_timeout_s": s.health_check_timeout_s,
    }
    if s.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas, "max_replicas": s.max_replicas, "initial_replicas": replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }  # fmt: skip
    else:
        options["num_replicas"] = replicas
    return options


def ingress_options(s: ServeConfig, env: dict[str, Any]) -> dict[str, Any]:
    """Serve options of the ingress: one replica, no CPU of its own (it runs no model, it awaits the
    deployments), ``serve.ingress_max_ongoing_requests`` in flight."""
    return {
        "num_replicas": 1,
        "ray_actor_options": {"num_cpus": 0.0, "runtime_env": env},
        "max_ongoing_requests": s.ingress_max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "backpressure_config": {"retry_after_s": 1},  # the proxy's own 503 says when to retry, as ours does
    }


def build_app(cfg: Config, policy_dir: str | Path, identifiers_dir: str | Path) -> Application:
    """The bound application: ingress -> policy, identifiers. The API key, if any, is read here
    (:func:`api_key`); only its SHA-256 reaches the replicas."""
    s = cfg.serve
    env = {"env_vars": worker_env(dataclasses.replace(cfg.resources, torch_threads=s.torch_threads))}
    policy = serve.deployment(name="policy")(PolicyDeployment).options(**deployment_options(s, "policy", env))
    identifiers = serve.deployment(name="identifiers")(IdentifierDeployment).options(
        **deployment_options(s, "identifiers", env)
    )
    key = api_key(s)
    digest = hashlib.sha256(key.encode()).hexdigest() if key else None
    ingress = serve.deployment(name="ingress")(serve.ingress()(ApiIngress)).options(**ingress_options(s, env))
    return ingress.bind(
        policy.bind(str(Path(policy_dir).resolve()), cfg),
        identifiers.bind(str(Path(identifiers_dir).resolve()), cfg),
        cfg,
        digest,
    )


def start_serve(cfg: Config) -> None:
    """Start Serve's HTTP proxy on ``serve.host:serve.port`` with ``serve.request_timeout_s`` (Ray up)."""
    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s})
