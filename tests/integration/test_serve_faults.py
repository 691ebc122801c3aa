"""Faults of a running `emprl serve` on 127.0.0.1, real models over real HTTP: a full queue answered 503,
a long generation answered 408 while short ones pass, and a policy replica killed under load replaced
with no more requests failing than were in flight.

One Serve instance (its HTTP timeout is global) holds a policy large enough that its longest response
takes seconds, served by two applications: ``slow`` with a one-request queue, ``replicas`` twice.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
import torch
from load import Load
from ppo_inputs import POLICY, tiny_config
from processes import free_port

from pipeline.config import Config
from pipeline.data import PreparedData
from pipeline.generation import SamplingSettings, generate_each
from pipeline.models import build_policy, build_policy_tokenizer, load_policy, save_policy
from pipeline.serving import dialogue_context

pytestmark = pytest.mark.integration

T = TypeVar("T")

TURNS = ["I finally got the job I wanted!", "That is great news!", "Thanks, I start on Monday."]
SLOW_POLICY = replace(
    POLICY, d_model=768, d_ff=3072, d_kv=64, num_layers=6, num_decoder_layers=6, num_heads=12,
    max_target_len=512,
)  # fmt: skip
"""A random T5 of t5-base's width: on one thread its longest response takes seconds."""
LONG = SLOW_POLICY.max_target_len
MEDIUM = LONG // 48
"""Tokens of a burst request: about 2 % of the longest generation (the one it waits for in the queue and
its own stay far inside the HTTP timeout, a quarter of the longest, under any load of the machine)."""
TIMEOUT_SHARE = 4
"""The HTTP timeout is this fraction of the longest generation (the margin against timing noise)."""
CLIENTS = 4
UNDER_LOAD = 4
"""Tokens per request of the clients around the replica kill (the replicas stay busy, well in time)."""


class Reply(NamedTuple):
    status: int
    body: Any
    """Parsed JSON, else the text."""
    retry_after: str | None


def call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    """A GET (no body) or POST over loopback."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            status, text, headers = reply.status, reply.read().decode(), reply.headers
    except urllib.error.HTTPError as exc:
        status, text, headers = exc.code, exc.read().decode(), exc.headers
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    return Reply(status, parsed, headers.get("retry-after"))


def respond(base: str, seed: int, max_new_tokens: int, headers: dict[str, str] | None = None) -> Reply:
    sampling = {"seed": seed, "max_new_tokens": max_new_tokens}
    return call(f"{base}/v1/respond", {"turns": TURNS, "emotion": "excited", "sampling": sampling}, headers)


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


class Served(NamedTuple):
    url: str
    run: Path
    slow_policy: Path
    long_s: float
    """Seconds of one ``LONG``-token generation of the slow policy on one thread, measured here."""
    timeout_s: float


def slow_config(port: int, timeout_s: float, **overrides: Any) -> Config:
    """One request at a time, one more queued; every response exactly as long as asked."""
    base: dict[str, Any] = {
        "serve__port": port,
        "serve__request_timeout_s": timeout_s,
        "serve__policy_cpus": 0.25,
        "serve__identifier_cpus": 0.25,
        "serve__max_batch_size": 1,
        "serve__max_ongoing_requests": 1,
        "serve__max_queued_requests": 1,
        "model__max_target_len": LONG,
        "rollout__max_new_tokens": LONG,
        "rollout__min_new_tokens": LONG,  # a random T5 may sample EOS early: forbid it
    }
    return tiny_config(**{**base, **overrides})


def measure_long_generation(folder: Path) -> float:
    """Seconds of one ``LONG``-token generation on one thread, as a policy replica runs it."""
    cfg = tiny_config()
    model, tokenizer = load_policy(folder)
    policy: Any = model.policy
    policy.train(False)
    r = cfg.rollout
    settings = SamplingSettings(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                                min_new_tokens=LONG, max_new_tokens=LONG, seed=1)  # fmt: skip
    context = dialogue_context(TURNS, "excited", cfg.data)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.serve.torch_threads)
    try:
        seconds, (out,) = timed(
            generate_each, policy, tokenizer, [context], [settings], max_source_len=cfg.model.max_source_len
        )
    finally:
        torch.set_num_threads(threads)
    assert out.completion_tokens == LONG
    return seconds


@pytest.fixture(scope="module")
def served(
    ray_cluster: None, ppo_run: Path, demo: PreparedData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """Serve with an HTTP timeout a quarter of the slow policy's longest generation; ``slow`` on ``/slow``."""
    from ray import serve

    from actors.serving.app import build_app, start_serve

    tmp = tmp_path_factory.mktemp("serve_faults")
    run = ppo_run
    train = demo.ed["train"]
    texts = list(train["context"])[:64] + list(train["response"])[:64]
    tokenizer = build_policy_tokenizer(SLOW_POLICY, texts)
    torch.manual_seed(0)
    folder = save_policy(build_policy(SLOW_POLICY, tokenizer), tokenizer, tmp / "slow" / "sft" / "policy")
    long_s = measure_long_generation(folder)
    timeout_s = round(long_s / TIMEOUT_SHARE, 2)
    print(f"\nslow policy: {LONG} tokens in {long_s:.2f} s; HTTP timeout {timeout_s:.2f} s")
    port = free_port()
    cfg = slow_config(port, timeout_s)
    serve.shutdown()  # HTTP options are global: this module needs its own Serve instance
    start_serve(cfg)
    try:
        serve.run(build_app(cfg, folder, run / "identifiers"), name="slow", route_prefix="/slow")
        yield Served(f"http://127.0.0.1:{port}", run, folder, long_s, timeout_s)
    finally:
        serve.shutdown()


