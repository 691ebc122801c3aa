"""Range and cross-field checks of a :class:`Config`; every error names key, value, rule and fix."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pipeline.config.schema import ConfigError

if TYPE_CHECKING:
    from pipeline.config.schema import Config, EngineConfig, OptimizerConfig


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
    _check(p.max_grad_norm > 0, "ppo.max_grad_norm", p.max_grad_norm, "must be > 0", "use 1.0")
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
    weights = cfg.reward.weights.by_mechanism
    for mechanism, w in weights.items():
        leaf = f"reward.weights.{mechanism.lower()}"
        _check(
            math.isfinite(w) and w >= 0,
            leaf,
            w,
            "must be a finite number >= 0",
            f"use e.g. {leaf}=1.0 (paper), or 0 to leave {mechanism} out of the reward",
        )
    _check(
        sum(weights.values()) > 0,
        "reward.weights",
        {mechanism.lower(): w for mechanism, w in weights.items()},
        "must not all be zero (the reward would not depend on the response)",
        "set one of reward.weights.er, reward.weights.ip, reward.weights.ex above 0, e.g. reward.weights.er=1.0",
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
        _check(obj.num_workers >= 1, f"{sec}.num_workers", obj.num_workers, "must be >= 1", "use 1 or more")
        _check(
            obj.batch_size % obj.num_workers == 0,
            f"{sec}.batch_size",
            obj.batch_size,
            f"must be divisible by {sec}.num_workers={obj.num_workers} (each worker takes an equal share)",
            f"change {sec}.batch_size or {sec}.num_workers",
        )
        _check(obj.epochs >= 1, f"{sec}.epochs", obj.epochs, "must be >= 1", "use 1 or more")
        _validate_optimizer(f"{sec}.optimizer", obj.optimizer)
    _validate_engines(cfg)
    _validate_sft(cfg)
    _validate_serve(cfg)
    res = cfg.resources
    _check(res.torch_threads >= 1, "resources.torch_threads", res.torch_threads, "must be >= 1", "use 1")
    _check(
        0 < res.role_gpus <= 1,
        "resources.role_gpus",
        res.role_gpus,
        "must be in (0, 1]",
        "use 1 or e.g. 0.25",
    )
    _validate_gpus(cfg)
    _validate_weight_sync(cfg)
    for name in ("rollout_threads", "learner_threads", "reference_threads", "reward_threads"):
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
    _check(
        res.scale_up_wait_s >= 0,
        "resources.scale_up_wait_s",
        res.scale_up_wait_s,
        "must be >= 0",
        "use 0 on a fixed cluster, e.g. 900 on an autoscaling one",
    )


def _validate_optimizer(key: str, o: OptimizerConfig) -> None:
    _check(o.lr > 0, f"{key}.lr", o.lr, "must be > 0", "use the preset's value")
    _check(o.weight_decay >= 0, f"{key}.weight_decay", o.weight_decay, "must be >= 0", "use 0.0")
    _check(o.max_grad_norm > 0, f"{key}.max_grad_norm", o.max_grad_norm, "must be > 0", "use 1.0")
    _check(0 <= o.warmup_ratio < 1, f"{key}.warmup_ratio", o.warmup_ratio, "must be in [0, 1)", "use 0.0")


def _validate_engines(cfg: Config) -> None:
    """The rules every ``<section>.engine`` follows, then what each stage's loop supports."""
    for section in ("identifiers", "sft", "learner"):
        e: EngineConfig = getattr(cfg, section).engine
        key = f"{section}.engine"
        _check(
            e.zero_stage in (0, 1, 2, 3),
            f"{key}.zero_stage",
            e.zero_stage,
            "DeepSpeed ZeRO stages are 0, 1, 2 and 3",
            "use 0-3 (3 also shards the parameters)",
        )
        _check(
            not e.offload or e.zero_stage >= 2,
            f"{key}.offload",
            e.offload,
            "optimizer offload needs ZeRO stage 2 or 3",
            f"set {key}.zero_stage=2 (or 3) or {key}.offload=false",
        )
        if e.kind == "ddp":
            for name, default in (("zero_stage", 0), ("precision", "fp32"), ("offload", False)):
                value = getattr(e, name)
                _check(
                    value == default,
                    f"{key}.{name}",
                    value,
                    f"is a DeepSpeed setting and {key}.kind='ddp'",
                    f"set {key}.kind=deepspeed or {key}.{name}={str(default).lower()}",
                )
    i, s, le = cfg.identifiers.engine, cfg.sft.engine, cfg.learner.engine
    _check(
        i.zero_stage <= 2,
        "identifiers.engine.zero_stage",
        i.zero_stage,
        "the identifier loop reads the model's weights directly, which ZeRO-3 shards across ranks",
        "use identifiers.engine.zero_stage=0, 1 or 2",
    )
    _check(
        i.precision == "fp32",
        "identifiers.engine.precision",
        i.precision,
        "identifier training runs in fp32",
        "set identifiers.engine.precision=fp32",
    )
    _check(
        s.precision == "fp32" or cfg.resources.use_gpu,
        "sft.engine.precision",
        s.precision,
        "bf16 and fp16 training need a GPU (resources.use_gpu=false)",
        "use sft.engine.precision=fp32 on CPU, or set resources.use_gpu=true",
    )
    _check(
        le.kind == "deepspeed",
        "learner.engine.kind",
        le.kind,
        "the PPO learner runs DeepSpeed in its own process group (DDP needs a Ray Train stage)",
        "set learner.engine.kind=deepspeed",
    )
    _check(
        le.precision in ("fp32", "bf16"),
        "learner.engine.precision",
        le.precision,
        "the learner runs fp32 or bf16 autocast",
        "use learner.engine.precision=fp32 (paper) or bf16",
    )


