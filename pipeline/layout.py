"""The run folder: where every stage reads and writes, named in this one module.

A :class:`RunLayout` maps a run folder to one typed folder per stage. A caller can send one stage's
output elsewhere (``layout.moved(ppo=...)``, e.g. a Tune trial's own folder) and every reader of
that stage follows. Nothing else in the project spells these paths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

StageName = Literal["data", "identifiers", "labeled", "init", "sft", "ppo", "evaluate"]
STAGE_FOLDERS: tuple[StageName, ...] = ("data", "identifiers", "labeled", "init", "sft", "ppo", "evaluate")


@dataclass(frozen=True)
class StageDir:
    """A stage's output folder and the files every stage writes there."""

    path: Path

    @property
    def config(self) -> Path:
        """The resolved config the stage ran with."""
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        """The stage's metrics (what its function also returns)."""
        return self.path / "metrics.json"

    @property
    def ray_train(self) -> Path:
        """Ray Train storage of a training stage (checkpoints of its runs)."""
        return self.path / "ray_train"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files."""
        return self.path / "tensorboard"


@dataclass(frozen=True)
class DataDir(StageDir):
    """``data/``: statistics of the prepared datasets (the Parquet cache lives in ``data.cache_dir``)."""

    @property
    def stats(self) -> Path:
        """Counts per split, level distributions and the bad-row report."""
        return self.path / "stats.json"


@dataclass(frozen=True)
class IdentifiersDir(StageDir):
    """``identifiers/``: one identifier folder per mechanism and the tokenizer trained for them."""

    def mechanism(self, name: str) -> Path:
        """The ``save_identifier`` folder of ``name`` (``ER``, ``IP``, ``EX``)."""
        return self.path / name

    @property
    def tokenizer(self) -> Path:
        """A tokenizer trained on the data for tiny identifiers built from config."""
        return self.path / "tokenizer"


@dataclass(frozen=True)
class LabeledDir(StageDir):
    """``labeled/``: every ED example with the identifiers' levels of its gold response."""

    def split(self, name: str) -> Path:
        """The labelled Parquet table of split ``name``."""
        return self.path / f"{name}.parquet"

    def parts(self, name: str) -> Path:
        """The folder of per-shard part files of split ``name`` (kept for resumption)."""
        return self.path / name

    @property
    def stats(self) -> Path:
        """Level distribution of the gold responses per split and mechanism."""
        return self.path / "label_stats.json"


@dataclass(frozen=True)
class PolicyDir(StageDir):
    """A stage that writes a policy (``init``, ``sft``, ``ppo``)."""

    @property
    def policy(self) -> Path:
        """The policy: a Hugging Face folder plus ``value_head.safetensors``."""
        return self.path / "policy"

    @property
    def samples(self) -> Path:
        """Sampled responses written during training."""
        return self.path / "samples"


@dataclass(frozen=True)
class PPODir(PolicyDir):
    """``ppo/``: the PPO policy, its checkpoints and its per-iteration log."""

    @property
    def checkpoints(self) -> Path:
        """Atomic PPO checkpoints (``iter_NNNNNN/`` and the ``latest`` pointer)."""
        return self.path / "checkpoints"

    @property
    def log(self) -> Path:
        """One JSON metrics row per iteration."""
        return self.path / "metrics.jsonl"


@dataclass(frozen=True)
class EvaluationDir(StageDir):
    """``evaluate/``: metrics, every generated response and the report."""

    @property
    def responses(self) -> Path:
        """Every generated response with its levels."""
        return self.path / "responses.parquet"

    @property
    def report_md(self) -> Path:
        """The Markdown report."""
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        """The HTML report."""
        return self.path / "report.html"

    @property
    def figures(self) -> Path:
        """The report's figures."""
        return self.path / "figures"


@dataclass(frozen=True)
class TrialDir:
    """One sweep trial's folder: its PPO run, its evaluation and the policy its dev metric scores."""

    path: Path

    @property
    def ppo(self) -> Path:
        """The trial's PPO output (``layout.moved(ppo=...)``)."""
        return self.path / "ppo"

    @property
    def evaluate(self) -> Path:
        """The trial's final evaluation (``layout.moved(evaluate=...)``)."""
        return self.path / "evaluate"

    @property
    def dev_policy(self) -> Path:
        """The current policy, exported for the periodic dev metric (overwritten each time)."""
        return self.path / "dev_policy"