def test_deployments_report_healthy(served: Served) -> None:
    from ray import serve

    app = serve.status().applications["slow"]
    assert app.status == "RUNNING", app.message
    assert set(app.deployments) == {"ingress", "policy", "identifiers"}
    for name, deployment in app.deployments.items():
        assert deployment.status == "HEALTHY", (name, deployment.message)
        assert deployment.replica_states.get("RUNNING") == 1, (name, deployment.replica_states)


def test_a_burst_over_the_queue_is_answered_503_then_the_service_recovers(served: Served) -> None:
    base = f"{served.url}/slow"
    together = threading.Barrier(8)

    def one(seed: int) -> Reply:
        together.wait()
        return respond(base, seed, MEDIUM)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    statuses = sorted(r.status for r in replies)
    print(f"\nburst of 8 requests of {MEDIUM} tokens: {statuses}")
    for r in {(r.status, str(r.body), r.retry_after) for r in replies if r.status != 200}:
        print(f"  {r[0]}: {r[1]} (retry-after: {r[2]})")
    assert set(statuses) <= {200, 503}, replies
    assert 200 in statuses and 503 in statuses
    # Retry-After: on the app's own 503s always; Serve's proxy sets it on most of its rejections only
    assert all(r.retry_after == "1" for r in replies if r.status == 503 and isinstance(r.body, dict)), replies
    reply = respond(base, 99, 1)
    assert reply.status == 200, reply


def test_a_long_generation_is_answered_408_and_short_ones_pass(served: Served) -> None:
    base = f"{served.url}/slow"
    seconds, reply = timed(respond, base, 1, 1)
    print(f"\nshort request: {reply.status} in {seconds:.2f} s (timeout {served.timeout_s:.2f} s)")
    assert reply.status == 200, reply
    assert reply.body["sampling"]["max_new_tokens"] == 1
    sent = time.monotonic()
    seconds, reply = timed(respond, base, 2, LONG)
    print(f"long request: {reply.status} in {seconds:.2f} s: {reply.body}")
    assert reply.status == 408, reply
    assert 0.95 * served.timeout_s <= seconds < served.long_s / 2
    # the abandoned generation stops at its next token: the replica is free at once
    seconds, right_after = timed(respond, base, 3, 1)
    print(f"short request right after: {right_after.status} in {seconds:.2f} s "
          f"({time.monotonic() - sent:.2f} s after the long one was sent)")  # fmt: skip
    assert right_after.status == 200, right_after
    assert time.monotonic() - sent < served.long_s / 2
    # a client cannot lift the timeout: Serve's proxy honours x-request-timeout-seconds, the app does not
    seconds, lifted = timed(respond, base, 5, LONG, {"x-request-timeout-seconds": "0"})
    print(f"long request asking for no timeout: {lifted.status} in {seconds:.2f} s")
    assert lifted.status == 408, lifted
    assert seconds < served.long_s / 2


