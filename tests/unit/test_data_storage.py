"""Datasets in a bucket (a real S3 server on loopback, no Ray): ``data.ed_path``/``data.epitome_path`` given
as ``s3://`` URIs are downloaded on a node that has never seen them and prepare exactly as the same files
on disk; ``emprl data download`` into a bucket publishes the dataset files; the data stage publishes its
statistics."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from loopback import serve_folder
from s3 import S3Server

from pipeline import storage
from pipeline.config import DataConfig
from pipeline.data import EPITOME_FILES, DataError, prepare_datasets, sha256_file
from pipeline.data.demo import write_demo_data
from pipeline.layout import RunLayout

pytestmark = pytest.mark.unit

ED_FILES = ("train.csv", "valid.csv")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data set as plain files: ``empatheticdialogues/{train,valid}.csv`` and ``epitome/*.csv``."""
    root = tmp_path_factory.mktemp("source")
    write_demo_data(root)
    return root


def _bucket_name(uri: str) -> str:
    return uri.removeprefix("s3://")


def _upload(server: S3Server, bucket: str, source: Path, prefix: str) -> None:
    """Plain objects, as `aws s3 cp --recursive` leaves them (no completion marker)."""
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    for sub, names in (("empatheticdialogues", ED_FILES), ("epitome", tuple(EPITOME_FILES.values()))):
        for name in names:
            client.upload_file(str(source / sub / name), _bucket_name(bucket), f"{prefix}/{sub}/{name}")


def _fresh_node(monkeypatch: pytest.MonkeyPatch, scratch: Path) -> None:
    """Another node: its own scratch root, so its mirror starts empty."""
    monkeypatch.setenv("EMPRL_SCRATCH", str(scratch))
    assert not storage.mirror_root().exists()


