"""GPU checks (skipped without CUDA): the Serve application with its policy and identifiers on one GPU
(fractional shares) in bf16: round trips, seeded reproducibility in a batch, and streaming."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        text = reply.read().decode()
    return text if body.get("stream") else json.loads(text)


@pytest.fixture(scope="module")
def gpu_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import ray
    from ppo_inputs import build_run_dir, tiny_config
    from processes import free_port

    import jobs  # noqa: F401  (loopback-only Ray)
    from actors.cluster.session import init_ray
    from actors.serving.app import serving
    from pipeline.config import ResourcesConfig

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tempfile.mkdtemp(prefix="rays", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    init_ray(ResourcesConfig(num_cpus=4, use_gpu=True, object_store_memory=500_000_000))
    folder = tmp_path_factory.mktemp("gpu_serve")
    run = build_run_dir(folder / "run", folder / "cache")
    cfg = tiny_config(serve__port=free_port(), serve__policy_gpus=0.5, serve__identifier_gpus=0.25,
                      serve__policy_cpus=1, serve__identifier_cpus=1)  # fmt: skip
    try:
        with serving(cfg, run / "sft" / "policy", run / "identifiers") as url:
            yield url
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def test_models_run_in_bf16_on_the_gpu(gpu_service: str) -> None:
    with urllib.request.urlopen(f"{gpu_service}/v1/models", timeout=60) as reply:
        models = json.loads(reply.read())
    assert models["policy"]["runtime"] == "cuda bfloat16"
    assert models["identifiers"]["runtime"] == "cuda bfloat16"


def test_seeded_responses_reproduce_and_batch_on_the_gpu(gpu_service: str) -> None:
    body = {"turns": ["I lost my job today."], "sampling": {"seed": 7}}
    alone = _post(f"{gpu_service}/v1/respond", body)
    for m in ("er", "ip", "ex"):
        assert abs(sum(alone["levels"][m]["probs"]) - 1) < 1e-2
    assert _post(f"{gpu_service}/v1/respond", body)["response"] == alone["response"]
    # batched with others, a bf16 policy may round differently than alone (another kernel for another
    # batch size), so a seeded draw is only reproducible in the same batch composition: here every
    # request of a concurrent burst is answered, with valid levels
    with ThreadPoolExecutor(8) as pool:
        seeds = [7, 1, 2, 3, 4, 5, 6, 7]
        batch = list(
            pool.map(lambda s: _post(f"{gpu_service}/v1/respond", {**body, "sampling": {"seed": s}}), seeds)
        )
    assert all(isinstance(r["response"], str) for r in batch)
    assert all(abs(sum(r["levels"][m]["probs"]) - 1) < 1e-2 for r in batch for m in ("er", "ip", "ex"))


def test_streaming_and_candidates_on_the_gpu(gpu_service: str) -> None:
    chat = {"model": "emprl", "messages": [{"role": "user", "content": "We adopted a puppy!"}], "seed": 3}
    whole = _post(f"{gpu_service}/v1/chat/completions", chat)
    events = [line[6:] for line in _post(f"{gpu_service}/v1/chat/completions", {**chat, "stream": True}).splitlines()
              if line.startswith("data: ")]  # fmt: skip
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    picked = _post(f"{gpu_service}/v1/respond", {"turns": ["We adopted a puppy!"], "n_candidates": 4,
                                                 "target_levels": {"er": 2}, "return_candidates": True})  # fmt: skip
    assert len(picked["candidates"]) == 4
    assert picked["distance"] == min(c["distance"] for c in picked["candidates"])
