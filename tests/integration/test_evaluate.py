"""The evaluate stage on a real local Ray cluster with tiny models: two policies, metrics, bootstrap,
responses and report; the same numbers as the roles in-process; early, clear failures on bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from ppo_inputs import POLICY, tiny_config

from actors.inference.evaluator import EvaluationWorker, evaluate_policies, prompt_chunks
from actors.inference.scorer import IdentifierScorerWorker
from jobs.cli import main as cli
from jobs.stages import evaluate_stage, load_evaluation_inputs
from pipeline.config import MECHANISMS
from pipeline.evaluation.suite import METRICS, EvaluationInputError
from pipeline.layout import RunLayout
from pipeline.models import build_policy, load_tokenizer, save_policy

pytestmark = pytest.mark.integration

N = 20


@pytest.fixture(scope="module")
def run_dir(sweep_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with ``sft/policy``, a second random ``ppo/policy``, identifiers, labelled valid and training logs."""
    run = shutil.copytree(sweep_run, tmp_path_factory.mktemp("eval") / "run")
    tokenizer = load_tokenizer(str(run / "sft" / "policy"), key="test")
    torch.manual_seed(7)
    save_policy(build_policy(POLICY, tokenizer), tokenizer, run / "ppo" / "policy")
    history = [
        {"epoch": e, "train_loss": 6.0 - e, "val_loss": 6.2 - e, "val_ppl": float(np.exp(6.2 - e))}
        for e in (1, 2)
    ]
    (run / "sft" / "metrics.json").write_text(json.dumps({"history": history}))
    rows = [{"iteration": i, "reward/score": 0.1 * i, "rollout/kl": 0.02 * i} for i in (1, 2, 3)]
    (run / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _cfg() -> Any:
    return tiny_config(rollout__batch_size=8, reward__num_scorers=1)


def test_two_policies_side_by_side(ray_cluster: None, run_dir: Path) -> None:
    cfg = _cfg()
    inputs = load_evaluation_inputs(RunLayout(run_dir), max_examples=N)
    assert [p.name for p in inputs.policies] == ["sft", "ppo"]
    result = evaluate_stage(cfg, RunLayout(run_dir), inputs, n_resamples=200, num_samples=3)
    out = run_dir / "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert result.outputs["report"] == out / "report.html" and result.metrics["n_examples"] == N
    assert result.metrics["emp_f1"] == {n: p["emp_f1"] for n, p in metrics["policies"].items()}

    assert metrics["policy_order"] == ["sft", "ppo"] and metrics["n_examples"] == N
    for p in metrics["policies"].values():
        assert {s.key for s in METRICS} <= set(p)
        assert 0.0 <= p["emp_f1"] <= 100.0 and np.isfinite(p["perplexity"]) and p["perplexity"] > 1
        assert set(p["per_mechanism"]) == set(MECHANISMS)
        assert sum(map(sum, p["per_mechanism"]["ER"]["confusion_matrix"])) == N
    (comparison,) = metrics["comparisons"]
    assert (comparison["baseline"], comparison["policy"]) == ("sft", "ppo")
    for key in ("emp_f1", "perplexity", "dist2", "bleu4", "rouge_l"):
        r = comparison["metrics"][key]
        assert r["ci_low"] <= r["difference"] <= r["ci_high"] and r["n_resamples"] == 200
    assert metrics["decoding"] == {
        "mode": "sample", "top_k": cfg.rollout.top_k, "top_p": cfg.rollout.top_p,
        "temperature": cfg.rollout.temperature, "min_new_tokens": cfg.rollout.min_new_tokens,
        "max_new_tokens": cfg.rollout.max_new_tokens, "seed": cfg.run.seed,
    }  # fmt: skip

    table = pq.read_table(out / "responses.parquet")
    assert table.num_rows == N
    assert table["context"].to_pylist() == list(inputs.split.contexts)
    for name in ("sft", "ppo"):
        assert {f"{name}_response", f"{name}_er_level", f"{name}_gold_nll"} <= set(table.column_names)
        levels = table[f"{name}_er_level"].to_numpy()
        dist = np.bincount(levels, minlength=3) / N
        assert metrics["policies"][name]["per_mechanism"]["ER"]["pred_distribution"] == pytest.approx(dist)

    for f in ("report.html", "report.md", "config.yaml"):
        assert (out / f).is_file()
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {
        "differences_0.png",
        "level_distribution.png",
        "confusion_sft.png",
        "confusion_ppo.png",
    } <= figures
    assert {"sft_curves.png", "ppo_curves.png"} <= figures

    # the distributed results are those of the roles run in-process on the same chunks
    sft = str(inputs.policies[0].folder.resolve())
    worker = EvaluationWorker(cfg.rollout, cfg.model.max_source_len, cfg.model.max_target_len)
    chunk = prompt_chunks(cfg, load_tokenizer(sft, key="test"), inputs.split)[1]
    rows = chunk.index.tolist()
    assert list(worker.generate(sft, chunk)) == table["sft_response"].to_pylist()[rows[0] : rows[-1] + 1]
    nll, tokens = worker.gold_nll(sft, chunk.contexts, [inputs.split.references[i] for i in rows])
    assert nll == pytest.approx(table["sft_gold_nll"].to_numpy()[rows], rel=1e-5)
    assert tokens.tolist() == table["sft_gold_tokens"].to_numpy()[rows].tolist()
    scorer = IdentifierScorerWorker(run_dir / "identifiers", cfg.identifiers)
    scores = scorer.score(chunk.contexts, table["sft_response"].to_pylist()[rows[0] : rows[-1] + 1])
    assert scores.levels["IP"].tolist() == table["sft_ip_level"].to_numpy()[rows].tolist()


def test_two_workers_give_the_responses_of_one_in_process_worker(ray_cluster: None, run_dir: Path) -> None:
    inputs = load_evaluation_inputs(
        RunLayout(run_dir), policies=[("a", run_dir / "sft" / "policy")], max_examples=12
    )
    cfg = tiny_config(rollout__batch_size=4)
    (out,), stats = evaluate_policies(
        cfg, inputs.split, inputs.policies, inputs.identifiers, greedy=True, num_workers=2
    )
    assert stats["restarts"] == 0 and len(out.responses) == 12
    folder = str(inputs.policies[0].folder.resolve())
    worker = EvaluationWorker(cfg.rollout, cfg.model.max_source_len, cfg.model.max_target_len)
    chunks = prompt_chunks(cfg, load_tokenizer(folder, key="test"), inputs.split)
    assert len(chunks) == 3
    assert out.responses == tuple(r for c in chunks for r in worker.generate(folder, c, greedy=True))


def _variant(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run (links to its models) whose files a test may break."""
    run = tmp_path / "run"
    run.mkdir()
    for sub in ("sft", "identifiers"):
        (run / sub).symlink_to(run_dir / sub)
    (run / "labeled").mkdir()
    shutil.copy(run_dir / "labeled" / "valid.parquet", run / "labeled" / "valid.parquet")
    return run


def test_missing_or_unlabelled_split_fails_early(run_dir: Path, tmp_path: Path) -> None:
    run = _variant(run_dir, tmp_path)
    with pytest.raises(EvaluationInputError, match=r"no labelled 'test' split .*emprl identifiers label"):
        load_evaluation_inputs(RunLayout(run), split="test")
    table = pq.read_table(run / "labeled" / "valid.parquet")
    pq.write_table(table.drop(["ip_level"]), run / "labeled" / "valid.parquet")
    with pytest.raises(EvaluationInputError, match="no ip_level column"):
        load_evaluation_inputs(RunLayout(run))
    pq.write_table(table.slice(0, 0), run / "labeled" / "valid.parquet")
    with pytest.raises(EvaluationInputError, match="has no rows"):
        load_evaluation_inputs(RunLayout(run))


def test_policy_or_identifiers_that_do_not_load_fail_early(run_dir: Path, tmp_path: Path) -> None:
    run = _variant(run_dir, tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(EvaluationInputError, match=r"(?s)policy 'mine' at .*broken does not load: .*Fix:"):
        load_evaluation_inputs(RunLayout(run), policies=[("mine", broken)])
    with pytest.raises(EvaluationInputError, match=r"(?s)policy 'gone' at .*nowhere does not load"):
        load_evaluation_inputs(RunLayout(run), policies=[("gone", tmp_path / "nowhere")])
    with pytest.raises(EvaluationInputError, match="unique"):
        load_evaluation_inputs(
            RunLayout(run), policies=[("a", run / "sft" / "policy"), ("a", run / "sft" / "policy")]
        )
    with pytest.raises(EvaluationInputError, match=r"identifiers folder .*does not exist.*--identifiers"):
        load_evaluation_inputs(RunLayout(run), identifiers=tmp_path / "no_identifiers")
    empty = tmp_path / "empty_run"
    (empty / "labeled").mkdir(parents=True)
    shutil.copy(run / "labeled" / "valid.parquet", empty / "labeled" / "valid.parquet")
    with pytest.raises(
        EvaluationInputError, match=r"no SFT or PPO policy to evaluate .*--policy NAME=FOLDER"
    ):
        load_evaluation_inputs(RunLayout(empty))


def test_cli_reports_bad_input_without_a_traceback(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    run = _variant(run_dir, tmp_path)
    pq.write_table(pa.table({"context": ["x"], "response": ["y"]}), run / "labeled" / "valid.parquet")
    with pytest.raises(SystemExit, match=r"evaluation input error: .*er_level, ip_level, ex_level column"):
        cli.main(["evaluate", "--run-dir", str(run)])
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--run-dir", str(run), "--policy", "no-equals-sign"])
    assert "expected NAME=FOLDER" in capsys.readouterr().err
