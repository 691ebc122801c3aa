"""The run layout names every stage's paths; nothing else in the project spells them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.layout import STAGE_FOLDERS, RunLayout

ROOT = Path(__file__).resolve().parents[2]

# a path joined from a string that names a run-folder entry: `x / "sft"`, `x / "metrics.json"`, ...
SPELLED = re.compile(
    r"/\s*f?[\"'](data|identifiers|labeled|init|sft|ppo|evaluate|policy|checkpoints|tensorboard|ray_train|"
    r"samples|figures|tokenizer|metrics\.jsonl?|summary\.json|run\.log|stats\.json|label_stats\.json|"
    r"report\.(html|md)|responses\.parquet|config\.yaml|sweep|trials|trials\.parquet|best|tune|dev_policy|space\.yaml|settings\.json|history\.parquet|pareto\.png|learning_curves\.png)[\"']"
)

ALLOWED = {
    ROOT / "pipeline" / "layout.py",
    ROOT / "pipeline" / "data" / "prepare.py",  # the prepared-data cache's own entries, not a run folder
}


def test_every_stage_folder_is_under_the_run_folder() -> None:
    layout = RunLayout(Path("/runs/r1"))
    assert layout.sft.policy == Path("/runs/r1/sft/policy")
    assert layout.ppo.checkpoints == Path("/runs/r1/ppo/checkpoints")
    assert layout.ppo.log == Path("/runs/r1/ppo/metrics.jsonl")
    assert layout.labeled.split("valid") == Path("/runs/r1/labeled/valid.parquet")
    assert layout.identifiers.mechanism("ER") == Path("/runs/r1/identifiers/ER")
    assert layout.evaluate.report_html == Path("/runs/r1/evaluate/report.html")
    assert layout.log == Path("/runs/r1/run.log") and layout.summary == Path("/runs/r1/summary.json")
    for stage in STAGE_FOLDERS:
        assert getattr(layout, stage).path == Path("/runs/r1") / stage
    sweep = layout.sweep()
    assert sweep.trials == Path("/runs/r1/sweep/trials.parquet") and sweep.tune == Path("/runs/r1/sweep/tune")
    assert sweep.best_policy == Path("/runs/r1/sweep/best/policy")
    assert sweep.trial("t1").ppo == Path("/runs/r1/sweep/trials/t1/ppo")
    assert layout.sweep("/elsewhere").report_md == Path("/elsewhere/report.md")


def test_a_moved_stage_is_read_from_its_new_folder_by_every_later_stage() -> None:
    layout = RunLayout(Path("/runs/r1")).moved(ppo=Path("/trials/t3/ppo"), evaluate=None)
    assert layout.ppo.policy == Path("/trials/t3/ppo/policy")
    assert layout.sft.policy == Path("/runs/r1/sft/policy")  # the others stay
    assert layout.evaluate.path == Path("/runs/r1/evaluate")  # None keeps the default
    again = layout.moved(evaluate="/trials/t3/eval")
    assert (again.ppo.path, again.evaluate.path) == (Path("/trials/t3/ppo"), Path("/trials/t3/eval"))
    assert again == RunLayout(Path("/runs/r1")).moved(evaluate="/trials/t3/eval", ppo="/trials/t3/ppo")
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['pop'\]"):
        layout.moved(pop=Path("/x"))


def test_no_other_module_spells_the_run_folder_paths() -> None:
    offenders = []
    for folder in ("pipeline", "actors", "jobs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in ALLOWED:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if SPELLED.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "use pipeline.layout instead:\n" + "\n".join(offenders)
