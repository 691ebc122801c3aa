"""Serve wiring: the Serve options of the deployments and the ingress from the ``serve`` section,
the API key, :func:`build_app` (ingress -> policy, identifiers), :func:`start_serve` (the HTTP proxy
on ``serve.host``) and :func:`serving` (both, for as long as a ``with`` block runs). The model folders may
be URIs or mirror paths of URIs: each replica fetches them onto its own node.
"""

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from ray.serve.schema import ProxyStatus

from actors.cluster.session import worker_env
from actors.serving.api import ApiIngress
from actors.serving.deployments import IdentifierDeployment, PolicyDeployment
from pipeline import storage
from pipeline.config import Config, ConfigError, ServeConfig
from pipeline.config.deployment import NODE_RESOURCE_SHARE

logger = logging.getLogger(__name__)


def api_key(s: ServeConfig) -> str:
    """The API key: the variable ``serve.api_key_env``, else the first line of ``serve.api_key_file`` (a
    local file, or an object-store URI fetched here); empty when neither is set.

    Raises:
        ConfigError: ``serve.api_key_file`` is set but unreadable or empty.
    """
    key = os.environ.get(s.api_key_env, "").strip()
    if key or not s.api_key_file:
        return key
    path = storage.local_path(s.api_key_file).expanduser()
    try:
        lines = storage.fetch(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(
            f"serve.api_key_file={storage.display(path)}: cannot read it ({exc.strerror}). Fix: point it "
            "at a file holding the key."
        ) from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ConfigError(
            f"serve.api_key_file={storage.display(path)} is empty. Fix: write the key on its first line."
        )
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


HEAD_RESOURCE = "node:__internal_head__"
"""The resource only the head node has (Ray's)."""


def ingress_options(s: ServeConfig, env: dict[str, Any]) -> dict[str, Any]:
    """Serve options of the ingress: one replica, no CPU of its own (it runs no model, it awaits the
    deployments), ``serve.ingress_max_ongoing_requests`` in flight, on the head (``serve.ingress_on_head``)."""
    on_head = {"resources": {HEAD_RESOURCE: NODE_RESOURCE_SHARE}} if s.ingress_on_head else {}
    return {
        "num_replicas": 1,
        "ray_actor_options": {"num_cpus": 0.0, "runtime_env": env, **on_head},
        "max_ongoing_requests": s.ingress_max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "backpressure_config": {"retry_after_s": 1},  # the proxy's own 503 says when to retry, as ours does
    }


def key_digest(s: ServeConfig) -> str | None:
    """The SHA-256 of the API key (:func:`api_key`), all the replicas get of it; ``None`` without a key."""
    key = api_key(s)
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def replica_env(cfg: Config) -> dict[str, Any]:
    """The runtime env of every replica: the workers' environment with ``serve.torch_threads`` threads."""
    threads = cfg.serve.torch_threads
    return {"env_vars": worker_env(dataclasses.replace(cfg.resources, torch_threads=threads))}


def replica_folder(folder: str | Path) -> str:
    """How a replica on any node is told ``folder``: the URI of a URI or a mirror path (the replica
    fetches it onto its node's mirror), else the absolute path."""
    path = storage.local_path(str(folder)).expanduser()
    return storage.uri_of(path) or str(path.resolve())


def build_app(cfg: Config, policy_dir: str | Path, identifiers_dir: str | Path) -> Application:
    """The bound application: ingress -> policy, identifiers (local folders, URIs or mirror paths). The
    API key, if any, is read here (:func:`key_digest`); only its SHA-256 reaches the replicas."""
    s = cfg.serve
    env = replica_env(cfg)
    policy = serve.deployment(name="policy")(PolicyDeployment).options(**deployment_options(s, "policy", env))
    identifiers = serve.deployment(name="identifiers")(IdentifierDeployment).options(
        **deployment_options(s, "identifiers", env)
    )
    digest = key_digest(s)
    ingress = serve.deployment(name="ingress")(serve.ingress()(ApiIngress)).options(**ingress_options(s, env))
    return ingress.bind(
        policy.bind(replica_folder(policy_dir), cfg),
        identifiers.bind(replica_folder(identifiers_dir), cfg),
        cfg,
        digest,
    )


def start_serve(cfg: Config) -> None:
    """Start Serve's HTTP proxies (``serve.proxy_location``) on ``serve.host:serve.port`` with
    ``serve.request_timeout_s`` (Ray up)."""
    s = cfg.serve
    options: dict[str, Any] = {
        "proxy_location": s.proxy_location,
        "http_options": {"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s},
    }
    try:
        serve.start(**options)
    except ray.exceptions.ActorDiedError as exc:
        # on a loaded machine a proxy can miss Serve's start-up health checks: the controller replaces it,
        # and serve.start, which awaited the first one, raises. Wait for the replacement instead.
        logger.warning(
            "Serve's HTTP proxy was replaced while starting (%s); waiting for the new one",
            str(exc).splitlines()[0],
        )
        serve.start(**options)  # the running controller
        wait_for_proxies(PROXY_WAIT_S)


PROXY_WAIT_S = 120.0
"""How long :func:`start_serve` waits for a replaced HTTP proxy."""


def wait_for_proxies(timeout_s: float) -> None:
    """Until every Serve HTTP proxy is healthy (``serve.status().proxies``).

    Raises:
        TimeoutError: one is not healthy within ``timeout_s``, naming the node and the state.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        proxies = serve.status().proxies
        if all(state == ProxyStatus.HEALTHY for state in proxies.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve's HTTP proxies not healthy after {timeout_s:.0f} s: {proxies}")
        time.sleep(0.5)


@contextlib.contextmanager
def serving(
    cfg: Config,
    policy_dir: str | Path,
    identifiers_dir: str | Path,
    *,
    name: str = "emprl",
    route_prefix: str = "/",
) -> Iterator[str]:
    """Serve's HTTP proxy started (:func:`start_serve`) and :func:`build_app` deployed as ``name`` on
    ``route_prefix``, until the ``with`` block ends (Serve is then shut down); yields the proxy's URL."""
    start_serve(cfg)
    try:
        serve.run(build_app(cfg, policy_dir, identifiers_dir), name=name, route_prefix=route_prefix)
        yield f"http://{cfg.serve.host}:{cfg.serve.port}"
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
