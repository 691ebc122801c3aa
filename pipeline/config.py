"""One frozen, typed configuration tree for every stage of EmpRL.

Loading order is always: dataclass defaults < YAML preset < dotted CLI overrides
(``ppo.clip_ratio=0.1``). Unknown keys, wrong types and inconsistent values raise
:class:`ConfigError` naming the key, the value, the rule and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

MECHANISMS: tuple[str, str, str] = ("ER", "IP", "EX")
"""EPITOME mechanisms: emotional reactions, interpretations, explorations."""

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration key is unknown, mistyped or inconsistent with another key."""


@dataclass(frozen=True)
class ModelConfig:
    """The T5 policy (and, by default, its tokenizer)."""

    name_or_path: str | None = None
    """Hub name (``t5-base``) or local ``save_pretrained`` folder; ``None`` builds a
    randomly initialised T5 from the shape fields below."""
    tokenizer_path: str | None = None
    """Tokenizer folder or hub name; ``None`` uses ``name_or_path``'s tokenizer, or trains
    one on the training text when the policy is built from config."""
    vocab_size: int = 8000
    """Vocabulary size of a tokenizer trained locally (and of a policy built from config)."""
    d_model: int = 256
    """Hidden size of a policy built from config."""
    d_ff: int = 1024
    """Feed-forward size of a policy built from config."""
    d_kv: int = 64
    """Per-head key/value size of a policy built from config."""
    num_layers: int = 4
    """Encoder layers of a policy built from config."""
    num_decoder_layers: int = 4
    """Decoder layers of a policy built from config."""
    num_heads: int = 4
    """Attention heads of a policy built from config."""
    dropout_rate: float = 0.1
    """Dropout inside the T5 blocks."""
    max_source_len: int = 200
    """Tokens of dialogue history fed to the encoder (paper: 200); longer histories keep
    their most recent tokens."""
    max_target_len: int = 50
    """Tokens of listener response used as the SFT target (paper: 50)."""


@dataclass(frozen=True)
class DataConfig:
    """Where the datasets come from and how dialogues become examples."""

    source: Literal["demo", "local"] = "demo"
    """``demo``: the project's own small demo set, written on first use. ``local``: the
    EmpatheticDialogues and EPITOME files under ``ed_path`` / ``epitome_path`` (fetch them
    with ``emprl data download``)."""
    ed_path: str | None = None
    """Folder with EmpatheticDialogues ``train.csv`` / ``valid.csv`` (/ ``test.csv``)."""
    epitome_path: str | None = None
    """Folder with the three EPITOME Reddit CSVs."""
    cache_dir: str = "~/.cache/emprl"
    """Prepared-dataset cache (Parquet), keyed by source checksums and data config."""
    splits: tuple[str, ...] = ("train", "valid")
    """EmpatheticDialogues splits to prepare (``test`` is read only when asked for)."""
    history_turns: int = 0
    """Dialogue turns before the listener response kept as history; 0 keeps them all."""
    turn_separator: str = " </s> "
    """Text placed between turns of the history."""
    speaker_tags: bool = False
    """Prefix each history turn with ``Speaker:`` / ``Listener:``."""
    prepend_emotion: bool = False
    """Prefix the history with the conversation's emotion label."""
    max_examples: int | None = None
    """Cap on examples per split (after a seeded shuffle); ``None`` keeps all."""
    skip_bad_rows: bool = False
    """Skip malformed rows and report counts instead of failing on the first one."""
    epitome_split: tuple[float, float, float] = (0.75, 0.05, 0.20)
    """Train/dev/test fractions of EPITOME pairs (Sharma et al. 2020: 75/5/20)."""
    seed: int = 42
    """Seed of the EPITOME split and of example sub-sampling."""


