"""Load on the `emprl serve` application over loopback: batching on vs off vs a no-op Serve app, side by side.

    python benchmarks/serve_load.py --run-dir runs/local [--endpoint respond|score] [--levels 1 4 16 64]
        [--seconds 20] [--warmup 2] [--quick] [--out serve_load.json] [--preset P] [KEY=VALUE ...]

Starts a local Ray cluster and Serve's HTTP proxy on 127.0.0.1 and deploys, one after the other behind the
same proxy: (a) the app of ``emprl serve`` with batching on (``serve.max_batch_size`` of the config, 8 by
default), (b) the same with batching off (``serve.max_batch_size=1``), (c) a no-op app with the same
ingress path (FastAPI, the request models and the body guard, two handle calls for /v1/respond, one for
/v1/score) whose model deployment answers a constant at once: Serve's own cost. For each, N client
threads (``--levels``) loop on keep-alive connections for ``--seconds`` after ``--warmup`` seconds, sending
ED valid dialogues (a fixed list without the data) with ``{"sampling": {"seed": i}}``. Per level: ok req/s
(200s per second), p50/p95/p99 latency of the 200s, and the count of each status (503 overloaded, 408 over
``serve.request_timeout_s``, other codes, connection errors); then the ratios batching on/off and each vs
no-op. The clients share the CPUs with the server: on a 2-core laptop the no-op figure is a floor for
Serve plus these clients, not Serve alone. More clients than a replica's ``max_ongoing_requests`` queue
in Serve's router, which polls the busy replicas with a backoff of up to 0.5 s: throughput collapses
there (hence the defaults: 64 per model replica, 256 for the ingress).
The config is the run's ``config.yaml`` (else ``local``) with ``serve.policy_cpus=1
serve.identifier_cpus=0.5 serve.torch_threads=1``, then the ``KEY=VALUE`` overrides. Laptop smoke check:
``--quick`` (levels 1 and 4, 3 s each). Run it on an otherwise idle machine: it waits up to
``--wait-idle`` s for idle CPUs, says whether they were, and prints the load average before and after.
"""

# No `from __future__ import annotations`: FastAPI reads the no-op routes' annotations, which name
# request classes built at run time (as in actors/serving/api.py).
# ruff: noqa: TID251  (a benchmark drives Serve itself, like jobs/; the ban keeps Ray out of pipeline/)

import argparse
import dataclasses
import http.client
import json
import logging
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

# first: the process defaults, before Ray or transformers load
from machine import ED, IDLE_BUSY, load_after, wait_idle

# Replicas would log every request to stderr, which Ray forwards here: thousands of lines per level.
# Their log files are still written, as in `emprl serve`.
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from actors.cluster.session import ray_session
from actors.serving.app import (
    api_key,
    build_app,
    deployment_options,
    ingress_options,
    key_digest,
    replica_env,
    start_serve,
)
from actors.serving.guard import Guard
from jobs.cli.serve import served_folders
from jobs.launch.options import load_or_exit
from pipeline.config import Config, DataConfig
from pipeline.data import parse_ed_split
from pipeline.layout import RunLayout
from pipeline.serving import dialogue_context, request_models
from pipeline.serving.messages import LevelsOut, ModelInfo, RespondOut, RespondRequest, ScoreOut, ScoreRequest

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
BENCH_DEFAULTS = ["serve.policy_cpus=1", "serve.identifier_cpus=0.5", "serve.torch_threads=1"]
"""Room on 2 cores for the ingress, the proxy and the clients; the command line's overrides win."""
MAX_CLIENTS = 256
ED_DIALOGUES = 256
FIXED_DIALOGUES: list[tuple[list[str], str]] = [
    (["I finally got the job I wanted!"], "excited"),
    (["My dog passed away last night.", "Oh no, I am so sorry. How old was he?",
      "He was fourteen. The house feels so empty now."], "sad"),
    (["I heard a noise downstairs at 3am and I was home alone."], "terrified"),
    (["My best friend forgot my birthday again this year."], "disappointed"),
    (["I passed my driving test on the first try!", "Congratulations! Was it hard?",
      "The parallel parking was scary but I made it."], "proud"),
    (["Someone cut in front of me in line and the cashier just let it happen."], "angry"),
    (["I am moving to a new city next week and I don't know anyone there."], "anxious"),
    (["My grandmother sent me a letter with her old recipes."], "sentimental"),
]  # fmt: skip
NOOP_TEXT = "That sounds really hard. How are you holding up?"
NOOP_PROBS = {"ER": [0.2, 0.5, 0.3], "IP": [0.6, 0.3, 0.1], "EX": [0.1, 0.2, 0.7]}