def test_sources_in_a_bucket_prepare_like_the_same_files_on_disk(
    s3_server: S3Server, s3_bucket: str, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _upload(s3_server, s3_bucket, source, "datasets")
    on_disk = prepare_datasets(
        DataConfig(
            source="local",
            ed_path=str(source / "empatheticdialogues"),
            epitome_path=str(source / "epitome"),
            cache_dir=str(tmp_path / "cache_disk"),
        )
    )
    _fresh_node(monkeypatch, tmp_path / "node_b")
    cfg = DataConfig(
        source="local",
        ed_path=f"{s3_bucket}/datasets/empatheticdialogues",
        epitome_path=f"{s3_bucket}/datasets/epitome",
        cache_dir=str(tmp_path / "cache_b"),
    )
    remote = prepare_datasets(cfg)

    assert remote.stats["key"] == on_disk.stats["key"]  # the same bytes
    for split in ("train", "valid"):
        assert remote.ed[split].to_dict() == on_disk.ed[split].to_dict()
    for split in ("train", "dev", "test"):
        assert remote.epitome[split].to_dict() == on_disk.epitome[split].to_dict()
    assert remote.stats["files"]["ed/train.csv"] == f"{s3_bucket}/datasets/empatheticdialogues/train.csv"
    copy = storage.local_path(f"{s3_bucket}/datasets/epitome") / EPITOME_FILES["ER"]
    assert copy.read_bytes() == (source / "epitome" / EPITOME_FILES["ER"]).read_bytes()
    assert remote.path.parent == tmp_path / "cache_b" / "prepared"  # the cache stays node-local

    # again on the same node: a cache hit, nothing downloaded again
    before = copy.stat().st_mtime_ns
    assert prepare_datasets(cfg).path == remote.path
    assert copy.stat().st_mtime_ns == before


def test_missing_files_in_a_bucket_are_named_by_their_uri(
    s3_server: S3Server, s3_bucket: str, source: Path, tmp_path: Path
) -> None:
    _upload(s3_server, s3_bucket, source, "datasets")
    cfg = DataConfig(
        source="local",
        ed_path=f"{s3_bucket}/datasets/empatheticdialogues",
        epitome_path=f"{s3_bucket}/elsewhere/epitome",
        cache_dir=str(tmp_path / "cache"),
    )
    uri = f"{s3_bucket}/elsewhere/epitome/{EPITOME_FILES['ER']}"
    with pytest.raises(
        DataError, match=rf"^{re.escape(uri)}: file not found in the bucket\. Fix: .*data\.epitome_path"
    ):
        prepare_datasets(cfg)


@pytest.fixture(scope="module")
def http_mirror(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A loopback HTTP server with the demo ED tarball and the demo EPITOME files (never the real URLs)."""
    root = tmp_path_factory.mktemp("http")
    with tarfile.open(root / "ed.tar.gz", "w:gz", compresslevel=1) as tar:
        for name in ED_FILES:
            tar.add(source / "empatheticdialogues" / name, f"empatheticdialogues/{name}")
    (root / "dataset").mkdir()
    for name in EPITOME_FILES.values():
        (root / "dataset" / name).write_bytes((source / "epitome" / name).read_bytes())

    with serve_folder(root) as base:
        yield {
            "ed_url": f"{base}/ed.tar.gz",
            "ed_sha256": sha256_file(root / "ed.tar.gz"),
            "epitome_base_url": f"{base}/dataset/",
            "epitome_sha256": {n: sha256_file(root / "dataset" / n) for n in EPITOME_FILES.values()},
        }


def test_download_into_a_bucket_publishes_the_dataset_files(
    s3_server: S3Server,
    s3_bucket: str,
    source: Path,
    http_mirror: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jobs.cli.data import main

    dest = storage.local_path(f"{s3_bucket}/data")  # what `--dest s3://...` names on this node
    checksums = [f"{name}={digest}" for name, digest in http_mirror["epitome_sha256"].items()]
    main(
        ["download", "--dest", str(dest), "--ed-url", http_mirror["ed_url"],
         "--ed-sha256", http_mirror["ed_sha256"], "--epitome-base-url", http_mirror["epitome_base_url"],
         "--epitome-sha256", *checksums]
    )  # fmt: skip
    ed_uri, epitome_uri = f"{s3_bucket}/data/empatheticdialogues", f"{s3_bucket}/data/epitome"
    assert capsys.readouterr().out.strip() == (
        f"data.source=local data.ed_path={ed_uri} data.epitome_path={epitome_uri}"
    )
    # objects only: the empty "data/" folder marker S3 clients (pyarrow's among them) leave is not a file
    listing = {
        k: v for k, v in s3_server.listing(_bucket_name(s3_bucket), "data/").items() if not k.endswith("/")
    }
    expected = {f"data/empatheticdialogues/{n}": (source / "empatheticdialogues" / n) for n in ED_FILES}
    expected |= {f"data/epitome/{n}": (source / "epitome" / n) for n in EPITOME_FILES.values()}
    assert listing == {key: path.stat().st_size for key, path in expected.items()}  # no tarball, no temp file

    _fresh_node(monkeypatch, tmp_path / "node_b")
    prepared = prepare_datasets(
        DataConfig(source="local", ed_path=ed_uri, epitome_path=epitome_uri, cache_dir=str(tmp_path / "c"))
    )
    for key, path in expected.items():
        local = storage.local_path(f"{s3_bucket}/{key}")
        assert hashlib.sha256(local.read_bytes()).hexdigest() == sha256_file(path), key
    assert len(prepared.ed["train"]) > 0 and len(prepared.epitome["train"]) > 0


def test_the_data_stage_publishes_its_statistics(
    s3_server: S3Server, s3_bucket: str, source: Path, tmp_path: Path
) -> None:
    from jobs.stages.data import data_stage
    from pipeline.config import load_config

    _upload(s3_server, s3_bucket, source, "datasets")
    cfg = load_config(
        "local",
        [
            "data.source=local",
            f"data.ed_path={s3_bucket}/datasets/empatheticdialogues",
            f"data.epitome_path={s3_bucket}/datasets/epitome",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    layout = RunLayout(storage.local_path(f"{s3_bucket}/runs/r1"))
    result = data_stage(cfg, layout)
    key = "runs/r1/data/stats.json"
    assert key in s3_server.listing(_bucket_name(s3_bucket), "runs/")
    published = json.loads(storage.read_text(layout.data.stats) or "{}")
    assert published["ed"] == result.metrics["ed"] and published["key"] == result.prepared.stats["key"]  # type: ignore[union-attr]
