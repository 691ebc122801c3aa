"""Identifier training with Ray Train on the demo data: export, metrics, and exact resume after failures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from actors.training.identifiers import TrainSpec, fit_mechanism, train_identifiers
from pipeline.config import EngineConfig, IdentifiersConfig, OptimizerConfig, ResourcesConfig, load_config
from pipeline.data import PreparedData
from pipeline.models import load_identifier, train_tokenizer
from pipeline.training.identifiers import LabeledPairs, evaluate

TINY = IdentifiersConfig(
    d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=400, epochs=3, patience=10,
    optimizer=OptimizerConfig(lr=2e-3, weight_decay=0.01), batch_size=16, max_context_len=48,
    max_response_len=32,
)  # fmt: skip
RES = ResourcesConfig(num_cpus=2, trainer_cpus=1.0, torch_threads=1)


@pytest.fixture(scope="module")
def tokenizer_dir(demo: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tok")
    epi = demo.epitome["train"]
    train_tokenizer([*epi["seeker_post"], *epi["response_post"]], 400).save_pretrained(folder)
    return str(folder)


def spec(demo: PreparedData, tokenizer_dir: str, mechanism: str = "ER", **changes: Any) -> TrainSpec:
    cols = {s: demo.epitome[s].to_dict() for s in ("train", "dev", "test")}
    return TrainSpec(
        mechanism=mechanism,
        cfg=dataclasses.replace(TINY, **{k: v for k, v in changes.items() if hasattr(TINY, k)}),
        tokenizer_dir=tokenizer_dir,
        train=LabeledPairs.from_columns(cols["train"], mechanism),
        dev=LabeledPairs.from_columns(cols["dev"], mechanism),
        test=LabeledPairs.from_columns(cols["test"], mechanism),
        seed=7,
        **{k: v for k, v in changes.items() if not hasattr(TINY, k)},
    )


def _final(outcome: dict[str, Any]) -> dict[str, Any]:
    return dict(outcome["result"].metrics["eval"])


def test_three_mechanisms_train_export_and_report(
    ray_cluster: None, demo: PreparedData, tokenizer_dir: str, tmp_path: Path
) -> None:
    specs = [spec(demo, tokenizer_dir, m, epochs=2) for m in ("ER", "IP", "EX")]
    summary = train_identifiers(specs, RES, tmp_path)
    assert set(summary) == {"ER", "IP", "EX"}
    for s in specs:
        metrics = json.loads((tmp_path / s.mechanism / "metrics.json").read_text())
        assert metrics["test"]["n"] == len(s.test) and metrics["dev"]["n"] == len(s.dev)
        assert len(metrics["history"]) == 2 and metrics["epochs_run"] == 2
        for key in ("accuracy", "macro_f1", "weighted_f1", "per_class", "confusion_matrix"):
            assert key in metrics["test"]
        assert metrics["majority_baseline_test"]["n"] == len(s.test)
        # the exported folder is the best epoch: re-evaluating it reproduces the reported test metrics
        model, tok = load_identifier(tmp_path / s.mechanism)
        again = evaluate(
            model, tok, s.test, max_context_len=TINY.max_context_len, max_response_len=TINY.max_response_len
        )
        assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]


def test_resume_after_worker_and_driver_failures_matches_uninterrupted_run(
    ray_cluster: None, demo: PreparedData, tokenizer_dir: str, tmp_path: Path
) -> None:
    clean = fit_mechanism(spec(demo, tokenizer_dir), RES, tmp_path / "clean")

    # a worker dies after epoch 2's checkpoint; Ray Train restarts it from that checkpoint
    crashed = spec(demo, tokenizer_dir, crash_at_epoch=1, crash_marker=str(tmp_path / "crash1"))
    restarted = fit_mechanism(crashed, RES, tmp_path / "worker")
    assert (tmp_path / "crash1").exists(), "the injected failure must really have happened"
    assert _final(restarted) == _final(clean)

    # the whole run fails (no retries left); running the job again resumes from the checkpoint
    dying = spec(demo, tokenizer_dir, crash_at_epoch=0, crash_marker=str(tmp_path / "crash2"))
    with pytest.raises(Exception):  # noqa: B017  (Ray's TrainingFailedError or our RuntimeError)
        fit_mechanism(dying, RES, tmp_path / "driver", max_failures=0)
    resumed = fit_mechanism(dying, RES, tmp_path / "driver", max_failures=0)
    assert _final(resumed) == _final(clean)
    # the final checkpoint's state (the failed run's own checkpoint stays on storage beside it)
    final_state = Path(resumed["result"].checkpoint.path) / "train_state.json"
    history = [
        {k: v for k, v in h.items() if k not in ("seconds", "pairs_per_s")}
        for h in json.loads(final_state.read_text())["history"]
    ]
    assert [h["epoch"] for h in history] == [0, 1, 2], "each epoch counted exactly once"

    # running the job once more finds the finished run and takes it as it is (no Train run at all)
    checkpoints = sorted((tmp_path / "driver" / "identifier-ER").glob("checkpoint_*"))
    again = fit_mechanism(dying, RES, tmp_path / "driver", max_failures=0)
    assert (
        _final(again) == _final(clean)
        and again["result"].state["history"] == resumed["result"].state["history"]
    )
    assert sorted((tmp_path / "driver" / "identifier-ER").glob("checkpoint_*")) == checkpoints


@pytest.mark.slow
def test_deepspeed_zero2_with_two_workers(
    ray_cluster: None, demo: PreparedData, tokenizer_dir: str, tmp_path: Path
) -> None:
    s = spec(
        demo, tokenizer_dir, epochs=2, engine=EngineConfig(kind="deepspeed", zero_stage=2), num_workers=2
    )
    res = dataclasses.replace(RES, trainer_cpus=0.5)
    outcome = fit_mechanism(s, res, tmp_path)
    final = _final(outcome)
    assert final["test"]["n"] == len(s.test)
    assert outcome["result"].metrics["epoch"] == 2


def test_bad_identifier_configs_fail_before_any_work() -> None:
    with pytest.raises(
        ValueError, match=r"identifiers\.batch_size=15: must be divisible by identifiers\.num_workers=2"
    ):
        load_config("local", ["identifiers.num_workers=2", "identifiers.batch_size=15"])
    with pytest.raises(ValueError, match=r"identifiers\.mechanisms=\('ER', 'XX'\)"):
        load_config("local", ["identifiers.mechanisms=[ER, XX]"])