def _validate_sft(cfg: Config) -> None:
    s = cfg.sft
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


def _validate_serve(cfg: Config) -> None:
    s = cfg.serve
    _check(1 <= s.port <= 65535, "serve.port", s.port, "must be a TCP port in 1..65535", "use 8000")
    _check(bool(s.host), "serve.host", s.host, "must not be empty", "use 127.0.0.1")
    for name, fix in (
        ("policy_replicas", "use 1"),
        ("identifier_replicas", "use 1"),
        ("torch_threads", "use 1 (threads x replicas <= cores)"),
        ("max_batch_size", "use 8"),
        ("max_body_bytes", "use 65536"),
        ("max_turns", "use 32"),
        ("max_text_chars", "use 2000"),
        ("max_candidates", "use 8"),
        ("max_choices", "use 4"),
        ("min_replicas", "use 1"),
    ):
        v = getattr(s, name)
        _check(v >= 1, f"serve.{name}", v, "must be >= 1", fix)
    for name in ("policy_cpus", "identifier_cpus", "policy_gpus", "identifier_gpus"):
        v = getattr(s, name)
        _check(v >= 0, f"serve.{name}", v, "must be >= 0", "use a fraction like 0.5")
    _check(
        s.batch_wait_timeout_s >= 0,
        "serve.batch_wait_timeout_s",
        s.batch_wait_timeout_s,
        "must be >= 0",
        "use 0.01",
    )
    _check(
        s.max_ongoing_requests >= s.max_batch_size,
        "serve.max_ongoing_requests",
        s.max_ongoing_requests,
        f"must be >= serve.max_batch_size={s.max_batch_size} (a replica never batches more requests "
        "than it has in flight)",
        f"set serve.max_ongoing_requests={2 * s.max_batch_size} or lower serve.max_batch_size",
    )
    _check(
        s.ingress_max_ongoing_requests >= s.max_ongoing_requests,
        "serve.ingress_max_ongoing_requests",
        s.ingress_max_ongoing_requests,
        f"must be >= serve.max_ongoing_requests={s.max_ongoing_requests} (the ingress holds every request "
        "a model replica works on)",
        f"set serve.ingress_max_ongoing_requests={4 * s.max_ongoing_requests}",
    )
    _check(
        s.max_queued_requests == -1 or s.max_queued_requests >= 1,
        "serve.max_queued_requests",
        s.max_queued_requests,
        "must be -1 (unbounded) or >= 1",
        "use 64",
    )
    _check(
        s.request_timeout_s > 0,
        "serve.request_timeout_s",
        s.request_timeout_s,
        "must be > 0",
        "use 30",
    )
    _check(
        s.max_replicas >= s.min_replicas,
        "serve.max_replicas",
        s.max_replicas,
        f"must be >= serve.min_replicas={s.min_replicas}",
        f"set serve.max_replicas={max(4, s.min_replicas)}",
    )
    if s.autoscaling:
        for name in ("policy_replicas", "identifier_replicas"):
            v = getattr(s, name)
            _check(
                s.min_replicas <= v <= s.max_replicas,
                f"serve.{name}",
                v,
                f"must lie in serve.min_replicas..serve.max_replicas={s.min_replicas}..{s.max_replicas} "
                "when serve.autoscaling (it is the initial count)",
                f"set serve.{name}={s.min_replicas}",
            )
    for name, fix in (
        ("target_ongoing_requests", "use 4"),
        ("health_check_period_s", "use 10"),
        ("health_check_timeout_s", "use 30"),
    ):
        v = getattr(s, name)
        _check(v > 0, f"serve.{name}", v, "must be > 0", fix)
    _check(
        s.api_key_env.isidentifier(),
        "serve.api_key_env",
        s.api_key_env,
        "must name an environment variable (letters, digits, '_'), not hold a key",
        "use EMPRL_API_KEY and export the key in that variable",
    )


