"""The run folder: where every stage reads and writes, named in this one module.

A :class:`RunLayout` maps a run folder to one typed folder per stage. A caller can send one stage's
output elsewhere (``layout.moved(ppo=...)``, e.g. a Tune trial's own folder) and every reader of
that stage follows. Nothing else in the project spells these paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar, cast, overload

StageName = Literal["data", "identifiers", "labeled", "init", "sft", "ppo", "evaluate"]
STAGE_FOLDERS: tuple[StageName, ...] = ("data", "identifiers", "labeled", "init", "sft", "ppo", "evaluate")

D = TypeVar("D")


class _At:
    """A path attribute: ``parts`` joined under the owner's folder (``path``, or ``root`` of a
    :class:`RunLayout`). Each folder class below is a table of these, each with its docstring."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    @overload
    def __get__(self, obj: None, owner: type) -> _At: ...
    @overload
    def __get__(self, obj: StageDir | TrialDir | SweepDir | RunLayout, owner: type) -> Path: ...
    def __get__(self, obj: StageDir | TrialDir | SweepDir | RunLayout | None, owner: type) -> Path | _At:
        if obj is None:
            return self
        return (obj.root if isinstance(obj, RunLayout) else obj.path).joinpath(*self.parts)


class _Stage(Generic[D]):
    """A stage's folder of a :class:`RunLayout` (named by the attribute), as its typed ``kind``; ``moved``
    stages resolve to their new folder."""

    def __init__(self, kind: Callable[[Path], D]) -> None:
        self.kind = kind
        self.stage: StageName = "data"

    def __set_name__(self, owner: type, name: str) -> None:
        self.stage = cast(StageName, name)

    @overload
    def __get__(self, obj: None, owner: type) -> _Stage[D]: ...
    @overload
    def __get__(self, obj: RunLayout, owner: type) -> D: ...
    def __get__(self, obj: RunLayout | None, owner: type) -> D | _Stage[D]:
        return self if obj is None else self.kind(obj._folder(self.stage))


@dataclass(frozen=True)
class StageDir:
    """A stage's output folder and the files every stage writes there."""

    path: Path

    config = _At("config.yaml")
    """The resolved config the stage ran with."""
    metrics = _At("metrics.json")
    """The stage's metrics (what its function also returns)."""
    ray_train = _At("ray_train")
    """Ray Train storage of a training stage (checkpoints of its runs)."""
    tensorboard = _At("tensorboard")
    """TensorBoard event files."""


@dataclass(frozen=True)
class DataDir(StageDir):
    """``data/``: statistics of the prepared datasets (the Parquet cache lives in ``data.cache_dir``)."""

    stats = _At("stats.json")
    """Counts per split, level distributions and the bad-row report."""


@dataclass(frozen=True)
class IdentifiersDir(StageDir):
    """``identifiers/``: one identifier folder per mechanism and the tokenizer trained for them."""

    def mechanism(self, name: str) -> Path:
        """The ``save_identifier`` folder of ``name`` (``ER``, ``IP``, ``EX``)."""
        return self.path / name

    tokenizer = _At("tokenizer")
    """A tokenizer trained on the data for tiny identifiers built from config."""


@dataclass(frozen=True)
class LabeledDir(StageDir):
    """``labeled/``: every ED example with the identifiers' levels of its gold response."""

    def split(self, name: str) -> Path:
        """The labelled Parquet table of split ``name``."""
        return self.path / f"{name}.parquet"

    def parts(self, name: str) -> Path:
        """The folder of per-shard part files of split ``name`` (kept for resumption)."""
        return self.path / name

    stats = _At("label_stats.json")
    """Level distribution of the gold responses per split and mechanism."""


@dataclass(frozen=True)
class PolicyDir(StageDir):
    """A stage that writes a policy (``init``, ``sft``, ``ppo``)."""

    policy = _At("policy")
    """The policy: a Hugging Face folder plus ``value_head.safetensors``."""
    samples = _At("samples")
    """Sampled responses written during training."""


@dataclass(frozen=True)
class PPODir(PolicyDir):
    """``ppo/``: the PPO policy, its checkpoints and its per-iteration log."""

    checkpoints = _At("checkpoints")
    """Atomic PPO checkpoints (``iter_NNNNNN/`` and the ``latest`` pointer)."""
    log = _At("metrics.jsonl")
    """One JSON metrics row per iteration."""


@dataclass(frozen=True)
class EvaluationDir(StageDir):
    """``evaluate/``: metrics, every generated response and the report."""

    responses = _At("responses.parquet")
    """Every generated response with its levels."""
    report_md = _At("report.md")
    """The Markdown report."""
    report_html = _At("report.html")
    """The HTML report."""
    figures = _At("figures")
    """The report's figures."""