@dataclass(frozen=True)
class SweepDir:
    """``sweep/`` (or another folder): a Tune sweep's trials, results table, report and best policy."""

    path: Path

    @property
    def space(self) -> Path:
        """A copy of the search space the sweep ran with."""
        return self.path / "space.yaml"

    @property
    def config(self) -> Path:
        """The base config every trial overrides."""
        return self.path / "config.yaml"

    @property
    def settings(self) -> Path:
        """The sweep's settings (scheduler, search, objective, counts): what ``--resume`` continues with."""
        return self.path / "settings.json"

    @property
    def tune(self) -> Path:
        """Ray Tune's storage (``storage_path``): results, checkpoints, experiment state."""
        return self.path / "tune"

    @property
    def experiment(self) -> Path:
        """The Tune experiment under :attr:`tune` (its folder name is the experiment's name)."""
        return self.tune / "ppo"

    def trial(self, trial_id: str) -> TrialDir:
        """The folder of trial ``trial_id``."""
        return TrialDir(self.path / "trials" / trial_id)

    @property
    def trials(self) -> Path:
        """One row per trial: its swept values, final metrics, iterations, wall time and status."""
        return self.path / "trials.parquet"

    @property
    def history(self) -> Path:
        """One row per report of every trial (PPO iteration, dev metrics, KL, reward): the learning curves."""
        return self.path / "history.parquet"

    @property
    def report_md(self) -> Path:
        """The trials table, Pareto fronts, figures and the best trial with the command that reproduces it."""
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        """The same report as a web page."""
        return self.path / "report.html"

    @property
    def pareto_figure(self) -> Path:
        """Emp-F1 against KL and against perplexity, one point per trial, with the Pareto fronts."""
        return self.path / "pareto.png"

    @property
    def curves_figure(self) -> Path:
        """The trials' learning curves (dev Emp-F1, KL, reward per PPO iteration)."""
        return self.path / "learning_curves.png"

    @property
    def best(self) -> Path:
        """The best trial's policy and resolved config."""
        return self.path / "best"

    @property
    def best_policy(self) -> Path:
        """The best trial's policy: a Hugging Face folder plus ``value_head.safetensors``."""
        return self.best / "policy"

    @property
    def best_ppo(self) -> Path:
        """Where the best trial's reproduction command writes its PPO run."""
        return self.best / "ppo"

    @property
    def best_config(self) -> Path:
        """The best trial's resolved config (loadable with ``--preset``)."""
        return self.best / "config.yaml"


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

    @property
    def config(self) -> Path:
        """The run's resolved config."""
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        """Per-stage results and wall time of a whole run."""
        return self.root / "summary.json"

    @property
    def log(self) -> Path:
        """Everything the libraries and Ray printed (the terminal shows only the headlines)."""
        return self.root / "run.log"

    @property
    def data(self) -> DataDir:
        """Prepared-data statistics."""
        return DataDir(self._folder("data"))

    @property
    def identifiers(self) -> IdentifiersDir:
        """The ER/IP/EX identifiers."""
        return IdentifiersDir(self._folder("identifiers"))

    @property
    def labeled(self) -> LabeledDir:
        """ED with gold empathy levels."""
        return LabeledDir(self._folder("labeled"))

    @property
    def init(self) -> PolicyDir:
        """The initial policy SFT starts from."""
        return PolicyDir(self._folder("init"))

    @property
    def sft(self) -> PolicyDir:
        """The supervised fine-tuned policy."""
        return PolicyDir(self._folder("sft"))

    @property
    def ppo(self) -> PPODir:
        """The PPO policy, checkpoints and log."""
        return PPODir(self._folder("ppo"))

    @property
    def evaluate(self) -> EvaluationDir:
        """The evaluation metrics and report."""
        return EvaluationDir(self._folder("evaluate"))

    def sweep(self, folder: Path | str | None = None) -> SweepDir:
        """A Tune sweep's folder: ``folder``, by default ``sweep/`` of the run."""
        return SweepDir(Path(folder) if folder is not None else self.root / "sweep")