@dataclass(frozen=True)
class IdentifiersConfig:
    """The three empathy identifiers (ER, IP, EX) and their training."""

    encoder: str | None = None
    """Hub name or folder of any Hugging Face encoder (``t5-base``, the MiniLM package
    folder, ...); ``None`` builds a tiny random T5 encoder from the fields below."""
    d_model: int = 128
    """Hidden size of a tiny encoder built from config."""
    d_ff: int = 512
    """Feed-forward size of a tiny encoder built from config."""
    num_layers: int = 2
    """Layers of a tiny encoder built from config."""
    num_heads: int = 4
    """Attention heads of a tiny encoder built from config."""
    vocab_size: int = 8000
    """Vocabulary of a tokenizer trained locally for a tiny encoder."""
    dropout: float = 0.1
    """Dropout after cross-attention and inside the head (official code: 0.1)."""
    max_context_len: int = 200
    """Context tokens at training and scoring time (paper: 200); longer text is cut."""
    max_response_len: int = 50
    """Response tokens at training and scoring time (paper: 50); longer text is cut."""
    lr: float = 2e-5
    """Learning rate (AdamW)."""
    epochs: int = 4
    """Training epochs."""
    batch_size: int = 32
    """Training batch size (global, across data-parallel workers)."""
    class_weighting: Literal["none", "inverse_sqrt", "inverse"] = "inverse_sqrt"
    """Class weights in the cross-entropy loss against the heavy level imbalance."""
    patience: int = 2
    """Epochs without dev macro-F1 improvement before early stopping."""
    score_batch_size: int = 64
    """Pairs per forward pass when scoring."""


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning of the initial policy (MLE on ED)."""

    lr: float = 1e-4
    """Peak learning rate, linear decay (paper: 1e-4)."""
    epochs: int = 3
    """Epochs (paper: 3); the best epoch by validation loss is kept."""
    batch_size: int = 8
    """Global batch size (paper: 8)."""
    warmup_ratio: float = 0.0
    """Fraction of steps with linear warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling of responses by the rollout workers."""

    num_workers: int = 1
    """Rollout worker actors."""
    top_k: int = 20
    """Top-k sampling (paper: 20)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (paper: 1.0)."""
    temperature: float = 0.9
    """Sampling temperature (paper: 0.9)."""
    min_new_tokens: int = 5
    """Minimum response tokens (paper: 5)."""
    max_new_tokens: int = 30
    """Maximum response tokens (paper: 30)."""
    batch_size: int = 32
    """Prompts per generate call inside one worker."""


@dataclass(frozen=True)
class RewardConfig:
    """Turning identifier outputs into PPO scores."""

    form: Literal["exp_neg_ce", "neg_ce", "hit_rate"] = "exp_neg_ce"
    """``exp_neg_ce``: r = exp(-Σ w_m CE_m) (paper); ``neg_ce``: r = -Σ w_m CE_m;
    ``hit_rate``: weighted fraction of mechanisms whose argmax hits the gold level."""
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-mechanism weights w_ER, w_IP, w_EX (paper: all 1)."""
    num_scorers: int = 1
    """Reward scorer actors."""
    normalize_scores: bool = True
    """Running normalisation of scores (paper: on)."""
    scale_scores: bool = True
    """Divide scores by their running standard deviation (paper: on)."""
    whiten_rewards: bool = True
    """Whiten the per-token rewards of each batch (paper: on)."""


@dataclass(frozen=True)
class PPOConfig:
    """Proximal policy optimisation with a KL penalty against the reference policy."""

    total_steps: int = 1600
    """PPO iterations (paper evaluates step 1 600)."""
    rollout_batch_size: int = 32
    """Rollouts per PPO iteration (paper: 32)."""
    mini_batch_size: int = 8
    """Rollouts per optimiser step (paper: 8)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch (paper: 4)."""
    lr: float = 1e-5
    """Peak learning rate (paper: 1e-5)."""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """Learning-rate schedule over ``total_steps``."""
    clip_ratio: float = 0.2
    """PPO policy ratio clip epsilon (paper: 0.2)."""
    value_clip: float = 0.2
    """Value prediction clip (paper: 0.2)."""
    vf_coef: float = 0.1
    """Value loss coefficient (paper: 0.1)."""
    gamma: float = 1.0
    """Discount (paper: 1)."""
    lam: float = 0.95
    """GAE lambda (paper: 0.95)."""
    max_grad_norm: float = 1.0
    """Gradient clipping applied on every update (trl 0.9.6 clipped only the first)."""
    kl_mode: Literal["adaptive", "fixed"] = "adaptive"
    """Adaptive (Ziegler et al. 2019) or fixed KL coefficient."""
    kl_coef: float = 0.2
    """Initial (adaptive) or constant (fixed) KL coefficient beta (paper: 0.2)."""
    kl_target: float = 6.0
    """Target KL of the adaptive controller (paper: 6)."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller (paper: 10 000)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator: k1 = log π − log π_ref (paper), k2, k3 (Schulman 2020)."""
    save_every: int = 100
    """Checkpoint every this many iterations."""