@dataclass(frozen=True)
class TrialDir:
    """One sweep trial's folder: its PPO run, its evaluation and the policy its dev metric scores."""

    path: Path

    ppo = _At("ppo")
    """The trial's PPO output (``layout.moved(ppo=...)``)."""
    evaluate = _At("evaluate")
    """The trial's final evaluation (``layout.moved(evaluate=...)``)."""
    dev_policy = _At("dev_policy")
    """The current policy, exported for the periodic dev metric (overwritten each time)."""


@dataclass(frozen=True)
class SweepDir:
    """``sweep/`` (or another folder): a Tune sweep's trials, results table, report and best policy."""

    path: Path

    space = _At("space.yaml")
    """A copy of the search space the sweep ran with."""
    config = _At("config.yaml")
    """The base config every trial overrides."""
    settings = _At("settings.json")
    """The sweep's settings (scheduler, search, objective, counts): what ``--resume`` continues with."""
    tune = _At("tune")
    """Ray Tune's storage (``storage_path``): results, checkpoints, experiment state."""
    experiment = _At("tune", "ppo")
    """The Tune experiment under :attr:`tune` (its folder name is the experiment's name)."""

    def trial(self, trial_id: str) -> TrialDir:
        """The folder of trial ``trial_id``."""
        return TrialDir(self.path / "trials" / trial_id)

    trials = _At("trials.parquet")
    """One row per trial: its swept values, final metrics, iterations, wall time and status."""
    history = _At("history.parquet")
    """One row per report of every trial (PPO iteration, dev metrics, KL, reward): the learning curves."""
    report_md = _At("report.md")
    """The trials table, Pareto fronts, figures and the best trial with the command that reproduces it."""
    report_html = _At("report.html")
    """The same report as a web page."""
    pareto_figure = _At("pareto.png")
    """Emp-F1 against KL and against perplexity, one point per trial, with the Pareto fronts."""
    curves_figure = _At("learning_curves.png")
    """The trials' learning curves (dev Emp-F1, KL, reward per PPO iteration)."""
    asha = _At("asha.jsonl")
    """ASHA's comparisons: each report that reached a rung, the rung's cut-off and the decision."""
    dev_pilot = _At("dev_pilot.json")
    """The pilot that sized the dev slice: standard error of dev Emp-F1 by slice size, the size chosen."""
    confirm = _At("confirm")
    """The confirmation: the control and the top configurations evaluated on held-out rows (an evaluate
    folder: metrics with the paired comparisons, responses, report)."""
    best = _At("best")
    """The best trial's policy and resolved config."""
    best_policy = _At("best", "policy")
    """The best trial's policy: a Hugging Face folder plus ``value_head.safetensors``."""
    best_ppo = _At("best", "ppo")
    """Where the best trial's reproduction command writes its PPO run."""
    best_config = _At("best", "config.yaml")
    """The best trial's resolved config (loadable with ``--preset``)."""


@dataclass(frozen=True)
class RunLayout:
    """Where each stage of one run reads and writes; ``moved`` sends a stage's output elsewhere."""

    root: Path
    folders: tuple[tuple[StageName, Path], ...] = ()
    """Stages whose folder the caller named, as (stage, folder) pairs."""

    def _folder(self, stage: StageName) -> Path:
        return dict(self.folders).get(stage, self.root / stage)

    def moved(self, **folders: Path | str | None) -> RunLayout:
        """A copy in which each named stage (``ppo=``, ``evaluate=``, ...) writes into the given folder."""
        unknown = sorted(set(folders) - set(STAGE_FOLDERS))
        if unknown:
            raise ValueError(f"RunLayout.moved: unknown stage(s) {unknown}; stages are {list(STAGE_FOLDERS)}")
        merged: dict[StageName, Path] = dict(self.folders)
        for name, folder in folders.items():
            if folder is not None:
                merged[cast(StageName, name)] = Path(folder)
        return dataclasses.replace(self, folders=tuple(sorted(merged.items())))

    config = _At("config.yaml")
    """The run's resolved config."""
    summary = _At("summary.json")
    """Per-stage results and wall time of a whole run."""
    log = _At("run.log")
    """Everything the libraries and Ray printed (the terminal shows only the headlines)."""

    data = _Stage(DataDir)
    """Prepared-data statistics."""
    identifiers = _Stage(IdentifiersDir)
    """The ER/IP/EX identifiers."""
    labeled = _Stage(LabeledDir)
    """ED with gold empathy levels."""
    init = _Stage(PolicyDir)
    """The initial policy SFT starts from."""
    sft = _Stage(PolicyDir)
    """The supervised fine-tuned policy."""
    ppo = _Stage(PPODir)
    """The PPO policy, checkpoints and log."""
    evaluate = _Stage(EvaluationDir)
    """The evaluation metrics and report."""

    def sweep(self, folder: Path | str | None = None) -> SweepDir:
        """A Tune sweep's folder: ``folder``, by default ``sweep/`` of the run."""
        return SweepDir(Path(folder) if folder is not None else self.root / "sweep")
