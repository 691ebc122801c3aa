"""Labelling, evaluation and serving with their folders in a bucket (a real S3 server on loopback, a real
local Ray cluster): inputs are published copies of the tiny fixtures, the node's mirror is wiped before
and after each job (a node that never saw the files), outputs are asserted in the bucket, and resuming or
reading works from the bucket alone."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from ppo_inputs import IDENTIFIERS, tiny_config
from processes import free_port
from s3 import S3Server

from actors.inference.labeling import LabelingError, label_splits
from actors.inference.scorer import IdentifierScorerWorker
from jobs.stages import evaluate_stage, load_evaluation_inputs
from pipeline import storage
from pipeline.config import MECHANISMS, ResourcesConfig, load_config, save_config
from pipeline.data import PreparedData
from pipeline.layout import RunLayout
from pipeline.scoring import EmpathyScorer, level_columns
from pipeline.storage.transfer import MARKER

pytestmark = pytest.mark.integration

CFG = replace(IDENTIFIERS, score_batch_size=32)
RES = ResourcesConfig(reward_cpus=0.5, torch_threads=1)
SHARD_ROWS = 16


def publish_copy(source: Path, uri: str) -> Path:
    """A copy of the file or folder ``source`` at the mirror path of ``uri``, published there."""
    target = storage.local_path(uri)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    storage.publish(target)
    return target


def publish_identifiers(run: Path, uri: str) -> None:
    for m in MECHANISMS:
        publish_copy(run / "identifiers" / m, f"{uri}/{m}")


def wipe_mirror() -> None:
    """This node forgets every download: what follows reads from the bucket only."""
    shutil.rmtree(storage.mirror_root())


def keys(server: S3Server, bucket: str, prefix: str) -> dict[str, int]:
    found: dict[str, int] = server.listing(bucket.removeprefix("s3://"), prefix)
    return found


def test_labels_in_a_bucket_resume_and_merge_from_the_bucket_alone(
    ray_cluster: None, demo: PreparedData, sweep_run: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    publish_identifiers(sweep_run, f"{s3_bucket}/run/identifiers")
    wipe_mirror()
    splits: dict[str, Dataset] = {
        "train": demo.ed["train"].select(range(40)),
        "valid": demo.ed["valid"].select(range(24)),
    }
    identifiers, out = f"{s3_bucket}/run/identifiers", f"{s3_bucket}/run/labeled"
    marker = splits["train"]["context"][SHARD_ROWS]  # first row of train shard 1

    class FailingWorker(IdentifierScorerWorker):
        """Crashes on train shard 1, as a worker dying mid-job would."""

        def score_columns(self, contexts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
            if contexts[0] == marker:
                raise RuntimeError("injected scorer failure")
            return super().score_columns(contexts, responses)

    with pytest.raises(LabelingError, match=r"split 'train' shard 1 .*injected"):
        label_splits(splits, identifiers, out, CFG, RES, shard_rows=SHARD_ROWS, worker_cls=FailingWorker)
    parts = {
        "run/labeled/train/part-00000.parquet",
        "run/labeled/train/part-00002.parquet",
        "run/labeled/valid/part-00000.parquet",
        "run/labeled/valid/part-00001.parquet",
    }
    manifests = {"run/labeled/train/manifest.json", "run/labeled/valid/manifest.json"}
    assert set(keys(s3_server, s3_bucket, "run/labeled/")) == parts | manifests  # each part once complete

    wipe_mirror()  # resumed on a node that never saw the parts
    stats = label_splits(splits, identifiers, out, CFG, RES, shard_rows=SHARD_ROWS)
    assert stats["run"]["scored_rows"] == SHARD_ROWS and stats["run"]["skipped_shards"] == 4
    assert stats["identifiers_dir"] == identifiers
    outputs = {"run/labeled/train.parquet", "run/labeled/valid.parquet", "run/labeled/label_stats.json"}
    assert set(keys(s3_server, s3_bucket, "run/labeled/")) == (
        parts | manifests | outputs | {"run/labeled/train/part-00001.parquet"}
    )

    wipe_mirror()
    labeled = RunLayout(storage.local_path(f"{s3_bucket}/run")).labeled
    assert json.loads(storage.read_text(labeled.stats) or "{}")["splits"] == stats["splits"]
    scorer = EmpathyScorer.from_config(sweep_run / "identifiers", CFG)
    for split, ds in splits.items():
        table = pq.read_table(storage.fetch(labeled.split(split)))
        assert table.num_rows == len(ds) and table.column_names[-len(level_columns()) :] == level_columns()
        assert table["context"].to_pylist() == ds["context"]
        scores = scorer.score(ds["context"], ds["response"])
        for m in MECHANISMS:
            probs = np.stack([table[f"{m.lower()}_p{k}"].to_numpy() for k in range(3)], axis=1)
            np.testing.assert_allclose(probs, scores.probs[m], atol=1e-5)

    wipe_mirror()  # every part is in the bucket: merged again without an actor
    again = label_splits(splits, identifiers, out, CFG, RES, shard_rows=SHARD_ROWS)
    assert again["run"]["scored_rows"] == 0 and again["run"]["skipped_shards"] == 5
    assert again["splits"] == stats["splits"]


def _publish_models(source: Path, run: str) -> str:
    """The SFT policy and the identifiers of the run folder ``source`` published into the run ``run``."""
    publish_copy(source / "sft" / "policy", f"{run}/sft/policy")
    publish_identifiers(source, f"{run}/identifiers")
    return run


def test_evaluation_of_a_run_in_a_bucket_publishes_everything_it_writes(
    ray_cluster: None, sweep_run: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    run = _publish_models(sweep_run, f"{s3_bucket}/run")
    publish_copy(sweep_run / "labeled" / "valid.parquet", f"{run}/labeled/valid.parquet")
    log = storage.local_path(f"{run}/ppo/metrics.jsonl")
    storage.write_text(
        log, "".join(json.dumps({"iteration": i, "reward/score": 0.1 * i}) + "\n" for i in (1, 2))
    )
    wipe_mirror()

    layout = RunLayout(storage.local_path(run))
    inputs = load_evaluation_inputs(layout, max_examples=8)
    assert [(p.name, storage.display(p.folder)) for p in inputs.policies] == [("sft", f"{run}/sft/policy")]
    cfg = tiny_config(rollout__batch_size=4, reward__num_scorers=1)
    evaluate_stage(cfg, layout, inputs, num_workers=1, n_resamples=20, num_samples=2)

    wipe_mirror()
    found = set(keys(s3_server, s3_bucket, "run/evaluate/"))
    figures = {
        f"run/evaluate/figures/{n}" for n in ("level_distribution.png", "confusion_sft.png", "ppo_curves.png")
    }
    written = {
        f"run/evaluate/{n}"
        for n in ("config.yaml", "metrics.json", "responses.parquet", "report.md", "report.html")
    }
    assert written | figures | {f"run/evaluate/figures/{MARKER}"} <= found
    metrics = json.loads(storage.read_text(layout.evaluate.metrics) or "{}")
    assert metrics["n_examples"] == 8 and metrics["identifiers"] == f"{run}/identifiers"
    assert metrics["policies"]["sft"]["folder"] == f"{run}/sft/policy"
    assert metrics["stats"]["time/total"] > 0  # the second write, after the report
    table = pq.read_table(storage.fetch(layout.evaluate.responses))
    assert table.num_rows == 8 and len(table["sft_response"].to_pylist()) == 8
    report = storage.fetch(layout.evaluate.report_md).read_text()
    assert f"**run**: {run}" in report and "figures/ppo_curves.png" in report
    figures_dir = storage.fetch(layout.evaluate.figures)
    assert (figures_dir / "ppo_curves.png").stat().st_size > 0


def test_a_serve_replica_loads_its_models_from_a_bucket(
    ray_cluster: None, sweep_run: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    from actors.serving.app import serving
    from jobs.cli.serve import app_builder, served_folders

    run = _publish_models(sweep_run, f"{s3_bucket}/run")
    save_config(tiny_config(serve__max_turns=3), storage.local_path(f"{run}/config.yaml"))  # published
    wipe_mirror()
    app_builder({"run_dir": run})  # `serve run configs/serve.yaml` with run_dir: s3://...
    assert load_config(str(storage.local_path(f"{run}/config.yaml"))).serve.max_turns == 3  # fetched
    wipe_mirror()
    policy, identifiers = served_folders(storage.local_path(run), None, None)
    assert (storage.display(policy), storage.display(identifiers)) == (
        f"{run}/sft/policy",
        f"{run}/identifiers",
    )
    assert not storage.mirror_root().exists()  # checked in the bucket; the replicas download
    with pytest.raises(SystemExit, match=rf"no policy in {s3_bucket}/other/ppo/policy or"):
        served_folders(storage.local_path(f"{s3_bucket}/other"), None, None)

    cfg = tiny_config(serve__port=free_port(), serve__policy_cpus=0.25, serve__identifier_cpus=0.25)
    with serving(cfg, f"{run}/sft/policy", f"{run}/identifiers") as url:
        body = {"turns": ["I lost my job today."], "sampling": {"seed": 3}}
        request = urllib.request.Request(
            f"{url}/v1/respond", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            status, out = reply.status, json.loads(reply.read())
    assert status == 200 and isinstance(out["response"], str)
    assert out["model"]["name"] == "run/sft" and set(out["levels"]) == {"er", "ip", "ex"}
    # the replicas fetched onto this node what they loaded, each a complete copy
    assert (storage.local_path(f"{run}/sft/policy") / MARKER).is_file()
    assert all((storage.local_path(f"{run}/identifiers/{m}") / MARKER).is_file() for m in MECHANISMS)