@dataclasses.dataclass(frozen=True)
class Level:
    """One setup at one concurrency: what the clients saw in the measured window."""

    setup: str
    clients: int
    seconds: float
    ok_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    codes: dict[str, int]

    def count(self, code: str) -> int:
        return self.codes.get(code, 0)

    @property
    def other(self) -> int:
        return sum(n for c, n in self.codes.items() if c not in ("200", "503", "408", "error"))


class NoopModel:
    """The policy and the identifiers without a model: constant answers, no batching."""

    async def generate(self, request: tuple[str, int]) -> str:
        return NOOP_TEXT

    async def score(self, pair: tuple[str, str]) -> dict[str, list[float]]:
        return NOOP_PROBS


class NoopIngress:
    """The real ingress's path (guard, request models, handle calls, response models) around :class:`NoopModel`."""

    def __init__(self, model: DeploymentHandle[Any], cfg: Config, key_digest: str | None) -> None:
        self.model, self.cfg, self.key_digest = model, cfg, key_digest

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return noop_api(self.model, self.cfg, self.key_digest)


def noop_api(model: DeploymentHandle[Any], cfg: Config, key_digest: str | None) -> FastAPI:
    """/v1/respond and /v1/score answering like ``emprl serve`` (same shapes), with no model behind."""
    app = FastAPI()
    info = ModelInfo(name="noop/policy", version="0" * 12, runtime="cpu float32")
    ids = ModelInfo(name="noop/identifiers", version="0" * 12, runtime="cpu float32")
    respond_body, score_body = request_models(cfg.serve, cfg.model)

    async def overloaded(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "overloaded"}, status_code=503, headers={"retry-after": "1"})

    app.add_exception_handler(BackPressureError, overloaded)

    @app.post("/v1/respond")
    async def respond(body: respond_body) -> RespondOut:  # type: ignore[valid-type]
        req: RespondRequest = body
        context = dialogue_context(req.turns, req.emotion, cfg.data)
        seed = req.sampling.seed or 0
        text = await model.generate.remote((context, seed))
        probs = await model.score.remote((context, text))
        return RespondOut(
            response=text, levels=LevelsOut.from_probs(probs), context=context,
            sampling={"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": seed}, model=info, identifiers=ids,
        )  # fmt: skip

    @app.post("/v1/score")
    async def score(body: score_body) -> ScoreOut:  # type: ignore[valid-type]
        pair: ScoreRequest = body
        probs = await model.score.remote((pair.context, pair.response))
        return ScoreOut(levels=LevelsOut.from_probs(probs), identifiers=ids)

    app.add_middleware(Guard, max_body_bytes=cfg.serve.max_body_bytes, key_digest=key_digest)
    return app


def noop_app(cfg: Config) -> Application:
    """:func:`noop_api` deployed like :func:`actors.serving.app.build_app`: same options, no model."""
    s = cfg.serve
    env = replica_env(cfg)
    model = serve.deployment(name="noop")(NoopModel).options(**deployment_options(s, "policy", env))
    ingress = serve.deployment(name="ingress")(serve.ingress()(NoopIngress)).options(
        **ingress_options(s, env)
    )
    return ingress.bind(model.bind(), cfg, key_digest(s))


def dialogues(ed: Path, cfg: Config) -> tuple[list[dict[str, Any]], str]:
    """Request bodies without their seed (turns + emotion, and context + response for /v1/score) and
    where they came from: the first ED valid dialogues that fit the serve limits, else a fixed list."""
    s = cfg.serve
    rows: list[tuple[list[str], str, str]] = []
    if ed.is_file():
        for e in parse_ed_split(ed, DataConfig()).examples:
            turns = list(e.history)
            texts = [*turns, e.response]
            if 1 <= len(turns) <= s.max_turns and all(len(t) <= s.max_text_chars for t in texts):
                rows.append((turns, e.emotion, e.response))
            if len(rows) == ED_DIALOGUES:
                break
    source = f"{len(rows)} ED dialogues from {ed}"
    if not rows:
        rows = [(turns, emotion, NOOP_TEXT) for turns, emotion in FIXED_DIALOGUES]
        source = f"{len(rows)} fixed dialogues ({ed} not found)"
    bodies = [
        {"turns": turns, "emotion": emotion, "context": dialogue_context(turns, emotion, cfg.data),
         "response": response}
        for turns, emotion, response in rows
    ]  # fmt: skip
    return bodies, source


def payload(body: dict[str, Any], endpoint: str, seed: int) -> bytes:
    if endpoint == "score":
        return json.dumps({"context": body["context"], "response": body["response"]}).encode()
    return json.dumps(
        {"turns": body["turns"], "emotion": body["emotion"], "sampling": {"seed": seed}}
    ).encode()


