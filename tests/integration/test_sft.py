"""SFT with Ray Train and DeepSpeed on the demo data: learning, export, exact resume, config errors.

The main runs use two workers with ZeRO-3 (parameters sharded, gathered for evaluation samples
and export), so resume is checked on the hardest engine setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from actors.training.sft import ResumeError, train_sft
from jobs.stages import init_stage
from jobs.stages.sft import build_spec
from pipeline.config import Config, ConfigError, load_config
from pipeline.data import PreparedData, prepare_datasets
from pipeline.layout import RunLayout

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "model.vocab_size=600", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.num_heads=4",
    "model.num_layers=1", "model.num_decoder_layers=1", "model.max_source_len=48", "model.max_target_len=24",
    "sft.optimizer.lr=3e-3", "sft.epochs=2", "sft.batch_size=8", "sft.num_workers=2", "sft.engine.zero_stage=3",
    "sft.checkpoint_every=16", "sft.num_samples=3", "sft.eval_batch_size=16", "run.seed=7",
    "resources.trainer_cpus=1.0", "resources.torch_threads=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config("local", [*OVERRIDES, f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])


@pytest.fixture(scope="module")
def demo(cfg: Config) -> PreparedData:
    return prepare_datasets(cfg.data)


@pytest.fixture(scope="module")
def start_dir(cfg: Config, demo: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = RunLayout(tmp_path_factory.mktemp("init"))
    init_stage(cfg, layout, demo)
    return layout.init.policy


def _run(
    cfg: Config, demo: PreparedData, start_dir: Path, run_dir: Path, max_failures: int = 2, **extra: Any
) -> dict[str, Any]:
    spec = build_spec(cfg, demo, RunLayout(run_dir), start_dir, **extra)
    return train_sft(spec, cfg.resources, max_failures=max_failures)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "sft" / "policy" / "model.safetensors")


def _history(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    timing = ("seconds", "tokens_per_s", "eval_seconds")
    return [{k: v for k, v in h.items() if k not in timing} for h in metrics["history"]]


@pytest.fixture(scope="module")
def clean(
    ray_cluster: None,
    cfg: Config,
    demo: PreparedData,
    start_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("clean")
    return run_dir, _run(cfg, demo, start_dir, run_dir)


def test_sft_lowers_validation_loss_and_exports_a_plain_hf_policy(clean: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    run_dir, metrics = clean
    losses = [metrics["initial"]["val_loss"]] + [h["val_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0] - 0.5, losses
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    best = min(metrics["history"], key=lambda h: h["val_loss"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["best"]["val_loss"] == best["val_loss"]
    assert best["val_ppl"] == pytest.approx(float(torch.tensor(best["val_loss"]).exp()), rel=1e-6)
    on_disk = json.loads((run_dir / "sft" / "metrics.json").read_text())
    assert on_disk["history"] == metrics["history"]

    # the export is a plain Hugging Face folder, and it holds the best epoch's weights
    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "sft" / "policy")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "sft" / "policy")
    inputs = tokenizer(["I failed my driving test again."], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] >= 2
    assert (run_dir / "sft" / "policy" / "value_head.safetensors").is_file()

    samples = sorted(p.name for p in (run_dir / "sft" / "samples").iterdir())
    assert samples == [f"epoch_{e}.md" for e in range(3)]
    assert (run_dir / "sft" / "samples" / "epoch_2.md").read_text().count("**Policy:**") == 3
    assert list((run_dir / "sft" / "tensorboard").glob("events.out.tfevents.*"))


def test_resuming_with_other_settings_fails_before_any_work(
    clean: tuple[Path, dict[str, Any]], cfg: Config, demo: PreparedData, start_dir: Path
) -> None:
    run_dir, _ = clean
    with pytest.raises(
        ResumeError, match=r"sft\.optimizer\.lr: 0\.003 -> 0\.001.*Fix: use a new --run-dir, pass --no-resume"
    ):
        _run(cfg.with_overrides(["sft.optimizer.lr=1e-3"]), demo, start_dir, run_dir)
    # settings that do not alter training may change
    again = _run(cfg.with_overrides(["sft.keep_checkpoints=3"]), demo, start_dir, run_dir)
    assert again["history"] == clean[1]["history"]


def test_resume_after_worker_and_driver_failures_matches_uninterrupted_run(
    clean: tuple[Path, dict[str, Any]], cfg: Config, demo: PreparedData, start_dir: Path, tmp_path: Path
) -> None:
    clean_dir, clean_metrics = clean
    reference = _weights(clean_dir)
    run_dir, crash_dir = tmp_path / "run", tmp_path / "crashes"
    # 1. rank 1 dies in epoch 1, four steps after the step-16 checkpoint: Ray Train restarts the
    #    worker group from that checkpoint (model, optimiser, scheduler, data position, RNG).
    # 2. rank 0 dies early in epoch 2 with no retries left: the job fails.
    crashes = ((1, 20, 1), (2, 3, 0))
    with pytest.raises(Exception):  # noqa: B017  (Ray's TrainingFailedError or our RuntimeError)
        _run(cfg, demo, start_dir, run_dir, max_failures=1, crash_points=crashes, crash_dir=str(crash_dir))
    assert len(list(crash_dir.iterdir())) == 2, "both injected failures must really have happened"
    # 3. running the job again resumes from the last checkpoint on storage (end of epoch 1)
    metrics = _run(
        cfg, demo, start_dir, run_dir, max_failures=0, crash_points=crashes, crash_dir=str(crash_dir)
    )
    assert _history(metrics) == _history(clean_metrics), "each epoch counted exactly once, same losses"
    got = _weights(run_dir)
    assert got.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(got[name], tensor), f"{name} differs after resume"


BAD_CONFIGS = [
    (["sft.engine.zero_stage=4"], r"sft\.engine\.zero_stage=4: DeepSpeed ZeRO stages are 0, 1, 2 and 3"),
    (["sft.num_workers=3", "sft.batch_size=8"], r"sft\.batch_size=8: must be divisible by sft\.num_workers=3 .*Fix: change sft\.batch_size"),
    (["sft.engine.offload=true", "sft.engine.zero_stage=1"], r"sft\.engine\.offload=True: optimizer offload needs ZeRO stage 2"),
    (["sft.engine.kind=ddp", "sft.engine.zero_stage=2"], r"sft\.engine\.zero_stage=2: is a DeepSpeed setting and sft\.engine\.kind='ddp'"),
    (["sft.engine.precision=bf16"], r"sft\.engine\.precision='bf16': bf16 and fp16 training need a GPU"),
    (["sft.engine.kind=fsdp"], r"sft\.engine\.kind='fsdp': must be one of \['ddp', 'deepspeed'\]"),
    (["sft.engine=ddp"], r"sft\.engine is a section .*Fix: set its keys one by one"),
    (["sft.lr=1e-3"], r"unknown config key 'sft\.lr': it is now 'sft\.optimizer\.lr'"),
]  # fmt: skip
"""Overrides, and the error they must raise."""


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_bad_sft_configs_fail_naming_key_value_and_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("local", overrides)