def policy_replicas(app: str) -> set[str]:
    """Names of the live policy replica actors of ``app`` (``SERVE_REPLICA::<app>#policy#<id>``)."""
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    prefix = f"SERVE_REPLICA::{app}#policy#"
    return {a["name"] for a in named if a["namespace"] == "serve" and a["name"].startswith(prefix)}


def test_a_replica_killed_under_load_is_replaced(served: Served) -> None:
    import ray
    from ray import serve

    from actors.serving.app import build_app, start_serve

    port = int(served.url.rsplit(":", 1)[1])
    # Serve's HTTP timeout is global: this test's own Serve, whose timeout no answer on two loaded cores
    # reaches (the module's short one is the 408 test's); the module's Serve comes back after it
    cfg = slow_config(
        port, 120.0, serve__policy_replicas=2, serve__max_batch_size=4, serve__max_ongoing_requests=8,
        serve__max_queued_requests=64, serve__health_check_period_s=1.0,
    )  # fmt: skip
    serve.shutdown()
    start_serve(cfg)
    app = build_app(cfg, served.slow_policy, served.run / "identifiers")
    serve.run(app, name="replicas", route_prefix="/replicas")
    base = f"{served.url}/replicas"
    try:
        before = policy_replicas("replicas")
        assert len(before) == 2, before
        load = Load(lambda seed: respond(base, seed, UNDER_LOAD), CLIENTS).start()
        results = load.results
        try:
            # the kill lands on a service in steady state: every client has had an answer (the first calls
            # of a new app can take seconds on two loaded cores), and the load runs on
            warm = time.monotonic() + 90
            while len(results) < CLIENTS and time.monotonic() < warm:
                time.sleep(0.25)
            assert len(results) >= CLIENTS, f"{len(results)} answers to {CLIENTS} clients within 90 s"
            time.sleep(1.0)
            victim = sorted(before)[0]
            killed = time.monotonic()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            replaced, now = None, before
            while replaced is None and time.monotonic() < killed + 180:  # two loaded cores: slow start-ups
                time.sleep(0.25)
                now = policy_replicas("replicas")
                state = serve.status().applications["replicas"].deployments["policy"]
                if (len(now) == 2 and victim not in now and state.status == "HEALTHY"
                        and state.replica_states.get("RUNNING") == 2):  # fmt: skip
                    replaced = time.monotonic()
            time.sleep(1.0)  # load on the new pair
        finally:
            load.stop()
        failed = [(s - killed, e - killed, r) for s, e, r in results if r.status != 200]
        in_flight = [r.status for s, e, r in results if s < killed < e]
        meanwhile = [r.status for s, _, r in results if killed < s < (replaced or killed)]
        later = [r.status for s, _, r in results if replaced and s > replaced]
        print(f"\n{len(results)} requests of {UNDER_LOAD} tokens from {CLIENTS} clients, {len(failed)} failed; "
              f"in flight at the kill: {in_flight}; sent until the replacement: {meanwhile.count(200)}/"
              f"{len(meanwhile)} answered 200, after it: {later.count(200)}/{len(later)}; replaced "
              f"{None if replaced is None else round(replaced - killed, 2)} s after the kill: "
              f"{sorted(before)} -> {sorted(now)}")  # fmt: skip
        for label, spans in (("before", [e - s for s, e, _ in results if e < killed]),
                             ("after", [e - s for s, e, _ in results if e >= killed])):  # fmt: skip
            spans.sort()
            print(f"latency {label} the kill: " + (
                f"median {spans[len(spans) // 2]:.2f} s, max {spans[-1]:.2f} s" if spans else "no answer"
            ))  # fmt: skip
        for s, e, r in failed:
            print(f"  failed: sent {s:+.2f} s, answered {e:+.2f} s: {r.status} {r.body}")
        assert replaced is not None, (now, state)
        assert len(failed) <= CLIENTS, failed
        assert 200 in meanwhile  # one replica kept answering while the other was replaced
        assert later and set(later) == {200}, later
    finally:
        serve.shutdown()
        slow = slow_config(port, served.timeout_s)
        start_serve(slow)
        serve.run(
            build_app(slow, served.slow_policy, served.run / "identifiers"), name="slow", route_prefix="/slow"
        )
