"""Range and cross-field checks of a :class:`Config`; every error names key, value, rule and fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config.schema import ConfigError

if TYPE_CHECKING:
    from pipeline.config.schema import Config


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
    _check(p.max_restarts >= 0, "ppo.max_restarts", p.max_restarts, "must be >= 0", "use e.g. 3")
    for name in (
        "total_steps",
        "rollout_batch_size",
        "mini_batch_size",
        "ppo_epochs",
        "save_every",
        "keep_checkpoints",
    ):
        v = getattr(p, name)
        _check(v >= 1, f"ppo.{name}", v, "must be >= 1", "use a positive integer")
    _check(
        p.rollout_batch_size % p.mini_batch_size == 0,
        "ppo.mini_batch_size",
        p.mini_batch_size,
        f"must divide ppo.rollout_batch_size={p.rollout_batch_size}",
        "pick a divisor of the rollout batch size",
    )
    _check(
        p.mini_batch_size % lr_.num_ranks == 0,
        "learner.num_ranks",
        lr_.num_ranks,
        f"must divide ppo.mini_batch_size={p.mini_batch_size} (each rank takes an equal share)",
        "change learner.num_ranks or ppo.mini_batch_size",
    )
    _check(
        lr_.zero_stage in (0, 1, 2, 3),
        "learner.zero_stage",
        lr_.zero_stage,
        "DeepSpeed ZeRO stages are 0, 1, 2 and 3",
        "use 0-3",
    )
    _check(
        not lr_.offload or lr_.zero_stage >= 2,
        "learner.offload",
        lr_.offload,
        "optimizer offload needs ZeRO stage 2 or 3",
        "set learner.zero_stage=2 or offload=false",
    )
    _check(lr_.num_ranks >= 1, "learner.num_ranks", lr_.num_ranks, "must be >= 1", "use 1 or more")
    _check(r.num_workers >= 1, "rollout.num_workers", r.num_workers, "must be >= 1", "use 1 or more")
    _check(r.top_k >= 0, "rollout.top_k", r.top_k, "must be >= 0 (0 disables)", "use 20 (paper)")
    _check(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]", "use 1.0 (paper)")
    _check(r.temperature > 0, "rollout.temperature", r.temperature, "must be > 0", "use 0.9 (paper)")
    _check(
        1 <= r.min_new_tokens <= r.max_new_tokens,
        "rollout.min_new_tokens",
        r.min_new_tokens,
        f"must be in [1, rollout.max_new_tokens={r.max_new_tokens}]",
        "use 5 and 30 (paper)",
    )
    _check(
        cfg.reward.num_scorers >= 1,
        "reward.num_scorers",
        cfg.reward.num_scorers,
        "must be >= 1",
        "use 1 or more",
    )
    _check(
        all(w >= 0 for w in cfg.reward.weights) and sum(cfg.reward.weights) > 0,
        "reward.weights",
        cfg.reward.weights,
        "must be non-negative and not all zero",
        "use e.g. [1.0, 1.0, 1.0]",
    )
    split = cfg.data.epitome_split
    _check(
        all(f >= 0 for f in split) and abs(sum(split) - 1) < 1e-6 and split[0] > 0,
        "data.epitome_split",
        split,
        "fractions must be >= 0, train > 0, and sum to 1",
        "use [0.75, 0.05, 0.20]",
    )
    _check(
        cfg.data.history_turns >= 0,
        "data.history_turns",
        cfg.data.history_turns,
        "must be >= 0 (0 keeps all turns)",
        "use 0",
    )
    _check(
        cfg.data.source != "local" or (cfg.data.ed_path is not None and cfg.data.epitome_path is not None),
        "data.source",
        cfg.data.source,
        "'local' needs data.ed_path and data.epitome_path",
        "pass data.ed_path=DIR data.epitome_path=DIR (see `emprl data download`)",
    )
    bad_splits = set(cfg.data.splits) - {"train", "valid", "test"}
    _check(
        not bad_splits and "train" in cfg.data.splits,
        "data.splits",
        cfg.data.splits,
        "must include 'train' and only name train/valid/test",
        "use [train, valid]",
    )
    m = cfg.model
    _check(
        m.d_model % m.num_heads == 0 or m.name_or_path is not None,
        "model.num_heads",
        m.num_heads,
        f"must divide model.d_model={m.d_model}",
        "change one of them",
    )
    for name in ("max_source_len", "max_target_len", "vocab_size"):
        v = getattr(m, name)
        _check(v >= 1, f"model.{name}", v, "must be >= 1", "use a positive integer")
    i = cfg.identifiers
    _check(
        i.d_model % i.num_heads == 0,
        "identifiers.num_heads",
        i.num_heads,
        f"must divide identifiers.d_model={i.d_model}",
        "change one of them",
    )
    _check(0 <= i.dropout < 1, "identifiers.dropout", i.dropout, "must be in [0, 1)", "use 0.1")
    _check(i.num_workers >= 1, "identifiers.num_workers", i.num_workers, "must be >= 1", "use 1 or more")
    _check(
        i.batch_size % i.num_workers == 0,
        "identifiers.batch_size",
        i.batch_size,
        f"must be divisible by identifiers.num_workers={i.num_workers} (each worker takes an equal share)",
        "change identifiers.batch_size or identifiers.num_workers",
    )
    _check(
        i.zero_stage in (0, 1, 2, 3),
        "identifiers.zero_stage",
        i.zero_stage,
        "DeepSpeed ZeRO stages are 0, 1, 2 and 3",
        "use 0-3",
    )
    bad = [m for m in i.mechanisms if m not in ("ER", "IP", "EX")]
    _check(
        not bad and len(set(i.mechanisms)) == len(i.mechanisms) and bool(i.mechanisms),
        "identifiers.mechanisms",
        i.mechanisms,
        "must be distinct names among ER, IP, EX",
        "use [ER, IP, EX]",
    )
    for sec, obj in (("sft", cfg.sft), ("identifiers", i)):
        _check(obj.batch_size >= 1, f"{sec}.batch_size", obj.batch_size, "must be >= 1", "use 8")
        _check(obj.lr > 0, f"{sec}.lr", obj.lr, "must be > 0", "use the preset's value")
        _check(obj.epochs >= 1, f"{sec}.epochs", obj.epochs, "must be >= 1", "use 1 or more")
    _validate_sft(cfg)
    res = cfg.resources
    _check(res.torch_threads >= 1, "resources.torch_threads", res.torch_threads, "must be >= 1", "use 1")
    _check(
        0 < res.role_gpus <= 1,
        "resources.role_gpus",
        res.role_gpus,
        "must be in (0, 1]",
        "use 1 or e.g. 0.25",
    )
    for name in ("rollout_threads", "learner_threads"):
        value = getattr(res, name)
        _check(
            value is None or value >= 1,
            f"resources.{name}",
            value,
            "must be >= 1 or null",
            "use null (= resources.torch_threads) or the cores a role may use alone",
        )
    for name in ("rollout_cpus", "reward_cpus", "reference_cpus", "learner_cpus", "trainer_cpus"):
        v = getattr(res, name)
        _check(v >= 0, f"resources.{name}", v, "must be >= 0", "use a fraction like 0.5")


def _validate_sft(cfg: Config) -> None:
    s = cfg.sft
    _check(s.num_workers >= 1, "sft.num_workers", s.num_workers, "must be >= 1", "use 1 or more")
    _check(
        s.batch_size % s.num_workers == 0,
        "sft.batch_size",
        s.batch_size,
        f"must be divisible by sft.num_workers={s.num_workers} (each worker takes an equal share)",
        "change sft.batch_size or sft.num_workers",
    )
    _check(
        s.zero_stage in (0, 1, 2, 3),
        "sft.zero_stage",
        s.zero_stage,
        "DeepSpeed ZeRO stages are 0, 1, 2 and 3",
        "use 0-3 (3 also shards the parameters)",
    )
    _check(
        not s.offload or s.zero_stage >= 2,
        "sft.offload",
        s.offload,
        "optimizer offload needs ZeRO stage 2 or 3",
        "set sft.zero_stage=2 (or 3) or sft.offload=false",
    )
    if s.engine == "ddp":
        for key, value, default in (
            ("zero_stage", s.zero_stage, 0),
            ("precision", s.precision, "fp32"),
            ("offload", s.offload, False),
        ):
            _check(
                value == default,
                f"sft.{key}",
                value,
                "is a DeepSpeed setting and sft.engine='ddp'",
                f"set sft.engine=deepspeed or sft.{key}={str(default).lower()}",
            )
    _check(
        s.precision == "fp32" or cfg.resources.use_gpu,
        "sft.precision",
        s.precision,
        "bf16 and fp16 training need a GPU (resources.use_gpu=false)",
        "use sft.precision=fp32 on CPU, or set resources.use_gpu=true",
    )
    _check(0 <= s.warmup_ratio < 1, "sft.warmup_ratio", s.warmup_ratio, "must be in [0, 1)", "use 0.0")
    _check(s.weight_decay >= 0, "sft.weight_decay", s.weight_decay, "must be >= 0", "use 0.0")
    _check(s.max_grad_norm > 0, "sft.max_grad_norm", s.max_grad_norm, "must be > 0", "use 1.0")
    for name, fix in (
        ("group_batches", "use 50 (1 disables length grouping)"),
        ("eval_batch_size", "use 32"),
        ("keep_checkpoints", "use 2"),
    ):
        v = getattr(s, name)
        _check(v >= 1, f"sft.{name}", v, "must be >= 1", fix)
    _check(
        s.checkpoint_every >= 0,
        "sft.checkpoint_every",
        s.checkpoint_every,
        "must be >= 0 (0 checkpoints at epoch ends only)",
        "use 0 or a step count",
    )
    _check(s.num_samples >= 0, "sft.num_samples", s.num_samples, "must be >= 0", "use 5")