@dataclass(frozen=True)
class LearnerConfig:
    """The DeepSpeed learner group."""

    num_ranks: int = 1
    """Data-parallel learner ranks."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage, 0 to 3."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision (``fp32`` on CPU)."""
    offload: bool = False
    """Offload optimizer state to CPU (ZeRO 2 and 3)."""


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray cluster and per-role resources."""

    address: str | None = None
    """Ray address to join (``auto`` inside ``ray job submit``); ``None`` starts a local
    cluster on 127.0.0.1."""
    num_cpus: int | None = None
    """CPUs of a local cluster; ``None`` uses the machine's count."""
    use_gpu: bool = False
    """Place roles on GPUs."""
    rollout_cpus: float = 0.5
    """CPUs per rollout worker."""
    reward_cpus: float = 0.5
    """CPUs per reward scorer."""
    reference_cpus: float = 0.5
    """CPUs of the reference policy."""
    learner_cpus: float = 1.0
    """CPUs per learner rank."""
    torch_threads: int = 1
    """torch/OpenMP threads per actor; keep threads x actors <= cores."""
    object_store_memory: int = 500_000_000
    """Object store bytes of a local cluster."""


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it is seeded."""

    output_dir: str = "runs"
    """Parent folder of run folders."""
    name: str | None = None
    """Run folder name; ``None`` uses a timestamp."""
    seed: int = 42
    """Global seed."""
    log_every: int = 1
    """Log metrics every this many steps."""


@dataclass(frozen=True)
class Config:
    """The whole configuration of an EmpRL run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    identifiers: IdentifiersConfig = field(default_factory=IdentifiersConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def ppo_minibatches_per_epoch(self) -> int:
        """Optimiser steps per PPO epoch."""
        return self.ppo.rollout_batch_size // self.ppo.mini_batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the inverse of :func:`from_dict`."""
        return _plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> Config:
        """A copy with dotted overrides applied (a Tune trial is exactly this)."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else _parse_cli(overrides)
        for key, value in items:
            _set_dotted(data, key, value)
        return from_dict(data)


# --------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, value: object, rule: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}. Fix: {fix}.")


def validate(cfg: Config) -> None:
    """Cross-field and range checks; raises :class:`ConfigError` on the first violation."""
    p, r, lr_ = cfg.ppo, cfg.rollout, cfg.learner
    _check(0 < p.clip_ratio < 1, "ppo.clip_ratio", p.clip_ratio, "must be in (0, 1)", "use e.g. 0.2")
    _check(p.value_clip > 0, "ppo.value_clip", p.value_clip, "must be > 0", "use e.g. 0.2")
    _check(0 <= p.gamma <= 1, "ppo.gamma", p.gamma, "must be in [0, 1]", "use 1.0 (paper)")
    _check(0 <= p.lam <= 1, "ppo.lam", p.lam, "must be in [0, 1]", "use 0.95 (paper)")
    _check(p.kl_coef >= 0, "ppo.kl_coef", p.kl_coef, "must be >= 0", "use 0.2 (paper)")
    _check(p.kl_target > 0, "ppo.kl_target", p.kl_target, "must be > 0", "use 6 (paper)")
    _check(p.kl_horizon > 0, "ppo.kl_horizon", p.kl_horizon, "must be > 0", "use 10000 (paper)")
    for name in ("total_steps", "rollout_batch_size", "mini_batch_size", "ppo_epochs", "save_every"):
        v = getattr(p, name)
        _check(v >= 1, f"ppo.{name}", v, "must be >= 1", "use a positive integer")
    _check(
        p.rollout_batch_size % p.mini_batch_size == 0,
        "ppo.mini_batch_size", p.mini_batch_size,
        f"must divide ppo.rollout_batch_size={p.rollout_batch_size}",
        "pick a divisor of the rollout batch size",
    )
    _check(
        p.mini_batch_size % lr_.num_ranks == 0,
        "learner.num_ranks", lr_.num_ranks,
        f"must divide ppo.mini_batch_size={p.mini_batch_size} (each rank takes an equal share)",
        "change learner.num_ranks or ppo.mini_batch_size",
    )
    _check(lr_.zero_stage in (0, 1, 2, 3), "learner.zero_stage", lr_.zero_stage,
           "DeepSpeed ZeRO stages are 0, 1, 2 and 3", "use 0-3")
    _check(not lr_.offload or lr_.zero_stage >= 2, "learner.offload", lr_.offload,
           "optimizer offload needs ZeRO stage 2 or 3", "set learner.zero_stage=2 or offload=false")
    _check(lr_.num_ranks >= 1, "learner.num_ranks", lr_.num_ranks, "must be >= 1", "use 1 or more")
    _check(r.num_workers >= 1, "rollout.num_workers", r.num_workers, "must be >= 1", "use 1 or more")
    _check(r.top_k >= 0, "rollout.top_k", r.top_k, "must be >= 0 (0 disables)", "use 20 (paper)")
    _check(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]", "use 1.0 (paper)")
    _check(r.temperature > 0, "rollout.temperature", r.temperature, "must be > 0", "use 0.9 (paper)")
    _check(1 <= r.min_new_tokens <= r.max_new_tokens, "rollout.min_new_tokens", r.min_new_tokens,
           f"must be in [1, rollout.max_new_tokens={r.max_new_tokens}]", "use 5 and 30 (paper)")
    _check(cfg.reward.num_scorers >= 1, "reward.num_scorers", cfg.reward.num_scorers,
           "must be >= 1", "use 1 or more")
    _check(all(w >= 0 for w in cfg.reward.weights) and sum(cfg.reward.weights) > 0,
           "reward.weights", cfg.reward.weights, "must be non-negative and not all zero",
           "use e.g. [1.0, 1.0, 1.0]")
    split = cfg.data.epitome_split
    _check(all(f >= 0 for f in split) and abs(sum(split) - 1) < 1e-6 and split[0] > 0,
           "data.epitome_split", split, "fractions must be >= 0, train > 0, and sum to 1",
           "use [0.75, 0.05, 0.20]")
    _check(cfg.data.history_turns >= 0, "data.history_turns", cfg.data.history_turns,
           "must be >= 0 (0 keeps all turns)", "use 0")
    _check(cfg.data.source != "local" or (cfg.data.ed_path is not None and cfg.data.epitome_path is not None),
           "data.source", cfg.data.source, "'local' needs data.ed_path and data.epitome_path",
           "pass data.ed_path=DIR data.epitome_path=DIR (see `emprl data download`)")
    bad_splits = set(cfg.data.splits) - {"train", "valid", "test"}
    _check(not bad_splits and "train" in cfg.data.splits, "data.splits", cfg.data.splits,
           "must include 'train' and only name train/valid/test", "use [train, valid]")
    m = cfg.model
    _check(m.d_model % m.num_heads == 0 or m.name_or_path is not None, "model.num_heads", m.num_heads,
           f"must divide model.d_model={m.d_model}", "change one of them")
    for name in ("max_source_len", "max_target_len", "vocab_size"):
        v = getattr(m, name)
        _check(v >= 1, f"model.{name}", v, "must be >= 1", "use a positive integer")
    i = cfg.identifiers
    _check(i.d_model % i.num_heads == 0, "identifiers.num_heads", i.num_heads,
           f"must divide identifiers.d_model={i.d_model}", "change one of them")
    _check(0 <= i.dropout < 1, "identifiers.dropout", i.dropout, "must be in [0, 1)", "use 0.1")
    for sec, obj in (("sft", cfg.sft), ("identifiers", i)):
        _check(obj.batch_size >= 1, f"{sec}.batch_size", obj.batch_size, "must be >= 1", "use 8")
        _check(obj.lr > 0, f"{sec}.lr", obj.lr, "must be > 0", "use the preset's value")
        _check(obj.epochs >= 1, f"{sec}.epochs", obj.epochs, "must be >= 1", "use 1 or more")
    res = cfg.resources
    _check(res.torch_threads >= 1, "resources.torch_threads", res.torch_threads, "must be >= 1", "use 1")
    for name in ("rollout_cpus", "reward_cpus", "reference_cpus", "learner_cpus"):
        v = getattr(res, name)
        _check(v >= 0, f"resources.{name}", v, "must be >= 0", "use a fraction like 0.5")


# --------------------------------------------------------------------------- loading


def load_config(preset: str | Path | None = "local", overrides: list[str] | None = None) -> Config:
    """Defaults < YAML preset (a name in ``configs/`` or a path) < dotted overrides."""
    data = Config().to_dict() if preset is None else _merge(Config().to_dict(), _read_preset(preset), "")
    for key, value in _parse_cli(overrides or []):
        _set_dotted(data, key, value)
    return from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again with :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested dict, checking every key and type."""
    return typing.cast(Config, _build(Config, data, ""))


def preset_path(preset: str | Path) -> Path:
    """Resolve a preset name (``local``, ``paper``) or a path to a YAML file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist. Fix: pass an existing YAML file "
                              f"or a preset name from {CONFIGS_DIR}.")
        return path
    candidate = CONFIGS_DIR / f"{preset}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {str(preset)!r}. Fix: use one of {names} or a YAML path.")
    return candidate


def _read_preset(preset: str | Path) -> dict[str, Any]:
    path = preset_path(preset)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"preset {path} must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _parse_cli(overrides: list[str]) -> list[tuple[str, Any]]:
    items = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value "
                              "(e.g. ppo.clip_ratio=0.1)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        items.append((key.strip(), value))
    return items


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            raise _unknown(".".join(parts[: depth + 1]), node)
        node = node[part]
    if parts[-1] not in node:
        raise _unknown(key, node)
    node[parts[-1]] = value


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise _unknown(dotted, base)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} is a section; expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{dotted}.")
        else:
            out[key] = value
    return out


def _unknown(key: str, node: dict[str, Any]) -> ConfigError:
    import difflib

    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(node), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys here: {sorted(node)}"
    return ConfigError(f"unknown config key {key!r}; {hint}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown(f"{prefix}{key}", {n: None for n in names})
    kwargs = {}
    for name in names & set(data):
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"{prefix.rstrip('.')}: {exc}") from exc


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, f"{key}.")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list ({_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected {len(args)} items ({_name(tp)})")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # pragma: no cover


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
