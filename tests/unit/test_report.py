"""The evaluation report from a tiny synthetic run folder: valid HTML, real PNGs, table == metrics.json."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest

from pipeline.config import MECHANISMS
from pipeline.evaluation.report import build_report
from pipeline.evaluation.suite import METRICS, LabeledSplit, PolicyOutputs, evaluate, responses_table
from pipeline.layout import EvaluationDir, RunLayout

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportParser(HTMLParser):
    """Collects image sources and the cells of ``table#metrics``; checks tags are balanced."""

    VOID = frozenset({"img", "meta", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self.stack: list[str] = []
        self._in_metrics = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(str(a["src"]))
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "table" and a.get("id") == "metrics":
            self._in_metrics = True
        if self._in_metrics and tag == "tr":
            self.rows.append([])
        if self._in_metrics and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>, open: {self.stack[-3:]}"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self._in_metrics:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        if tag == "table" and self._in_metrics:
            self._in_metrics = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _metrics(n: int = 30) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(0)
    words = "sorry great awful hear that wow proud sad happy oh no what happened tell me more".split()
    refs = tuple(" ".join(rng.choice(words, 6)) for _ in range(n))
    gold = {m: rng.integers(0, 3, n) for m in MECHANISMS}
    split = LabeledSplit("valid", tuple(f"context {i} </s> turn two" for i in range(n)), refs, gold)
    outs = [
        PolicyOutputs(
            name,
            f"/p/{name}",
            tuple(" ".join(rng.choice(words, 4 + k)) for _ in range(n)),
            {m: np.where(rng.random(n) < 0.4 + 0.4 * k, gold[m], rng.integers(0, 3, n)) for m in MECHANISMS},
            rng.uniform(5, 20, n),
            rng.integers(3, 9, n),
        )
        for k, name in enumerate(("sft", "ppo"))
    ]
    metrics = evaluate(split, outs, n_resamples=100, seed=0)
    metrics["decoding"] = {"mode": "sample", "top_k": 20}
    examples = responses_table(split, outs).slice(0, 3).to_pylist()
    # what the job writes (keys sorted: "ppo" before "sft") and a reader loads
    return json.loads(json.dumps(metrics, sort_keys=True)), examples


def _run_dir(root: Path, *, logs: bool) -> Path:
    run = root / "run"
    (run / "sft").mkdir(parents=True)
    (run / "ppo").mkdir()
    if logs:
        history = [
            {"epoch": e, "train_loss": 5.0 - e, "val_loss": 5.5 - e, "val_ppl": math.exp(5.5 - e)}
            for e in (1, 2, 3)
        ]
        (run / "sft" / "metrics.json").write_text(json.dumps({"history": history}))
        rows = [
            {
                "iteration": i,
                "reward/score": 0.1 * i,
                "reward/ER_hit": 0.3,
                "rollout/kl": 0.01 * i,
                "ppo/policy_loss": -0.1,
            }
            for i in (1, 2, 3, 4)
        ]
        (run / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text())
    parser.close()
    assert parser.stack == [], f"unclosed tags {parser.stack}"
    return parser


def _num(text: str) -> float:
    return float(text.replace("+", ""))


def test_report_html_figures_and_table_match_metrics(tmp_path: Path) -> None:
    metrics, examples = _metrics()
    out = tmp_path / "evaluate"
    files = build_report(
        metrics, EvaluationDir(out), examples=examples, run=RunLayout(_run_dir(tmp_path, logs=True))
    )
    page = _parse(files.html)

    names = {Path(src).name for src in page.images}
    assert {"sft_curves.png", "ppo_curves.png", "level_distribution.png", "differences_0.png"} <= names
    assert {"confusion_sft.png", "confusion_ppo.png"} <= names
    assert len(page.images) == len(files.figures)
    for src in page.images:
        assert not Path(src).is_absolute() and src.startswith("figures/")
        png = out / src
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    markdown = files.markdown.read_text()
    assert all(f"]({src})" in markdown for src in page.images)

    header, *rows = page.rows
    assert header[:4] == ["metric", "sft", "ppo", "gold"] and header[5] == "p"
    assert [r[0].rstrip(" ↑↓") for r in rows] == [s.label for s in METRICS]
    diffs = metrics["comparisons"][0]["metrics"]
    for spec, row in zip(METRICS, rows, strict=True):
        tol = 0.51 * 10**-spec.digits
        for col, name in ((1, "sft"), (2, "ppo")):
            assert _num(row[col]) == pytest.approx(metrics["policies"][name][spec.key], abs=tol), spec.key
        if spec.key in metrics["gold"]:
            assert _num(row[3]) == pytest.approx(metrics["gold"][spec.key], abs=tol)
        d, ci = row[4].split(" [")
        low, high = ci.rstrip("]").split(", ")
        expected = diffs[spec.key]
        assert _num(d) == pytest.approx(expected["difference"], abs=tol), spec.key
        assert (_num(low), _num(high)) == pytest.approx((expected["ci_low"], expected["ci_high"]), abs=tol)
        assert _num(row[5]) == pytest.approx(expected["p_value"], abs=0.0006)
    # the samples are shown side by side, with the gold and each policy's levels
    text = files.html.read_text()
    for row in examples:
        assert all(row[f"{p}_response"] in text for p in ("sft", "ppo"))
    assert "Example 3" in text and "Example 4" not in text


def test_report_without_training_logs_or_comparison_skips_those_parts(tmp_path: Path) -> None:
    metrics, examples = _metrics()
    metrics["policies"].pop("ppo")
    metrics["policy_order"] = ["sft"]
    metrics["comparisons"] = []
    out = tmp_path / "evaluate"
    files = build_report(
        metrics, EvaluationDir(out), examples=examples, run=RunLayout(_run_dir(tmp_path, logs=False))
    )
    page = _parse(files.html)
    assert sorted(Path(s).name for s in page.images) == ["confusion_sft.png", "level_distribution.png"]
    assert page.rows[0] == ["metric", "sft", "gold"]
    assert all(len(r) == 3 for r in page.rows)
    assert "ppo" not in page.rows[0]


def test_report_marks_missing_numbers_instead_of_failing(tmp_path: Path) -> None:
    metrics, _ = _metrics()
    metrics["policies"]["sft"]["perplexity"] = float("inf")
    del metrics["comparisons"][0]["metrics"]["perplexity"]
    files = build_report(metrics, EvaluationDir(tmp_path / "out"))
    rows = {r[0].rstrip(" ↑↓"): r for r in _parse(files.html).rows[1:]}
    assert rows["Perplexity (gold)"][1] == "n/a" and rows["Perplexity (gold)"][4] == "n/a"


def test_report_draws_an_interval_that_excludes_the_observed_difference(tmp_path: Path) -> None:
    # percentile bootstrap intervals of Dist-n sit below the observed difference (resampling repeats items)
    metrics, _ = _metrics()
    dist2 = metrics["comparisons"][0]["metrics"]["dist2"]
    dist2.update(difference=0.05, ci_low=0.01, ci_high=0.03)
    files = build_report(metrics, EvaluationDir(tmp_path / "out"))
    png = tmp_path / "out" / "figures" / "differences_0.png"
    assert png in files.figures or any(p.name == png.name for p in files.figures)
    assert matplotlib.image.imread(png).ndim == 3
