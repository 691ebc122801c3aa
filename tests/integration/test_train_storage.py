"""The identifier and SFT stages on a run folder in a bucket (a real S3 server on loopback).

Every artifact a stage makes lands in the bucket (exports and the tokenizer with their completion
markers, metrics, samples, TensorBoard logs, Ray Train's checkpoints); with the node's mirror gone
and another scratch root (a fresh node), running the stage again resumes from the bucket without
training again, and the exported model loads from its URI.

The session's Ray cluster may have started before this test pointed the environment at the S3
server: the stage's Train workers and controller get the settings from the runtime environment
(``worker_env``, ``OwnedTorchTrainer``), which is what these tests rely on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from s3 import S3Server, fresh_node
from safetensors.torch import load_file

from jobs.stages import identifiers_stage, sft_stage
from pipeline import storage
from pipeline.config import Config, load_config
from pipeline.data import PreparedData
from pipeline.layout import RunLayout
from pipeline.models import load_identifier, load_policy
from pipeline.storage import MARKER
from pipeline.training.identifiers import LabeledPairs, evaluate

pytestmark = pytest.mark.integration

TINY = [
    "identifiers.d_model=32", "identifiers.d_ff=64", "identifiers.num_layers=1", "identifiers.num_heads=2",
    "identifiers.vocab_size=400", "identifiers.epochs=1", "identifiers.batch_size=16",
    "identifiers.max_context_len=48", "identifiers.max_response_len=32", "identifiers.mechanisms=[ER]",
    "model.vocab_size=400", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.num_heads=2",
    "model.num_layers=1", "model.num_decoder_layers=1", "model.max_source_len=48", "model.max_target_len=16",
    "sft.epochs=1", "sft.batch_size=8", "sft.num_workers=1", "sft.num_samples=2", "sft.eval_batch_size=16",
    "run.seed=3", "resources.trainer_cpus=1.0", "resources.torch_threads=1",
]  # fmt: skip


@pytest.fixture
def cfg(demo_cache: Path) -> Config:
    return load_config("local", [*TINY, f"data.cache_dir={demo_cache}"])


@dataclass
class Bucketed:
    """The run folder ``<bucket>/run`` and this process's node (its scratch root, i.e. its mirror)."""

    uri: str
    server: S3Server
    monkeypatch: pytest.MonkeyPatch
    scratch: Path

    def layout(self) -> RunLayout:
        return RunLayout(storage.local_path(self.uri))

    def keys(self) -> dict[str, int]:
        return _keys(self.server, self.uri)

    def on_fresh_node(self, name: str) -> RunLayout:
        """Another node: a new scratch root, nothing of the run mirrored on it yet."""
        fresh_node(self.monkeypatch, self.scratch / name)
        return self.layout()


