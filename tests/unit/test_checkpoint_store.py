"""The PPO checkpoint store on an object store (moto on loopback): each rank uploads its own files, the
marker is written last, readers on a node that never saw the run trust only marked checkpoints, cut
uploads are ignored and cleaned up; and which learner rank uploads which DeepSpeed file."""

from __future__ import annotations

from pathlib import Path

import pytest
from s3 import S3Server

from actors.ppo.checkpoints import CONTROLLER, LEARNER, CheckpointStore, has_checkpoints
from actors.ppo.learner import own_files
from pipeline import storage
from pipeline.storage.transfer import MARKER

pytestmark = pytest.mark.unit


def _rank_save(folder: Path, rank: int, iteration: int) -> None:
    """What one learner rank does in ``LearnerWorker.save``: write its files, upload them, drop them."""
    learner = folder / LEARNER
    files = {f"deepspeed/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt": f"opt{rank}-{iteration}"}
    files[f"rng_rank{rank}.pt"] = f"rng{rank}"
    if rank == 0:
        files |= {"deepspeed/mp_rank_00_model_states.pt": f"model-{iteration}", "latest": "deepspeed"}
    for name, text in files.items():
        (learner / name).parent.mkdir(parents=True, exist_ok=True)
        (learner / name).write_text(text)
    for file in own_files(learner, rank):
        storage.upload(file)
        file.unlink()


def _save(store: CheckpointStore, iteration: int, ranks: int = 2) -> None:
    with store.writing(iteration) as folder:
        for rank in range(ranks):
            _rank_save(folder, rank, iteration)
        storage.write_text(folder / CONTROLLER, f'{{"iteration": {iteration}}}')


def test_each_rank_uploads_exactly_its_own_deepspeed_files(tmp_path: Path) -> None:
    names = [
        "deepspeed/mp_rank_00_model_states.pt",
        "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "deepspeed/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "deepspeed/zero_pp_rank_10_mp_rank_00_model_states.pt",
        "latest",
        "zero_to_fp32.py",
        "rng_rank0.pt",
        "rng_rank1.pt",
        "rng_rank10.pt",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    owned = {r: [str(p.relative_to(tmp_path)) for p in own_files(tmp_path, r)] for r in (0, 1, 10)}
    assert owned == {
        0: [
            "deepspeed/mp_rank_00_model_states.pt",
            "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "latest",
            "rng_rank0.pt",
            "zero_to_fp32.py",
        ],
        1: ["deepspeed/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_rank1.pt"],
        10: ["deepspeed/zero_pp_rank_10_mp_rank_00_model_states.pt", "rng_rank10.pt"],
    }
    assert sorted(f for files in owned.values() for f in files) == sorted(names)  # one uploader each


def test_bucket_checkpoints_are_marked_pointed_at_and_pruned(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = storage.local_path(f"{s3_bucket}/run/ppo/checkpoints")
    store = CheckpointStore(root, keep=2)
    assert store.remote and store.latest() is None and not has_checkpoints(root)
    for iteration in (2, 4, 6):
        _save(store, iteration)
    bucket = s3_bucket.removeprefix("s3://")
    keys = set(s3_server.listing(bucket, "run/ppo/checkpoints/"))
    prefix = "run/ppo/checkpoints/"
    assert f"{prefix}latest" in keys
    assert not any(k.startswith(f"{prefix}iter_000002/") for k in keys)  # keep=2 pruned it remotely
    for it in ("iter_000004", "iter_000006"):
        assert {
            f"{prefix}{it}/{MARKER}",
            f"{prefix}{it}/{CONTROLLER}",
            f"{prefix}{it}/learner/latest",
            f"{prefix}{it}/learner/rng_rank0.pt",
            f"{prefix}{it}/learner/rng_rank1.pt",
            f"{prefix}{it}/learner/deepspeed/mp_rank_00_model_states.pt",
            f"{prefix}{it}/learner/deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
            f"{prefix}{it}/learner/deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        } <= keys, it
    # the writer's node keeps no marker: its copy lacks the shards the ranks dropped after uploading
    assert (
        not (store.folder(6) / MARKER).exists() and not (store.folder(6) / LEARNER / "rng_rank1.pt").exists()
    )

    # a crash mid-checkpoint 8: rank 0 uploaded, rank 1 and the marker never came
    final = store.folder(8)
    storage.remove(final)
    _rank_save(final, 0, 8)

    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "other-node"))  # a node that never saw the run
    root = storage.local_path(f"{s3_bucket}/run/ppo/checkpoints")
    other = CheckpointStore(root, keep=2)
    assert has_checkpoints(root) and not root.exists()
    latest = other.latest()
    assert latest == other.folder(6)
    assert [p.name for p in other.complete()] == ["iter_000004", "iter_000006"]
    fetched = storage.fetch(latest)
    assert (fetched / CONTROLLER).read_text() == '{"iteration": 6}'
    assert (
        fetched / LEARNER / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    ).read_text() == "opt1-6"
    # a pointer naming something incomplete is ignored
    storage.write_text(root / "latest", "iter_000008\n")
    assert other.latest() == other.folder(6)

    _save(other, 8)  # re-saving iteration 8 clears the cut attempt first
    keys = set(s3_server.listing(bucket, f"{prefix}iter_000008/"))
    assert f"{prefix}iter_000008/{MARKER}" in keys
    assert other.latest() == other.folder(8)
    assert storage.fetch(other.folder(8)).joinpath(LEARNER, "rng_rank1.pt").read_text() == "rng1"
    assert [p.name for p in other.complete()] == ["iter_000006", "iter_000008"]


def test_cut_uploads_older_than_the_newest_checkpoint_are_removed(
    s3_bucket: str, s3_server: S3Server
) -> None:
    store = CheckpointStore(storage.local_path(f"{s3_bucket}/ppo/checkpoints"), keep=3)
    _save(store, 1)
    _rank_save(store.folder(2), 1, 2)  # iteration 2 cut: one rank's shards, no marker
    assert store.latest() == store.folder(1)
    _save(store, 3)
    keys = s3_server.listing(s3_bucket.removeprefix("s3://"), "ppo/checkpoints/")
    names = {k.split("/")[2] for k in keys} - {""}  # "" is the folder's own (empty) object pyarrow keeps
    assert names == {"iter_000001", "iter_000003", "latest"}
