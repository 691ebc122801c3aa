"""Storage locations against a real S3 protocol server on loopback (moto): mirror paths, publish with the
marker last, one fetch per node and version, and the bad-location errors within seconds."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from s3 import S3Server

from pipeline import storage
from pipeline.storage import remote
from pipeline.storage.transfer import MARKER


def test_uri_maps_to_a_mirror_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path))
    mirror = storage.local_path("s3://bucket/runs/a/")
    assert mirror == tmp_path / "mirror" / "s3" / "bucket" / "runs" / "a"
    assert storage.uri_of(mirror / "sft" / "policy") == "s3://bucket/runs/a/sft/policy"
    assert storage.display(mirror / "x") == "s3://bucket/runs/a/x"
    assert storage.local_path("/data/run") == Path("/data/run") and storage.uri_of("/data/run") is None
    assert storage.local_path("file:///data/run") == Path("/data/run")
    assert storage.local_path("gs://b/p") == tmp_path / "mirror" / "gs" / "b" / "p"


@pytest.mark.parametrize("bad", ["hdfs://cluster/run", "s3://", "s3://bucket/../x"])
def test_malformed_uris_are_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(storage.StorageError, match="Fix: "):
        storage.local_path(bad)


def test_local_paths_need_no_object_store(tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    storage.publish(folder)
    assert storage.fetch(folder) == folder and not (folder / MARKER).exists()
    assert storage.exists(folder) and storage.list_names(tmp_path) == ["policy"]
    storage.write_text(tmp_path / "latest", "iter_1\n")
    assert storage.read_text(tmp_path / "latest") == "iter_1\n"


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_publish_then_fetch_on_another_node(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = storage.local_path(f"{s3_bucket}/run/sft/policy")
    _folder(writer, {"config.json": b"{}", "weights/model.bin": b"w" * 5000})
    storage.publish(writer)
    bucket = s3_bucket.removeprefix("s3://")
    listing = s3_server.listing(bucket)
    assert set(listing) == {f"run/sft/policy/{n}" for n in ("config.json", "weights/model.bin", MARKER)}
    marker = json.loads((writer / MARKER).read_text())
    assert marker["files"] == {"config.json": 2, "weights/model.bin": 5000}

    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "other-node"))  # another node: its own disk
    reader = storage.local_path(f"{s3_bucket}/run/sft/policy")
    assert reader != writer and not reader.exists()
    assert storage.exists(reader)
    storage.fetch(reader)
    assert (reader / "weights" / "model.bin").read_bytes() == b"w" * 5000
    mtime = (reader / "config.json").stat().st_mtime_ns
    storage.fetch(reader)  # same version: not downloaded again
    assert (reader / "config.json").stat().st_mtime_ns == mtime

    monkeypatch.setenv("EMPRL_SCRATCH", str(writer.parents[4].parent))  # back on the writer's node
    (writer / "weights" / "model.bin").unlink()
    (writer / "new.txt").write_text("v2")
    storage.publish(writer)  # a new version: files it no longer has are deleted remotely
    assert "run/sft/policy/weights/model.bin" not in s3_server.listing(bucket)
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "other-node"))
    storage.fetch(reader)
    assert sorted(p.name for p in reader.iterdir()) == sorted([MARKER, "config.json", "new.txt"])


def test_a_folder_without_its_marker_is_not_fetched(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _folder(storage.local_path(f"{s3_bucket}/ckpt/iter_000002"), {"shard_0.pt": b"0" * 100})
    storage.upload(writer)  # a rank's share, uploaded; the marker never written (the writer died)
    assert not storage.exists(writer)
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "node-c"))
    reader = storage.local_path(f"{s3_bucket}/ckpt/iter_000002")
    assert not storage.fetch(reader).exists()
    monkeypatch.setenv("EMPRL_SCRATCH", str(writer.parents[3].parent))
    storage.mark_complete(writer)
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "node-c"))
    assert (storage.fetch(reader) / "shard_0.pt").read_bytes() == b"0" * 100


def test_concurrent_readers_on_one_node_download_once(
    s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = _folder(storage.local_path(f"{s3_bucket}/p"), {"w.bin": b"x" * 200_000})
    storage.publish(writer)
    for child in list(writer.iterdir()):
        child.unlink()
    writer.rmdir()
    caplog.set_level("INFO", logger="pipeline.storage")
    threads = [threading.Thread(target=storage.fetch, args=(writer,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (writer / "w.bin").stat().st_size == 200_000
    assert sum("fetched" in r.getMessage() for r in caplog.records) == 1


def test_sync_down_and_small_objects(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = storage.local_path(f"{s3_bucket}/labeled/train")
    for i in range(3):
        _folder(parts, {f"part_{i}.parquet": bytes([i]) * (10 + i)})
        storage.publish(parts / f"part_{i}.parquet")
    storage.write_text(parts.parent / "latest", "iter_3\n")
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "node-b"))
    moved = storage.local_path(f"{s3_bucket}/labeled/train")
    assert storage.list_names(moved) == ["part_0.parquet", "part_1.parquet", "part_2.parquet"]
    storage.sync_down(moved)
    assert [p.stat().st_size for p in sorted(moved.iterdir())] == [10, 11, 12]
    assert storage.read_text(moved.parent / "latest") == "iter_3\n"
    assert storage.read_text(moved.parent / "missing") is None
    storage.remove(moved / "part_1.parquet")
    assert storage.list_names(moved) == ["part_0.parquet", "part_2.parquet"]


def test_good_location_passes_the_probe(s3_bucket: str) -> None:
    assert storage.check_location(s3_bucket + "/runs/a/") == s3_bucket + "/runs/a"


def _error(location: str) -> tuple[float, str]:
    started = time.perf_counter()
    with pytest.raises(storage.StorageError) as caught:
        storage.check_location(location, deadline_s=8)
    return time.perf_counter() - started, str(caught.value)


def test_missing_bucket_is_named(s3_bucket: str) -> None:
    seconds, text = _error("s3://no-such-bucket-emprl/x")
    assert "bucket 'no-such-bucket-emprl' does not exist" in text and "aws s3 mb" in text and seconds < 5


def test_missing_credentials_are_named(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    seconds, text = _error(s3_bucket + "/x")
    assert "no AWS credentials found" in text and "IamInstanceProfile" in text and seconds < 1


def test_closed_endpoint_is_named(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    remote._filesystem.cache_clear()
    seconds, text = _error(s3_bucket + "/x")
    assert f"endpoint http://127.0.0.1:{port} does not answer" in text and seconds < 5


def test_silent_endpoint_fails_within_the_deadline(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: a bounded failure, not a hang."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        remote._filesystem.cache_clear()
        seconds, text = _error(s3_bucket + "/x")
        assert "does not answer" in text or "did not answer" in text
        assert seconds < 10
    finally:
        silent.close()


def test_unwritable_local_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(storage.StorageError, match="cannot write there"):
        storage.check_location(blocker / "run")


def test_a_preset_can_be_a_config_in_the_bucket(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's ``best/config.yaml`` in a bucket loads with ``--preset s3://…`` on another node."""
    from pipeline.config import ConfigError, load_config, save_config

    cfg = load_config("local", ["ppo.clip_ratio=0.15"])
    save_config(cfg, storage.local_path(f"{s3_bucket}/sweep/best/config.yaml"))
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "another-node"))
    assert load_config(f"{s3_bucket}/sweep/best/config.yaml") == cfg
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(f"{s3_bucket}/sweep/none.yaml")


def test_a_search_space_can_live_in_the_bucket(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.config import load_config
    from pipeline.config.search_space import SearchSpaceError, load_search_space

    space = storage.local_path(f"{s3_bucket}/spaces/kl.yaml")
    space.parent.mkdir(parents=True)
    space.write_text("ppo.kl_coef: {loguniform: [0.01, 0.2]}\n")
    storage.publish(space)
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "another-node"))
    loaded = load_search_space(f"{s3_bucket}/spaces/kl.yaml", load_config("local"))
    assert "ppo.kl_coef" in {d.key for d in loaded.dimensions}
    with pytest.raises(SearchSpaceError, match=f"search space {s3_bucket}/spaces/none.yaml does not exist"):
        load_search_space(f"{s3_bucket}/spaces/none.yaml", load_config("local"))
