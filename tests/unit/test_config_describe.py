"""`emprl config`: every key documented, values against defaults, filters, errors, YAML round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobs.cli import config as config_job
from jobs.cli import main as cli
from pipeline.config import Config, RewardWeights, load_config
from pipeline.config.describe import describe, field_docs, first_sentence, sections

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _flat(tree: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in tree.items():
        keys |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    config_job.main(list(argv))
    return capsys.readouterr().out


def test_every_leaf_and_section_of_config_has_a_doc() -> None:
    rows = describe()
    assert {r.key for r in rows} == _flat(Config().to_dict())  # nested sections are walked too
    assert [r.key for r in rows if not r.doc] == []  # a new field needs its docstring
    assert [s.key for s in sections() if not s.doc] == []
    assert "reward.weights" in {s.key for s in sections()}
    assert field_docs(RewardWeights)["ex"] == "Weight w_EX of explorations (paper: 1)."


def test_rows_compare_the_resolved_value_with_the_schema_default() -> None:
    rows = {r.key: r for r in describe(load_config("paper", ["reward.weights.ex=0.5"]))}
    ex = rows["reward.weights.ex"]
    assert (ex.value, ex.default, ex.changed) == (0.5, 1.0, True)
    assert not rows["ppo.kl_target"].changed and rows["ppo.kl_target"].default == 6.0


def test_first_sentence_keeps_parentheses_and_abbreviations_whole() -> None:
    assert first_sentence("Train fractions (Sharma et al. 2020: 75/5/20). More.") == (
        "Train fractions (Sharma et al. 2020: 75/5/20)."
    )
    assert first_sentence("Use e.g. 0.2 here. Then more") == "Use e.g. 0.2 here."
    assert first_sentence("``bf16``: faster\n    on GPUs. ``fp32``: exact.") == "`bf16`: faster on GPUs."
    assert first_sentence("no full stop") == "no full stop"


def test_section_output_names_key_value_default_and_doc(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "ppo")
    lines = out.splitlines()
    assert lines[1].startswith("[ppo] Proximal policy optimisation")
    kl_target = next(line for line in lines if " ppo.kl_target " in line)
    assert kl_target.startswith("  ppo.kl_target")  # not marked: the preset keeps the default
    assert kl_target.split()[1:] == "6.0 Target KL of the adaptive controller (paper: 6).".split()
    assert not any(line.lstrip("* ").startswith(("reward.", "rollout.")) for line in lines)
    steps = next(line for line in lines if " ppo.total_steps " in line)
    assert steps.startswith("* ppo.total_steps") and "4 (default 1600)" in steps  # set by the local preset


def test_override_is_marked_changed(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "ppo.kl", "ppo.kl_target=3", "reward.weights")
    rows = {line[2:].split()[0]: line for line in out.splitlines() if line[:2] in ("  ", "* ")}
    assert rows["ppo.kl_target"].startswith("* ppo.kl_target")
    assert "3.0 (default 6.0)" in rows["ppo.kl_target"]
    kl = {"ppo.kl_mode", "ppo.kl_coef", "ppo.kl_target", "ppo.kl_horizon", "ppo.kl_estimator"}
    assert set(rows) == kl | {"reward.weights.er", "reward.weights.ip", "reward.weights.ex"}
    assert "+ 1 override(s): 1 of 8 keys differ" in out.splitlines()[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ppo.kl_cof=1"], r"^config error: unknown config key 'ppo\.kl_cof'; did you mean 'kl_coef'\?$"),
        (["reward.weights.xx=1"], r"^config error: unknown config key 'reward\.weights\.xx'"),
        (["ppo.clip_ratio=2"], r"^config error: ppo\.clip_ratio=2\.0: must be in \(0, 1\)\. Fix:"),
        (["rewrd"], r"^config error: no config key starts with 'rewrd'; did you mean 'reward'\?$"),
    ],
)
def test_bad_key_or_prefix_exits_with_the_config_error(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        config_job.main(argv)


def test_yaml_output_round_trips_through_load_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    overrides = ["reward.weights.ip=0.25", "ppo.kl_mode=fixed", "data.splits=[train, valid, test]"]
    path = tmp_path / "resolved.yaml"
    path.write_text(_run(capsys, "--preset", "paper", "--yaml", *overrides))
    assert load_config(path) == load_config("paper", overrides)
    # a filtered print-out is a partial preset: only the section shown
    part = tmp_path / "reward.yaml"
    part.write_text(_run(capsys, "--yaml", "reward", "reward.weights.ex=0"))
    assert part.read_text().startswith("reward:\n")
    assert load_config(part, None).reward.weights == RewardWeights(ex=0.0)


def test_emprl_config_imports_neither_ray_nor_torch(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["config", "run"])
    assert "run.seed" in capsys.readouterr().out
    code = (
        "import sys\nfrom jobs.cli.main import main\nmain(['config'])\n"
        "sys.stderr.write(repr(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'deepspeed'})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "[]"
