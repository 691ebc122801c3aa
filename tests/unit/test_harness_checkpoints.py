"""The Ray Train harness's pure parts: which checkpoint a new run resumes from (in a local folder and
in a bucket, on a real S3 server on loopback), and atomic export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from s3 import fresh_node

from actors.training import harness
from actors.training.identifiers import BEST_FILE, epoch_checkpoint_order, finished_order
from actors.training.sft import sft_checkpoint_order
from pipeline import storage
from pipeline.config import IdentifiersConfig


def _checkpoint(run_dir: Path, name: str, state: dict[str, Any] | str | None, *files: str) -> Path:
    folder = run_dir / name
    folder.mkdir(parents=True)
    for file in files:
        (folder / file).write_text("x")
    if state is not None:
        text = state if isinstance(state, str) else json.dumps(state)
        (folder / harness.STATE_FILE).write_text(text)
    return folder


def test_newest_complete_checkpoint_by_the_stage_rule(tmp_path: Path) -> None:
    assert harness.newest_checkpoint(tmp_path / "missing", epoch_checkpoint_order) is None
    _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-00.000001", {"epoch": 1}, BEST_FILE)
    newest = _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-00.000002", {"epoch": 2}, BEST_FILE)
    # incomplete: no state (rank 0 writes it last), a state cut short, no best weights (the final
    # checkpoint holds the export instead and is not resumed from)
    _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-00.000003", None, BEST_FILE, "engine_state.pt")
    _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-00.000004", '{"epoch": 4', BEST_FILE)
    _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-00.000005", {"epoch": 5})
    (tmp_path / "checkpoint_not_a_folder").write_text("x")
    _checkpoint(tmp_path, "other_9", {"epoch": 9}, BEST_FILE)
    assert harness.newest_checkpoint(tmp_path, epoch_checkpoint_order) == newest


def test_newest_is_by_the_rule_not_by_the_folder_name(tmp_path: Path) -> None:
    done = _checkpoint(tmp_path, "checkpoint_a", {"done": True, "global_step": 10})
    _checkpoint(tmp_path, "checkpoint_b", {"done": False, "global_step": 12})
    _checkpoint(tmp_path, "checkpoint_c", {"done": False, "global_step": 11})
    assert harness.newest_checkpoint(tmp_path, sft_checkpoint_order) == done
    shutil.rmtree(done)
    assert harness.newest_checkpoint(tmp_path, sft_checkpoint_order) == tmp_path / "checkpoint_b"


def test_read_state_is_none_for_a_missing_or_cut_state(tmp_path: Path) -> None:
    assert harness.read_state(tmp_path) is None
    (tmp_path / harness.STATE_FILE).write_text('{"epoch": ')
    assert harness.read_state(tmp_path) is None
    (tmp_path / harness.STATE_FILE).write_text('{"epoch": 3}')
    assert harness.read_state(tmp_path) == {"epoch": 3}


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_replace_folder_copies_and_replaces_leaving_no_temporaries(tmp_path: Path) -> None:
    source, target = tmp_path / "ckpt" / "policy", tmp_path / "out" / "policy"
    (source / "sub").mkdir(parents=True)
    (source / "model.bin").write_text("new")
    (source / "sub" / "a.txt").write_text("a")
    target.mkdir(parents=True)
    (target / "model.bin").write_text("old")
    (target / "stale.txt").write_text("from the previous export")
    harness.replace_folder(source, target)
    assert _tree(target) == {"model.bin": "new", "sub/a.txt": "a"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["policy"]
    harness.replace_folder(source, tmp_path / "out" / "fresh")  # no earlier folder
    assert _tree(tmp_path / "out" / "fresh") == _tree(target)


def test_a_crash_during_the_copy_leaves_the_old_export_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = tmp_path / "src", tmp_path / "policy"
    source.mkdir()
    for i in range(3):
        (source / f"f{i}").write_text("new")
    target.mkdir()
    (target / "f0").write_text("old")

    copytree, copy2 = shutil.copytree, shutil.copy2

    def copy_then_crash(src: str, dst: str) -> None:
        copy2(src, dst)
        if Path(dst).name == "f1":
            raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", lambda s, d: copytree(s, d, copy_function=copy_then_crash))
    with pytest.raises(shutil.Error):  # copytree collects the failed file
        harness.replace_folder(source, target)
    assert _tree(target) == {"f0": "old"}
    monkeypatch.undo()
    # the next export cleans up the half copy and succeeds
    harness.replace_folder(source, target)
    assert _tree(target) == {"f0": "new", "f1": "new", "f2": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "src"]


def test_a_crash_between_the_renames_leaves_no_half_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = tmp_path / "src", tmp_path / "policy"
    source.mkdir()
    (source / "f").write_text("new")
    target.mkdir()
    (target / "f").write_text("old")
    rename = Path.rename

    def rename_then_crash(self: Path, dst: Path) -> Path:
        if self.name == ".policy.partial":
            raise OSError("killed")
        return rename(self, dst)

    monkeypatch.setattr(Path, "rename", rename_then_crash)
    with pytest.raises(OSError, match="killed"):
        harness.replace_folder(source, target)
    assert not target.exists() and _tree(tmp_path / ".policy.old") == {"f": "old"}
    monkeypatch.undo()
    harness.replace_folder(source, target)
    assert _tree(target) == {"f": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "src"]


def test_a_new_run_resumes_from_the_newer_of_rays_record_and_storage(tmp_path: Path) -> None:
    # Ray Train's records miss a checkpoint whose worker died while reporting it
    recorded = _checkpoint(tmp_path, "checkpoint_a", {"epoch": 1}, BEST_FILE)
    on_storage = _checkpoint(tmp_path, "checkpoint_b", {"epoch": 2}, BEST_FILE)
    final = _checkpoint(tmp_path, "checkpoint_c", {"epoch": 3}, "identifier")  # not resumable
    assert harness._older(recorded, on_storage, epoch_checkpoint_order)
    assert not harness._older(on_storage, recorded, epoch_checkpoint_order)
    assert harness._older(final, on_storage, epoch_checkpoint_order)
    assert not harness._older(tmp_path / "remote", on_storage, epoch_checkpoint_order)


def test_a_finished_identifier_run_is_taken_as_it_is(tmp_path: Path) -> None:
    cfg = IdentifiersConfig(epochs=3, patience=2)
    final = {"epoch": 3, "bad_epochs": 0, "eval": {"test": {}}}
    assert finished_order(cfg, _checkpoint(tmp_path, "all_epochs", final, "identifier")) == 3
    stopped = {"epoch": 2, "bad_epochs": 2, "eval": {"test": {}}}
    assert finished_order(cfg, _checkpoint(tmp_path, "early_stopped", stopped, "identifier")) == 2
    # more epochs asked for than the run trained, or an epoch checkpoint: trained on, not taken
    short = {"epoch": 2, "bad_epochs": 0, "eval": {"test": {}}}
    assert finished_order(cfg, _checkpoint(tmp_path, "short", short, "identifier")) is None
    assert (
        finished_order(cfg, _checkpoint(tmp_path, "epoch", {"epoch": 3, "bad_epochs": 0}, BEST_FILE)) is None
    )


def test_checkpoints_in_a_bucket_are_ranked_read_and_opened_there(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = storage.local_path(f"{s3_bucket}/run/identifiers/ray_train/identifier-ER")
    assert harness.newest_checkpoint(run_dir, epoch_checkpoint_order) is None  # nothing there yet
    older = _checkpoint(run_dir, "checkpoint_2025-01-01_00-00-00.000001", {"epoch": 1}, BEST_FILE)
    newest = _checkpoint(run_dir, "checkpoint_2025-01-01_00-00-00.000002", {"epoch": 2}, BEST_FILE)
    final = _checkpoint(run_dir, "checkpoint_2025-01-01_00-00-00.000003", {"epoch": 3}, "identifier")
    for folder in (older, newest, final):
        storage.upload(folder)  # as Ray Train's workers do: the files, no marker
    storage.write_text(run_dir / "checkpoint_manager_snapshot.json", "{}")  # Ray's own file, not a checkpoint
    # another node: nothing local, everything read in the bucket
    fresh_node(monkeypatch, tmp_path / "node2")
    run_dir = storage.local_path(f"{s3_bucket}/run/identifiers/ray_train/identifier-ER")
    found = harness.newest_checkpoint(run_dir, epoch_checkpoint_order)
    assert found == run_dir / newest.name and not found.exists()
    assert harness.read_state(found) == {"epoch": 2}
    assert harness._older(run_dir / older.name, found, epoch_checkpoint_order)
    assert harness._older(run_dir / final.name, found, epoch_checkpoint_order)  # not resumable
    assert not harness._older(found, run_dir / older.name, epoch_checkpoint_order)

    checkpoint = harness.checkpoint_at(found)
    bucket = s3_bucket.removeprefix("s3://")
    assert checkpoint.path == f"{bucket}/run/identifiers/ray_train/identifier-ER/{newest.name}"
    assert checkpoint.filesystem is not None and checkpoint.filesystem.type_name == "s3"
    assert harness.checkpoint_folder(checkpoint) == found
    with checkpoint.as_directory() as downloaded:  # a worker on any node downloads it
        assert json.loads((Path(downloaded) / harness.STATE_FILE).read_text()) == {"epoch": 2}
        assert (Path(downloaded) / BEST_FILE).read_text() == "x"


def test_a_local_checkpoint_is_named_by_its_path(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, "checkpoint_a", {"epoch": 1}, BEST_FILE)
    checkpoint = harness.checkpoint_at(folder)
    assert checkpoint.path == str(folder) and harness.checkpoint_folder(checkpoint) == folder


def test_a_stage_spec_reaches_the_workers_whole_and_unpickles_without_the_model_stack() -> None:
    """Ray Train's controller unpickles the loop config when it starts (cloudpickle, as Ray does): with the
    spec inside as bytes it imports neither torch, transformers nor the stage's modules; a worker gets the
    spec back as it was, and a spec of the wrong kind is refused."""
    import subprocess
    import sys

    from ray import cloudpickle

    from actors.training.identifiers import TrainSpec
    from actors.training.sft_spec import SFTSpec
    from pipeline.training.identifiers import LabeledPairs

    pairs = LabeledPairs(("I lost my job.",), ("I am sorry.",), (2,))
    spec = TrainSpec("ER", IdentifiersConfig(), "tok", pairs, pairs, pairs, seed=3, crash_at_epoch=1)
    config = harness.loop_config(spec)
    assert harness.stage_spec(config, TrainSpec) == spec
    with pytest.raises(TypeError, match="TrainSpec, not a SFTSpec"):
        harness.stage_spec(config, SFTSpec)

    probe = (
        "import sys; from ray import cloudpickle; cloudpickle.loads(sys.stdin.buffer.read()); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'actors', 'pipeline'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], input=cloudpickle.dumps(config), capture_output=True, check=True
    )
    assert loaded.stdout.decode().strip() == "[]", loaded.stdout.decode()
    # the bare spec, as Ray would ship it without the packing, does pull the model stack in
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        input=cloudpickle.dumps({"spec": spec}),
        capture_output=True,
        check=True,
    )
    assert "torch" in loaded.stdout.decode() and "actors" in loaded.stdout.decode()
