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
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from actors.cluster import worker_env
from pipeline.config import Config
from pipeline.generation import SamplingSettings, sample_each
from pipeline.models import load_policy
from pipeline.scoring import EmpathyScorer
from pipeline.serving import (
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
from pipeline.serving.messages import ModelInfo

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz"})
"""Paths answered without the API key."""


def model_name(folder: str | Path) -> str:
    """``<run>/<stage>`` for a stage's ``policy`` folder (``demo/ppo``), else the folder's own name."""
    path = Path(folder).resolve()
    return f"{path.parent.parent.name}/{path.parent.name}" if path.name == "policy" else path.name


class PolicyDeployment:
    """A policy answering contexts, each request sampled with its own settings and seed."""

    def __init__(self, policy_dir: str, cfg: Config) -> None:
        # Threads beyond the CPUs this replica was given make every process on the node crawl.
        torch.set_num_threads(cfg.serve.torch_threads)
        model, self.tokenizer = load_policy(policy_dir)
        self.model = model.policy
        self.model.train(False)
        self.max_source_len = cfg.model.max_source_len
        self.info = ModelInfo(name=model_name(policy_dir), version=model_version(policy_dir))
        self.generate.set_max_batch_size(cfg.serve.max_batch_size)  # type: ignore[attr-defined]
        self.generate.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)  # type: ignore[attr-defined]
        logger.info("policy replica ready: %s (%s), pid %d", self.info.name, self.info.version, os.getpid())

    def describe(self) -> ModelInfo:
        """The served policy's name and version."""
        return self.info

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate(self, requests: list[tuple[str, SamplingSettings]]) -> list[str]:
        """One response per ``(context, settings)``; a thread runs the model so the replica's event
        loop keeps answering health checks and filling the next batch."""
        contexts = [c for c, _ in requests]
        settings = [s for _, s in requests]
        return await asyncio.to_thread(
            sample_each, self.model, self.tokenizer, contexts, settings, max_source_len=self.max_source_len
        )


class IdentifierDeployment:
    """The ER/IP/EX identifiers in one replica, scoring (context, response) pairs."""

    def __init__(self, identifiers_dir: str, cfg: Config) -> None:
        torch.set_num_threads(cfg.serve.torch_threads)
        self.scorer = EmpathyScorer.from_config(identifiers_dir, cfg.identifiers)
        self.info = ModelInfo(name=model_name(identifiers_dir), version=model_version(identifiers_dir))
        self.score.set_max_batch_size(cfg.serve.max_batch_size)  # type: ignore[attr-defined]
        self.score.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)  # type: ignore[attr-defined]
        logger.info("identifier replica ready: %s, pid %d", list(self.scorer.mechanisms), os.getpid())

    def describe(self) -> tuple[ModelInfo, list[str]]:
        """The identifiers' name and version, and the mechanisms they score."""
        return self.info, list(self.scorer.mechanisms)

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
    while reading a body without one). The body read here is replayed to the app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, key_digest: str | None) -> None:
        self.app, self.max_body_bytes, self.key_digest = app, max_body_bytes, key_digest

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

        await self.app(scope, replay, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        return hmac.compare_digest(digest, self.key_digest or "")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts[1:] if parts[:1] == ["body"] else parts) or "body"


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    """422 naming every bad field (``sampling.temperature``), without echoing the input back."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"field": _field(tuple(e["loc"])), "loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


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

    async def models(self) -> ModelsOut:
        """What is served (asked of the deployments once, then kept)."""
        if self._models is None:
            policy: ModelInfo = await self.policy.describe.remote()
            identifiers, mechanisms = await self.identifiers.describe.remote()
            cfg = self.cfg
            r = cfg.rollout
            self._models = ModelsOut(
                policy=policy,
                identifiers=identifiers,
                mechanisms=mechanisms,
                defaults={"temperature": r.temperature, "top_k": r.top_k, "top_p": r.top_p,
                          "min_new_tokens": r.min_new_tokens,
                          "max_new_tokens": min(r.max_new_tokens, cfg.model.max_target_len)},
                limits={"max_turns": cfg.serve.max_turns, "max_text_chars": cfg.serve.max_text_chars,
                        "max_new_tokens": cfg.model.max_target_len, "max_body_bytes": cfg.serve.max_body_bytes},
            )  # fmt: skip
        return self._models

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, self.cfg, key_digest=self.key_digest)


def build_api(ingress: ApiIngress, cfg: Config, *, key_digest: str | None) -> FastAPI:
    """The FastAPI app of ``ingress``, :class:`Guard` first; ``/docs`` shows the bounded request models."""
    models = request_models(cfg.serve, cfg.model)
    app = FastAPI(
        title="EmpRL",
        description="Empathetic responses from a T5 policy, with their ER/IP/EX empathy levels.",
        version="1",
    )
    app.add_exception_handler(RequestValidationError, _invalid)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> ModelsOut:
        return await ingress.models()

    respond_body, score_body = models

    @app.post("/v1/respond")
    async def respond(body: respond_body) -> RespondOut:  # type: ignore[valid-type]
        req = cast(RespondRequest, body)
        try:
            context = dialogue_context(req.turns, req.emotion, cfg.data)
        except ValueError as exc:
            raise RequestValidationError(
                [{"loc": ("body", "emotion"), "msg": str(exc), "type": "value_error"}]
            ) from None
        settings = resolve_sampling(
            req.sampling,
            cfg.rollout,
            max_target_len=cfg.model.max_target_len,
            seed=int.from_bytes(os.urandom(4), "little"),
        )
        response: str = await ingress.policy.generate.remote((context, settings))
        probs = await ingress.identifiers.score.remote((context, response))
        info = await ingress.models()
        return RespondOut(
            response=response,
            levels=LevelsOut.from_probs(probs),
            context=context,
            sampling=dataclasses.asdict(settings),
            model=info.policy,
            identifiers=info.identifiers,
        )

    @app.post("/v1/score")
    async def score(body: score_body) -> ScoreOut:  # type: ignore[valid-type]
        pair = cast(ScoreRequest, body)
        probs = await ingress.identifiers.score.remote((pair.context, pair.response))
        info = await ingress.models()
        return ScoreOut(levels=LevelsOut.from_probs(probs), identifiers=info.identifiers)

    app.add_middleware(Guard, max_body_bytes=cfg.serve.max_body_bytes, key_digest=key_digest)
    return app


def build_app(cfg: Config, policy_dir: str | Path, identifiers_dir: str | Path) -> Application:
    """The bound application: ingress -> policy, identifiers. The API key, if any, is read here from
    the variable named by ``serve.api_key_env``; only its SHA-256 reaches the replicas."""
    s = cfg.serve
    env = {"env_vars": worker_env(dataclasses.replace(cfg.resources, torch_threads=s.torch_threads))}

    def deployment(cls: type, name: str, replicas: int, cpus: float) -> Deployment:
        return serve.deployment(name=name)(cls).options(
            num_replicas=replicas,
            ray_actor_options={"num_cpus": cpus, "runtime_env": env},
            max_ongoing_requests=s.max_ongoing_requests,
            max_queued_requests=s.max_queued_requests,
        )

    policy = deployment(PolicyDeployment, "policy", s.policy_replicas, s.policy_cpus)
    identifiers = deployment(IdentifierDeployment, "identifiers", s.identifier_replicas, s.identifier_cpus)
    key = os.environ.get(s.api_key_env, "").strip()
    digest = hashlib.sha256(key.encode()).hexdigest() if key else None
    # The ingress runs no model: it needs no CPU of its own.
    ingress = deployment(serve.ingress()(ApiIngress), "ingress", 1, 0.0)
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