def _validate_weight_sync(cfg: Config) -> None:
    le = cfg.learner
    _check(
        le.weight_sync in ("auto", "object_store", "collective"),
        "learner.weight_sync",
        le.weight_sync,
        "must be auto, object_store or collective",
        "use auto (collective on GPUs, object_store on CPU), object_store or collective",
    )
    _check(
        math.isfinite(le.weight_sync_bucket_mb) and le.weight_sync_bucket_mb > 0,
        "learner.weight_sync_bucket_mb",
        le.weight_sync_bucket_mb,
        "must be a number > 0 (MiB per broadcast bucket)",
        "use 256",
    )
    res = cfg.resources
    _check(
        res.frozen_precision in ("auto", "fp32", "bf16"),
        "resources.frozen_precision",
        res.frozen_precision,
        "T5 overflows in fp16 (activations exceed its range), so the reference policy and the identifiers "
        "cannot run in fp16"
        if res.frozen_precision == "fp16"
        else "must be auto, fp32 or bf16",
        "use auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32",
    )


SHARE_KEYS = {
    "rollout worker": "resources.rollout_gpus",
    "reward scorer": "resources.reward_gpus",
    "reference policy": "resources.reference_gpus",
    "learner": "resources.learner_gpus",
}


def pack_gpu_shares(shares: list[float], gpus: int) -> list[list[float]] | None:
    """First-fit decreasing of GPU ``shares`` onto ``gpus`` GPUs of capacity 1; ``None`` when they do not fit."""
    bins: list[list[float]] = [[] for _ in range(gpus)]
    for share in sorted(shares, reverse=True):
        for b in bins:
            if sum(b) + share <= 1.0 + 1e-9:
                b.append(share)
                break
        else:
            return None
    return bins


def _validate_gpus(cfg: Config) -> None:
    res = cfg.resources
    for key in ("rollout_gpus", "reward_gpus", "reference_gpus", "learner_gpus"):
        value = getattr(res, key)
        _check(
            value is None or 0 < value <= 1,
            f"resources.{key}",
            value,
            "must be in (0, 1] (a role runs on one GPU) or null",
            "use null (= resources.role_gpus), 1 or a fraction like 0.25",
        )
    _check(
        res.num_gpus is None or res.num_gpus >= 1,
        "resources.num_gpus",
        res.num_gpus,
        "must be >= 1 or null",
        "use null (every GPU of the node) or the GPUs the run may use",
    )
    if not res.use_gpu:
        return
    shares, counts = cfg.ppo_gpu_shares, cfg.ppo_role_counts
    _check(
        cfg.learner.num_ranks == 1 or shares["learner"] > 0.5,
        "resources.learner_gpus",
        shares["learner"],
        f"learner.num_ranks={cfg.learner.num_ranks} ranks talk over NCCL, which refuses two ranks on one GPU; "
        "a share of 0.5 or less lets Ray place two ranks on the same GPU",
        "set resources.learner_gpus=1 (or learner.num_ranks=1 to share a GPU with other roles)",
    )
    if res.num_gpus is None:
        return
    instances = [shares[role] for role, n in counts.items() for _ in range(n)]
    if pack_gpu_shares(instances, res.num_gpus) is None:
        parts = ", ".join(f"{n} {role} x {shares[role]:g} ({SHARE_KEYS[role]})" for role, n in counts.items())
        raise ConfigError(
            f"resources.num_gpus={res.num_gpus}: the PPO roles' GPU shares do not fit: {parts}; total "
            f"{sum(instances):g} GPUs, and the shares on one GPU may add up to at most 1. Fix: lower the "
            "shares or the worker counts (rollout.num_workers, reward.num_scorers, learner.num_ranks), or "
            "raise resources.num_gpus."
        )