@pytest.fixture
def bucket(s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bucketed:
    return Bucketed(f"{s3_bucket}/run", s3_server, monkeypatch, tmp_path)


def _keys(server: S3Server, uri: str) -> dict[str, int]:
    """``{key below the run folder: size}`` of the run folder ``uri`` (``s3://bucket/run``)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return {k[len(prefix) + 1 :]: v for k, v in server.listing(bucket, prefix + "/").items()}


def _local_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _checkpoints(keys: dict[str, int], run: str) -> set[str]:
    """Names of the Ray Train checkpoints of run folder ``run`` (``<stage>/ray_train/<name>``)."""
    inside = [k[len(run) + 1 :].split("/") for k in keys if k.startswith(f"{run}/checkpoint_")]
    return {parts[0] for parts in inside if len(parts) > 1}  # folders, not Ray's snapshot file


def test_identifiers_stage_on_a_bucket_resumes_on_a_fresh_node(
    ray_cluster: None, demo: PreparedData, cfg: Config, bucket: Bucketed
) -> None:
    uri, layout = bucket.uri, bucket.layout()
    first = identifiers_stage(cfg, layout, demo)

    keys = bucket.keys()
    for folder in ("identifiers/ER", "identifiers/tokenizer"):
        assert f"{folder}/{MARKER}" in keys, sorted(keys)
    assert {"identifiers/ER/head.safetensors", "identifiers/ER/metrics.json"} <= keys.keys()
    assert "identifiers/tokenizer/tokenizer_config.json" in keys and "identifiers/metrics.json" in keys
    # the export's marker lists its metrics: a reader on another node fetches them with it
    marker = json.loads(storage.read_text(layout.identifiers.mechanism("ER") / MARKER) or "{}")
    assert "metrics.json" in marker["files"]
    run = "identifiers/ray_train/identifier-ER"
    checkpoints = _checkpoints(keys, run)
    assert len(checkpoints) == 2, "the epoch's checkpoint and the final one (keep 2)"
    assert all(f"{run}/{c}/train_state.json" in keys for c in checkpoints)
    assert any(f"{run}/{c}/best_model.safetensors" in keys for c in checkpoints)
    # everything the driver wrote into its mirror is in the bucket (markers are uploaded last)
    missing = {f for f in _local_files(layout.root) if f not in keys}
    assert missing == set(), missing
    first_history = json.loads((layout.identifiers.mechanism("ER") / "metrics.json").read_text())["history"]
    tokenizer_token = json.loads(storage.read_text(layout.identifiers.tokenizer / MARKER) or "{}")["token"]

    again_layout = bucket.on_fresh_node("node2")
    assert not again_layout.root.exists()
    again = identifiers_stage(cfg, again_layout, demo)
    assert again.metrics == first.metrics
    exported = json.loads((again_layout.identifiers.mechanism("ER") / "metrics.json").read_text())
    assert exported["epochs_run"] == 1 and [h["epoch"] for h in exported["history"]] == [0], "no new epoch"
    assert exported["history"] == first_history, "the resumed run trained no epoch again"
    assert json.loads(storage.read_text(again_layout.identifiers.tokenizer / MARKER) or "{}")["token"] == (
        tokenizer_token
    ), "the published tokenizer is reused, not built again"
    assert _checkpoints(bucket.keys(), run) == checkpoints, "no new checkpoint"

    # a third node trains one epoch more: its Train worker resumes from the epoch checkpoint in the
    # bucket (Ray Train's own latest one, the final checkpoint, is no place to resume from)
    longer = cfg.with_overrides(["identifiers.epochs=2"])
    identifiers_stage(longer, bucket.on_fresh_node("node3"), demo)
    more = json.loads(storage.read_text(storage.local_path(f"{uri}/identifiers/ER/metrics.json")) or "{}")
    assert [h["epoch"] for h in more["history"]] == [0, 1] and more["history"][0] == first_history[0]

    # a fourth node loads the identifier from its URI and reproduces the reported test metrics
    bucket.on_fresh_node("node4")
    model, tokenizer = load_identifier(f"{uri}/identifiers/ER")
    test = LabeledPairs.from_columns(demo.epitome["test"].to_dict(), "ER")
    scored = evaluate(
        model,
        tokenizer,
        test,
        max_context_len=cfg.identifiers.max_context_len,
        max_response_len=cfg.identifiers.max_response_len,
    )
    assert scored["confusion_matrix"] == more["test"]["confusion_matrix"]


def _labeled(layout: RunLayout, demo: PreparedData, split: str, rows: int) -> None:
    """A labelled split of ``rows`` ED examples, published (as the label stage leaves it) and then
    dropped from this node's mirror, so SFT must fetch it."""
    ed = demo.ed["train" if split == "train" else "valid"]
    table = pa.table(
        {
            "context": list(ed["context"])[:rows],
            "response": list(ed["response"])[:rows],
            **{f"{m}_level": [0] * rows for m in ("er", "ip", "ex")},
        }
    )
    path = layout.labeled.split(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    storage.publish(path)
    path.unlink()


def _history(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k != "eval_seconds"} for h in metrics["history"]]


def test_sft_stage_on_a_bucket_resumes_on_a_fresh_node(
    ray_cluster: None, demo: PreparedData, cfg: Config, bucket: Bucketed
) -> None:
    uri, layout = bucket.uri, bucket.layout()
    _labeled(layout, demo, "train", 32)
    _labeled(layout, demo, "valid", 16)
    first = sft_stage(cfg, layout, demo)  # builds the initial policy too

    keys = bucket.keys()
    for folder in ("init/policy", "sft/policy"):
        assert f"{folder}/{MARKER}" in keys and f"{folder}/model.safetensors" in keys, sorted(keys)
    assert "sft/policy/value_head.safetensors" in keys and "sft/metrics.json" in keys
    assert {"sft/samples/epoch_0.md", "sft/samples/epoch_1.md"} <= keys.keys(), "rank 0 publishes samples"
    assert any(k.startswith("sft/tensorboard/events.out.tfevents.") for k in keys)
    checkpoints = _checkpoints(keys, "sft/ray_train/sft")
    assert checkpoints and all(f"sft/ray_train/sft/{c}/train_state.json" in keys for c in checkpoints)
    assert json.loads(storage.read_text(layout.sft.metrics) or "{}")["policy"] == f"{uri}/sft/policy"
    missing = {f for f in _local_files(layout.root) if f not in keys}
    assert missing == set(), missing
    weights = load_file(layout.sft.policy / "model.safetensors")
    metrics = json.loads(layout.sft.metrics.read_text())

    again_layout = bucket.on_fresh_node("node2")
    again = sft_stage(cfg, again_layout, demo)
    assert again.metrics == first.metrics
    again_metrics = json.loads(again_layout.sft.metrics.read_text())
    assert _history(again_metrics) == _history(metrics), "the finished run is not trained again"
    assert _checkpoints(bucket.keys(), "sft/ray_train/sft") == checkpoints, "no new checkpoint"

    # a third node loads the exported policy from its URI: the first run's weights
    bucket.on_fresh_node("node3")
    policy, _ = load_policy(f"{uri}/sft/policy")
    loaded = policy.policy.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(loaded[name], tensor), f"{name} differs"