def client(
    k: int,
    n: int,
    *,
    port: int,
    endpoint: str,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
    end: float,
    timeout: float,
    budget: threading.Semaphore,
    out: list[tuple[float, float, str]],
) -> None:
    """Client ``k`` of ``n``: POST on one keep-alive connection until ``end`` or the request budget is
    spent, appending (finished at, seconds, status or ``error``) to ``out``. Seeds k, k+n, k+2n, ..."""
    conn: http.client.HTTPConnection | None = None
    i = k
    while time.perf_counter() < end and budget.acquire(blocking=False):
        data = payload(bodies[i % len(bodies)], endpoint, i)
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
            conn.request("POST", f"/v1/{endpoint}", body=data, headers=headers)
            reply = conn.getresponse()
            reply.read()
            code = str(reply.status)
            if reply.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            code = "error"
            if conn is not None:
                conn.close()
            conn = None
        finished = time.perf_counter()
        out.append((finished, finished - started, code))
        if code == "error":
            time.sleep(0.05)  # a refused connection would otherwise spin
        i += n
    if conn is not None:
        conn.close()


def run_level(
    setup: str,
    n: int,
    args: argparse.Namespace,
    cfg: Config,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
) -> Level:
    """``n`` clients for ``args.warmup`` + ``args.seconds``; counts what finished in the measured window."""
    out: list[tuple[float, float, str]] = []
    timeout = cfg.serve.request_timeout_s + 10
    start = time.perf_counter()
    measured_from, end = start + args.warmup, start + args.warmup + args.seconds
    budget = threading.Semaphore(args.max_requests)
    threads = [
        threading.Thread(
            target=client, args=(k, n), daemon=True,
            kwargs={"port": cfg.serve.port, "endpoint": args.endpoint, "bodies": bodies, "headers": headers,
                    "end": end, "timeout": timeout, "budget": budget, "out": out},
        )
        for k in range(n)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end - time.perf_counter()) + timeout + 5)
    window = [(s, c) for finished, s, c in out if measured_from <= finished <= end]
    codes: dict[str, int] = {}
    for _, c in window:
        codes[c] = codes.get(c, 0) + 1
    ok = sorted(s * 1000 for s, c in window if c == "200")
    if len(ok) >= 2:
        q = statistics.quantiles(ok, n=100, method="inclusive")
        p50, p95, p99 = q[49], q[94], q[98]
    else:
        p50 = p95 = p99 = ok[0] if ok else float("nan")
    return Level(setup, n, args.seconds, len(ok) / args.seconds, p50, p95, p99, codes)


HEADER = (
    f"{'clients':>7}  {'setup':<12} {'ok req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
    f"{'200':>6} {'503':>5} {'408':>5} {'other':>5} {'conn err':>8}"
)


