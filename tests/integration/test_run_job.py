"""The main job end to end on the demo data, on a real local Ray cluster bound to loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_local_cluster_stays_on_loopback(ray_cluster: None) -> None:
    import ray

    nodes = ray.nodes()
    assert nodes and all(node["NodeManagerAddress"] == "127.0.0.1" for node in nodes)
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_run_writes_every_stage_into_one_folder(ray_cluster: None, tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from jobs.run import STAGES, run

    cfg = load_config(
        "local", [f"run.output_dir={tmp_path}", "run.name=r1", f"data.cache_dir={tmp_path / 'cache'}"]
    )
    run_dir = run(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(name for name, _ in STAGES) == sorted(k for k in summary if k != "total_seconds")
    assert summary["data"]["ed"]["train"]["examples"] >= 200
    assert sum(summary["data"]["epitome_pairs"].values()) >= 150
    # the resolved config is in the run folder and reloads to the same config
    assert load_config(run_dir / "config.yaml") == cfg
    stats = json.loads((run_dir / "data" / "stats.json").read_text())
    assert stats["bad_rows"] == 0
    # identifiers trained and exported, every gold response labelled
    for mechanism in ("ER", "IP", "EX"):
        assert (run_dir / "identifiers" / mechanism / "metrics.json").is_file()
        assert set(summary["identifiers"][mechanism]) == {"test_accuracy", "test_macro_f1"}
    labeled = pq.read_table(run_dir / "labeled" / "train.parquet")
    assert (
        labeled.num_rows == summary["data"]["ed"]["train"]["examples"] == summary["label"]["splits"]["train"]
    )
    assert {"er_level", "ip_level", "ex_level"} <= set(labeled.column_names)
    # the initial policy is a plain Hugging Face folder
    policy_dir = run_dir / "init" / "policy"
    model = AutoModelForSeq2SeqLM.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    assert model.config.d_model == cfg.model.d_model
    assert len(tokenizer) == summary["init"]["policy_vocab"]
    # the run ends with SFT and PPO side by side on valid; SFT's gold perplexity is its validation perplexity
    evaluation = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert evaluation["policy_order"] == ["sft", "ppo"] and len(evaluation["comparisons"]) == 1
    assert (
        evaluation["n_examples"] == summary["label"]["splits"]["valid"] == summary["evaluate"]["n_examples"]
    )
    assert Path(summary["evaluate"]["report"]) == run_dir / "evaluate" / "report.html"
    assert (run_dir / "evaluate" / "report.html").is_file()
    sft_val_ppl = json.loads((run_dir / "sft" / "metrics.json").read_text())["best"]["val_ppl"]
    assert evaluation["policies"]["sft"]["perplexity"] == pytest.approx(sft_val_ppl, rel=1e-4)


def test_cli_rejects_bad_config_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.run", "learner.zero_stage=4", f"run.output_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode != 0
    assert "learner.zero_stage=4" in proc.stderr and "Fix:" in proc.stderr
    assert not any(tmp_path.iterdir()), "no run folder may be created for an invalid config"


@pytest.mark.slow
def test_cli_run_as_a_new_user_would(tmp_path: Path) -> None:
    """`python -m jobs.run` in a fresh process starts and stops its own loopback cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(Path(os.environ.get("RAY_TMPDIR", "/tmp")))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.run",
            f"run.output_dir={tmp_path}",
            "run.name=cli",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run complete:" in proc.stdout
    config = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert config["data"]["source"] == "demo"
