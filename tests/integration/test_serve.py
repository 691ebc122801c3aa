"""`emprl serve` for real: a Ray Serve application on 127.0.0.1 with tiny models, driven over HTTP.

Round trips on every endpoint, seeded responses that survive batching, status codes of bad requests
(and the service answering after a burst of them), and the API key on a second application.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from ppo_inputs import tiny_config
from processes import free_port

from jobs.cli.serve import served_folders
from pipeline.config import Config, ConfigError
from pipeline.serving import dialogue_context

pytestmark = pytest.mark.integration

TURNS = [
    "I finally got the job I wanted!",
    "That is great news, congratulations!",
    "Thanks, I start on Monday.",
]
KEY_ENV = "EMPRL_TEST_SERVE_KEY"


def call(
    url: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of a GET (no body) or POST over loopback."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            status, text = reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="module")
def service(ray_cluster: None, ppo_run: Path) -> Iterator[tuple[str, Config, Path]]:
    from ray import serve

    from actors.serving.app import build_app, start_serve

    run = ppo_run
    cfg = tiny_config(
        serve__port=free_port(),
        serve__policy_cpus=0.25,
        serve__identifier_cpus=0.25,
        serve__max_batch_size=4,
        serve__max_ongoing_requests=8,
        serve__max_body_bytes=4096,
        serve__max_turns=8,
        serve__max_text_chars=200,
        serve__api_key_env=KEY_ENV,
    )
    os.environ.pop(KEY_ENV, None)
    policy, identifiers = served_folders(run, None, None)
    assert policy == run / "sft" / "policy"
    start_serve(cfg)
    try:
        serve.run(build_app(cfg, policy, identifiers), name="emprl", route_prefix="/")
        yield f"http://127.0.0.1:{cfg.serve.port}", cfg, run
    finally:
        serve.shutdown()


def respond(url: str, seed: int, turns: list[str] = TURNS, **sampling: Any) -> tuple[int, Any]:
    return call(
        f"{url}/v1/respond", {"turns": turns, "emotion": "excited", "sampling": {"seed": seed, **sampling}}
    )


def check_levels(levels: dict[str, Any]) -> None:
    assert set(levels) == {"er", "ip", "ex"}
    for level in levels.values():
        assert level["level"] in (0, 1, 2)
        assert len(level["probs"]) == 3 and abs(sum(level["probs"]) - 1) < 1e-4
        assert level["level"] == max(range(3), key=lambda k: level["probs"][k])
        assert level["label"] == ("none", "weak", "strong")[level["level"]]


def test_respond_round_trip(service: tuple[str, Config, Path]) -> None:
    url, cfg, _ = service
    status, out = respond(url, 11, temperature=1.2, top_k=50)
    assert status == 200, out
    assert isinstance(out["response"], str)
    check_levels(out["levels"])
    assert out["context"] == dialogue_context(TURNS, "excited", cfg.data)
    assert out["sampling"]["seed"] == 11 and out["sampling"]["top_k"] == 50
    assert out["model"]["name"] == "run/sft" and len(out["model"]["version"]) == 12
    # the identifiers give the same levels when asked directly about the same pair
    status, scored = call(f"{url}/v1/score", {"context": out["context"], "response": out["response"]})
    assert status == 200, scored
    check_levels(scored["levels"])
    for m in ("er", "ip", "ex"):
        assert scored["levels"][m]["probs"] == pytest.approx(out["levels"][m]["probs"], abs=1e-5)


def test_a_seed_reproduces_its_response_alone_and_in_a_batch(service: tuple[str, Config, Path]) -> None:
    url, _, _ = service
    first, second = respond(url, 5), respond(url, 5)
    assert first[0] == second[0] == 200
    assert first[1]["response"] == second[1]["response"]
    # concurrent requests land in the same @serve.batch: seed 5 must still give the same response
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda s: respond(url, s, turns=TURNS if s in (5, 6, 8) else TURNS[-1:]), [5, 6, 7, 8, 9, 5]
            )
        )
    assert all(status == 200 for status, _ in replies), replies
    assert replies[0][1]["response"] == replies[-1][1]["response"] == first[1]["response"]
    unseeded = [call(f"{url}/v1/respond", {"turns": TURNS})[1]["sampling"]["seed"] for _ in range(2)]
    assert unseeded[0] != unseeded[1]  # a random seed is drawn and reported


def test_score_models_and_health(service: tuple[str, Config, Path]) -> None:
    url, cfg, _ = service
    status, scored = call(
        f"{url}/v1/score", {"context": "I lost my job.", "response": "I am so sorry. What happened?"}
    )
    assert status == 200, scored
    check_levels(scored["levels"])
    status, models = call(f"{url}/v1/models")
    assert status == 200, models
    assert models["mechanisms"] == ["ER", "IP", "EX"]
    assert models["policy"]["name"] == "run/sft" and models["identifiers"]["name"] == "identifiers"
    assert models["policy"]["runtime"] == models["identifiers"]["runtime"] == "cpu float32"
    assert models["object"] == "list" and models["data"][0]["id"] == "run/sft"
    assert (
        models["limits"]["max_turns"] == 8 and models["limits"]["max_new_tokens"] == cfg.model.max_target_len
    )
    assert call(f"{url}/healthz") == (200, {"status": "ok"})
    status, docs = call(f"{url}/openapi.json")
    assert status == 200 and "/v1/respond" in docs["paths"]


def _fields(reply: tuple[int, Any]) -> set[str]:
    status, body = reply
    assert status == 422, reply
    return {d["field"] for d in body["detail"]}


def test_bad_requests_get_their_status_and_name_the_field(service: tuple[str, Config, Path]) -> None:
    url, _, _ = service
    endpoint = f"{url}/v1/respond"
    status, body = call(endpoint, raw=b'{"turns": ["hi"')
    assert status in (400, 422), body
    assert _fields(call(endpoint, {"turns": "hello"})) == {"turns"}
    assert _fields(call(endpoint, {"turns": ["hi"], "sampling": {"top_k": "many"}})) == {"sampling.top_k"}
    assert _fields(call(endpoint, {"turns": []})) == {"turns"}
    assert _fields(call(endpoint, {"turns": ["hi"], "persona": "doctor"})) == {"persona"}
    assert _fields(call(endpoint, {"turns": ["hi"], "sampling": {"temperature": 3.0}})) == {
        "sampling.temperature"
    }
    assert _fields(call(endpoint, {"turns": ["hi"], "sampling": {"max_new_tokens": 10_000}})) == {
        "sampling.max_new_tokens"
    }
    assert _fields(call(endpoint, {"turns": ["x" * 201]})) == {"turns.0"}
    assert _fields(call(f"{url}/v1/score", {"context": "hi"})) == {"response"}
    status, body = call(endpoint, {"turns": ["x" * 5000]})
    assert status == 413, body
    assert "4096" in body["detail"]
    assert call(f"{url}/v1/nothing")[0] == 404


def test_service_still_answers_after_a_burst_of_bad_requests(service: tuple[str, Config, Path]) -> None:
    url, _, _ = service
    bad: list[dict[str, Any]] = [
        {"raw": b"\x00\xff not json"},
        {"body": {"turns": [1, 2]}},
        {"body": {"turns": ["a"], "sampling": {"seed": -3}}},
        {"raw": b"x" * 10_000},
    ]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda k: call(f"{url}/v1/respond", **bad[k % len(bad)])[0], range(40)))
    assert set(statuses) <= {400, 413, 422} and 413 in statuses and 422 in statuses
    assert call(f"{url}/healthz")[0] == 200
    status, out = respond(url, 3)
    assert status == 200, out


def test_api_key_guards_every_endpoint_but_healthz(
    service: tuple[str, Config, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import serve

    from actors.serving.app import build_app

    url, cfg, run = service
    monkeypatch.setenv(KEY_ENV, "s3cret-key")
    serve.run(
        build_app(cfg, run / "sft" / "policy", run / "identifiers"), name="secured", route_prefix="/secured"
    )
    try:
        base = f"{url}/secured"
        good = {"authorization": "Bearer s3cret-key"}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-key"}):
            status, body = call(f"{base}/v1/models", headers=headers)
            assert status == 401, body
            assert call(f"{base}/v1/respond", {"turns": ["hi"]}, headers=headers)[0] == 401
            assert call(f"{base}/v1/score", {"context": "a", "response": "b"}, headers=headers)[0] == 401
            assert call(f"{base}/docs", headers=headers)[0] == 401
        assert call(f"{base}/healthz") == (200, {"status": "ok"})
        assert call(f"{base}/v1/models", headers=good)[0] == 200
        status, out = call(f"{base}/v1/respond", {"turns": ["hi"], "sampling": {"seed": 1}}, headers=good)
        assert status == 200, out
        check_levels(out["levels"])
        assert call(f"{url}/v1/models")[0] == 200  # the first application keeps no key
    finally:
        serve.delete("secured")


def test_candidates_closest_to_the_target_levels(service: tuple[str, Config, Path]) -> None:
    url, _, _ = service
    body = {"turns": TURNS, "emotion": "excited", "sampling": {"seed": 40}, "n_candidates": 4,
            "target_levels": {"er": 2, "ex": 0}, "return_candidates": True}  # fmt: skip
    status, out = call(f"{url}/v1/respond", body)
    assert status == 200, out
    candidates = out["candidates"]
    assert [c["seed"] for c in candidates] == [40, 41, 42, 43]
    for c in candidates:  # each candidate is the plain response of its seed, with its levels
        check_levels(c["levels"])
        expected = sum(
            p * abs(k - t) for m, t in (("er", 2), ("ex", 0)) for k, p in enumerate(c["levels"][m]["probs"])
        )
        assert c["distance"] == pytest.approx(expected, abs=1e-6)
    plain = respond(url, 42)[1]
    assert candidates[2]["response"] == plain["response"]
    best = min(range(4), key=lambda i: (candidates[i]["distance"], i))
    assert out["chosen"] == best and out["distance"] == candidates[best]["distance"]
    assert out["response"] == candidates[best]["response"] and out["sampling"]["seed"] == 40 + best
    assert out["target_levels"] == {"er": 2, "ex": 0}
    # without return_candidates the same choice comes back alone
    status, lean = call(f"{url}/v1/respond", {**body, "return_candidates": False})
    assert status == 200 and lean["candidates"] is None and lean["response"] == out["response"]
    assert _fields(call(f"{url}/v1/respond", {**body, "target_levels": None})) == {"target_levels"}
    assert _fields(call(f"{url}/v1/respond", {**body, "n_candidates": 99})) == {"n_candidates"}
    assert _fields(call(f"{url}/v1/respond", {**body, "target_levels": {"er": 3}})) == {"target_levels.er"}


MESSAGES = [
    {"role": "system", "content": "You are a caring listener."},
    {"role": "user", "content": TURNS[0]},
    {"role": "assistant", "content": TURNS[1]},
    {"role": "user", "content": TURNS[2]},
]


def test_openai_client_round_trip(service: tuple[str, Config, Path]) -> None:
    import openai

    url, _, _ = service
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["run/sft"]
    reply = client.chat.completions.create(
        model="run/sft", messages=MESSAGES, seed=21, n=2, temperature=0.9, max_tokens=12,  # type: ignore[arg-type]
        extra_body={"emotion": "excited"},
    )  # fmt: skip
    assert reply.object == "chat.completion" and reply.model == "run/sft" and reply.id.startswith("chatcmpl-")
    for i, choice in enumerate(reply.choices):
        # each choice is /v1/respond's answer to the same dialogue with seed 21 + i
        native = respond(url, 21 + i, temperature=0.9, max_new_tokens=12)[1]
        assert choice.index == i and choice.message.role == "assistant"
        assert choice.message.content == native["response"]
        assert choice.finish_reason in ("stop", "length")
        empathy = (choice.model_extra or {})["empathy"]
        check_levels(empathy)
        assert empathy["er"]["probs"] == pytest.approx(native["levels"]["er"]["probs"], abs=1e-5)
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0 and 1 <= usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.chat.completions.create(model="emprl", messages=MESSAGES, temperature=7)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError, match="last message"):
        client.chat.completions.create(model="emprl", messages=MESSAGES[:3])  # type: ignore[arg-type]


def test_openai_client_streams_token_by_token(service: tuple[str, Config, Path]) -> None:
    import openai

    url, _, _ = service
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    whole = client.chat.completions.create(model="emprl", messages=MESSAGES, seed=8, max_tokens=16)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            model="emprl", messages=MESSAGES, seed=8, max_tokens=16, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == whole.choices[0].message.content
    assert len(content) > 1  # token by token, not one piece
    assert chunks[0].choices[0].delta.role == "assistant"
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    check_levels((last.choices[0].model_extra or {})["empathy"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert len({c.id for c in chunks}) == 1
    # two choices interleave on one stream, each ends with its own finish chunk
    both = list(
        client.chat.completions.create(
            model="emprl",
            messages=MESSAGES,
            seed=8,
            max_tokens=16,
            n=2,
            stream=True,  # type: ignore[arg-type]
        )
    )
    texts = [
        "".join(c.choices[0].delta.content or "" for c in both if c.choices[0].index == i) for i in (0, 1)
    ]
    assert texts[0] == whole.choices[0].message.content
    assert sum(1 for c in both if c.choices[0].finish_reason) == 2


def test_deployment_options_follow_the_config() -> None:
    from actors.serving.app import deployment_options

    fixed = deployment_options(
        tiny_config(serve__policy_replicas=2, serve__policy_gpus=0.5).serve, "policy", {}
    )
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"]["num_gpus"] == 0.5
    assert fixed["max_ongoing_requests"] == 64 and fixed["max_queued_requests"] == 64
    assert fixed["health_check_period_s"] == 10.0
    auto = deployment_options(
        tiny_config(serve__autoscaling="true", serve__min_replicas=1, serve__max_replicas=3,
                    serve__identifier_replicas=2, serve__target_ongoing_requests=2).serve,
        "identifiers", {},
    )  # fmt: skip
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 3, "initial_replicas": 2, "target_ongoing_requests": 2.0
    }  # fmt: skip
    with pytest.raises(ConfigError, match="initial count"):
        tiny_config(serve__autoscaling="true", serve__max_replicas=2, serve__policy_replicas=3)


def test_api_key_from_the_variable_else_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.serving.app import api_key

    monkeypatch.delenv(KEY_ENV, raising=False)
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    assert api_key(tiny_config(serve__api_key_env=KEY_ENV).serve) == ""
    assert (
        api_key(tiny_config(serve__api_key_env=KEY_ENV, serve__api_key_file=str(secret)).serve) == "from-file"
    )
    monkeypatch.setenv(KEY_ENV, "from-env")
    assert (
        api_key(tiny_config(serve__api_key_env=KEY_ENV, serve__api_key_file=str(secret)).serve) == "from-env"
    )
    monkeypatch.delenv(KEY_ENV)
    for content, words in (("", "is empty"), (None, "cannot read")):
        path = tmp_path / f"bad{content}"
        if content is not None:
            path.write_text(content)
        with pytest.raises(ConfigError, match=words):
            api_key(tiny_config(serve__api_key_env=KEY_ENV, serve__api_key_file=str(path)).serve)