def row(r: Level) -> str:
    return (
        f"{r.clients:>7}  {r.setup:<12} {r.ok_per_s:>9.1f} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.p99_ms:>8.1f} "
        f"{r.count('200'):>6} {r.count('503'):>5} {r.count('408'):>5} {r.other:>5} {r.count('error'):>8}"
    )


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="run folder: ppo/ or sft/ policy, identifiers/"
    )
    parser.add_argument(
        "--policy", type=Path, default=None, help="default: <run>/ppo/policy, else <run>/sft/policy"
    )
    parser.add_argument("--identifiers", type=Path, default=None, help="default: <run>/identifiers")
    parser.add_argument(
        "--preset", default=None, help="preset or YAML (default: <run>/config.yaml, else local)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. serve.max_batch_size=4"
    )
    parser.add_argument("--endpoint", choices=["respond", "score"], default="respond")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--max-requests", type=int, default=100_000, help="most requests sent per level")
    parser.add_argument("--quick", action="store_true", help="smoke check: levels 1 4, 3 s each, 1 s warm-up")
    parser.add_argument("--ed", type=Path, default=ED / "valid.csv")
    parser.add_argument(
        "--wait-idle", type=float, default=60.0, help="most seconds to wait for idle CPUs first"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.levels, args.seconds, args.warmup = [1, 4], 3.0, 1.0
    if not all(1 <= n <= MAX_CLIENTS for n in args.levels) or not 0 < args.seconds <= 600:
        parser.error(f"--levels must be 1..{MAX_CLIENTS} clients and --seconds in (0, 600]")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its per-deployment INFO lines split the table

    saved = RunLayout(args.run_dir).config
    preset = args.preset or (str(saved) if saved.is_file() else "local")
    overrides = [*BENCH_DEFAULTS, *args.overrides]
    cfg = load_or_exit(preset, [*overrides, f"serve.port={free_port()}"])
    if cfg.serve.host != HOST:
        raise SystemExit(
            f"serve.host={cfg.serve.host}: this benchmark runs on {HOST} only. Fix: drop the override."
        )
    batched = cfg.serve.max_batch_size
    if batched == 1:
        raise SystemExit(
            "serve.max_batch_size=1: batching on needs > 1. Fix: drop the override or set it to 8."
        )
    unbatched = load_or_exit(preset, [*overrides, "serve.max_batch_size=1", f"serve.port={cfg.serve.port}"])
    policy, identifiers = served_folders(args.run_dir, args.policy, args.identifiers)
    bodies, source = dialogues(args.ed, cfg)
    key = api_key(cfg.serve)
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}

    s, r = cfg.serve, cfg.resources
    cores = os.cpu_count() or 1
    busy, waited = wait_idle(args.wait_idle)
    load = os.getloadavg()
    verdict = "idle" if busy < IDLE_BUSY else "NOT idle: the figures will be low and noisy"
    print(f"machine before: CPUs {busy:.0%} busy (2 s sample, after {waited:.0f} s waiting for < {IDLE_BUSY:.0%}), "
          f"load average {tuple(round(x, 2) for x in load)} on {cores} cores: {verdict}")  # fmt: skip
    print(f"policy {policy}, identifiers {identifiers}, preset {preset}")
    print(f"Ray: {r.num_cpus or cores} CPUs on {HOST}; serve: port {s.port}, policy_cpus {s.policy_cpus} x "
          f"{s.policy_replicas}, identifier_cpus {s.identifier_cpus} x {s.identifier_replicas}, torch_threads "
          f"{s.torch_threads}, max_batch_size {batched} (on) / 1 (off), batch_wait_timeout_s "
          f"{s.batch_wait_timeout_s}, max_ongoing_requests {s.max_ongoing_requests}, max_queued_requests "
          f"{s.max_queued_requests}, request_timeout_s {s.request_timeout_s}")  # fmt: skip
    print(f"POST /v1/{args.endpoint}: {source}; max_new_tokens {cfg.rollout.max_new_tokens}; clients "
          f"{args.levels}, {args.warmup:g} s warm-up + {args.seconds:g} s each, keep-alive, in this process")  # fmt: skip

    over = [n for n in args.levels if n > s.max_ongoing_requests * s.policy_replicas]
    if over:
        print(f"note: {over} clients > serve.max_ongoing_requests={s.max_ongoing_requests} x replicas: the "
              "excess queues in Serve's router (retry backoff up to 0.5 s), not in the replicas")  # fmt: skip
    setups: list[tuple[str, Application]] = [
        ("no-op", noop_app(cfg)),
        ("batching on", build_app(cfg, policy, identifiers)),
        ("batching off", build_app(unbatched, policy, identifiers)),
    ]
    results: list[Level] = []
    deploy_s: dict[str, float] = {}
    with ray_session(cfg.resources):
        try:
            start_serve(cfg)
            print(f"\n{HEADER}", flush=True)
            for name, app in setups:
                deployed = time.perf_counter()
                serve.run(app, name="bench", route_prefix="/")
                deploy_s[name] = time.perf_counter() - deployed
                for n in args.levels:
                    results.append(run_level(name, n, args, cfg, bodies, headers))
                    print(row(results[-1]), flush=True)
                serve.delete("bench")
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
    load_after_runs = load_after()
    print("deployed (serve.run until healthy) in " + ", ".join(f"{k} {v:.1f} s" for k, v in deploy_s.items()))

    by = {(x.setup, x.clients): x for x in results}
    print(f"\n{HEADER}")
    for n in args.levels:
        for name, _ in setups:
            print(row(by[name, n]))
    print(f"\n{'clients':>7}  {'on / off':>9} {'on / no-op':>11} {'off / no-op':>12}   (ok req/s)")
    ratios = []
    for n in args.levels:
        on, off, noop = (by[name, n].ok_per_s for name in ("batching on", "batching off", "no-op"))
        x = {"clients": n, "on_off": ratio(on, off), "on_noop": ratio(on, noop), "off_noop": ratio(off, noop)}
        ratios.append(x)
        print(f"{n:>7}  {fmt(x['on_off']):>9} {fmt(x['on_noop']):>11} {fmt(x['off_noop']):>12}")
    if args.out is not None:
        settings = {"policy": str(policy), "identifiers": str(identifiers), "preset": preset, "overrides": overrides,
                    "endpoint": args.endpoint, "dialogues": source, "seconds": args.seconds, "warmup": args.warmup,
                    "serve": dataclasses.asdict(s), "cpu_busy_before": busy, "load_before": load, "load_after": load_after_runs}  # fmt: skip
        rows = [dataclasses.asdict(x) for x in results]
        args.out.write_text(
            json.dumps({"settings": settings, "levels": rows, "ratios": ratios}, indent=2) + "\n"
        )
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
