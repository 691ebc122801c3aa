"""The configuration schema: one frozen dataclass per section, a docstring per field, and :class:`ConfigError`.

Defaults here are the paper's (Ma et al., EmpRL) wherever the paper states one. The resources and serve
sections live in :mod:`pipeline.config.deployment`; the root :class:`~pipeline.config.tree.Config` that
holds every section (and validates them together) in :mod:`pipeline.config.tree`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MECHANISMS: tuple[str, str, str] = ("ER", "IP", "EX")
"""EPITOME mechanisms: emotional reactions, interpretations, explorations."""

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A configuration key is unknown, mistyped or inconsistent with another key."""


def require(ok: bool, key: str, value: object, rule: str, fix: str) -> None:
    """Raise a :class:`ConfigError` that names ``key``, its ``value``, the ``rule`` and the ``fix`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}. Fix: {fix}.")


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
    """``demo`` (the project's own small demo set, written on first use) or ``local`` (the
    EmpatheticDialogues and EPITOME files under ``ed_path`` / ``epitome_path``; fetch them
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
class OptimizerConfig:
    """AdamW with gradient clipping and a linear warm-up then linear decay to 0 (identifier training, SFT).

    Each training section has its own copy with its own defaults (``identifiers.optimizer``,
    ``sft.optimizer``); the PPO learner's optimiser is set by ``ppo.lr`` and ``ppo.max_grad_norm``.
    """

    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay (never applied to biases and norm weights)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm, applied on every update."""
    warmup_ratio: float = 0.0
    """Fraction of the updates with a linear warm-up from 0 to ``lr``; the rest decay linearly to 0."""


@dataclass(frozen=True)
class EngineConfig:
    """The data-parallel training engine (identifier training, SFT, the PPO learner).

    Each training section has its own copy with its own defaults (``identifiers.engine``,
    ``sft.engine``, ``learner.engine``): the stages run at different times with different scales.
    """

    kind: Literal["ddp", "deepspeed"] = "deepspeed"
    """``deepspeed`` (ZeRO 0-3; gloo on CPU, NCCL on GPU) or ``ddp`` (PyTorch DDP; Ray Train stages only)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage, 0 to 3 (3 shards the parameters too; SFT and the PPO learner only)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """``fp32`` (the paper's setting), or DeepSpeed mixed precision ``bf16`` / ``fp16`` (SFT, on GPU).
    The PPO learner's ``bf16`` instead runs its forward passes under ``torch.autocast(bfloat16)``
    while weights, gradients and Adam state stay float32 (~1.8x faster updates on CPUs with
    AVX512-BF16/AMX and on GPUs)."""
    offload: bool = False
    """Offload optimizer state to CPU memory (DeepSpeed ZeRO 2 and 3)."""


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
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-5, weight_decay=0.01))
    """AdamW settings (lr 2e-5, weight decay 0.01, no warm-up, linear decay to 0)."""
    num_workers: int = 1
    """Ray Train data-parallel workers per mechanism."""
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(kind="ddp"))
    """Engine of the training workers (PyTorch DDP by default; DeepSpeed ZeRO 0-2, fp32)."""
    mechanisms: tuple[str, ...] = ("ER", "IP", "EX")
    """Mechanisms to train (all three for the reward)."""


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning of the initial policy (MLE on ED, context → listener response).

    Sources and targets are cut to ``model.max_source_len`` / ``model.max_target_len``. The
    engine settings have the shape of ``learner.engine`` but are SFT's own: SFT runs before PPO,
    alone on the cluster, often with more workers than the PPO learner.
    """

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW settings (paper: lr 1e-4, linear decay to 0, no warm-up, no weight decay)."""
    epochs: int = 3
    """Epochs (paper: 3); the best epoch by validation loss is exported."""
    batch_size: int = 8
    """Global batch size, split evenly across ``num_workers`` (paper: 8)."""
    num_workers: int = 1
    """Ray Train data-parallel workers (``resources.trainer_cpus`` CPUs or one GPU each)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Engine of the training workers (DeepSpeed by default; ZeRO 0-3, any precision on GPU)."""
    group_batches: int = 50
    """Global batches per length-grouped mega-batch (sorted by length, then batch order
    shuffled); 1 gives plain random batches."""
    eval_batch_size: int = 32
    """Validation examples per forward pass on each worker."""
    checkpoint_every: int = 0
    """Also checkpoint every this many steps inside an epoch (0: only at epoch ends)."""
    keep_checkpoints: int = 2
    """Most recent Ray Train checkpoints kept (each holds the best weights so far too)."""
    num_samples: int = 5
    """Validation contexts (the first ones) answered by sampling after every epoch."""


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
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16`` samples under ``torch.autocast(bfloat16)`` (faster on recent CPUs and GPUs). PPO
    stays exact: the learner recomputes the old log-probabilities of the sampled tokens."""


@dataclass(frozen=True)
class RewardWeights:
    """Per-mechanism weights w_m of the empathy score (paper: all 1)."""

    er: float = 1.0
    """Weight w_ER of emotional reactions (paper: 1)."""
    ip: float = 1.0
    """Weight w_IP of interpretations (paper: 1)."""
    ex: float = 1.0
    """Weight w_EX of explorations (paper: 1)."""

    @property
    def by_mechanism(self) -> dict[str, float]:
        """``{"ER": w_ER, "IP": w_IP, "EX": w_EX}``, in :data:`MECHANISMS` order."""
        return {m: float(getattr(self, m.lower())) for m in MECHANISMS}


@dataclass(frozen=True)
class RewardConfig:
    """Turning identifier outputs into PPO scores."""

    form: Literal["exp_neg_ce", "neg_ce", "hit_rate"] = "exp_neg_ce"
    """``exp_neg_ce``: r = exp(-Σ w_m CE_m) (paper); ``neg_ce``: r = -Σ w_m CE_m;
    ``hit_rate``: weighted fraction of mechanisms whose argmax hits the gold level."""
    weights: RewardWeights = field(default_factory=RewardWeights)
    """Per-mechanism weights, one key each: ``reward.weights.er`` / ``.ip`` / ``.ex`` (paper: all 1)."""
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
    old_logprobs: Literal["auto", "rollout", "learner"] = "auto"
    """Where PPO's old log-probabilities and values come from. ``rollout``: the rollout workers
    compute them while sampling (the same weights as the learner's: the workers always sample with
    the latest published version), saving the learner a forward pass over the batch; ``learner``:
    the learner recomputes them (trl's way). Both are the same quantities up to float rounding; the
    gap is logged as ``ppo/first_ratio_gap`` (the largest ``|π/π_old − 1|`` over the first mini-
    batch, before any update). ``auto``: ``rollout`` when the sampler and the learner both run in
    fp32, else ``learner``."""
    save_every: int = 100
    """Checkpoint every this many iterations (and after the last)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest removed first)."""
    max_restarts: int = 3
    """Restarts of failed rollout workers or reward scorers, and learner recoveries from the last
    checkpoint, before the run fails."""


@dataclass(frozen=True)
class LearnerConfig:
    """The DeepSpeed learner group."""

    num_ranks: int = 1
    """Data-parallel learner ranks."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """DeepSpeed settings of the learner (ZeRO 0-3, ``fp32`` or autocast ``bf16``); its learning
    rate and clipping are ``ppo.lr`` and ``ppo.max_grad_norm``."""
    weight_sync: Literal["auto", "object_store", "collective"] = "auto"
    """How new weights reach the rollout workers after each update. ``object_store``: learner rank 0
    puts the policy and value head in Ray's object store once and every worker loads that reference.
    ``collective``: learner rank 0 and the rollout workers form their own torch.distributed group
    (separate from the learner ranks' DeepSpeed group) and rank 0 broadcasts the weights in buckets
    straight into the workers' parameters: NCCL when every member has its own GPU, else gloo (CPU,
    or roles sharing one GPU, which NCCL refuses). ``auto``: ``collective`` with
    ``resources.use_gpu``, else ``object_store``."""
    weight_sync_bucket_mb: float = 256.0
    """Largest bucket of the ``collective`` broadcast in MiB: weights are flattened into buckets of at
    most this size (a larger tensor travels alone), one broadcast per bucket."""


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
