"""Range and cross-field checks of the config sections; every error names key, value, rule and fix.

One function per section (or group of sections a rule spans); :func:`pipeline.config.tree.validate` runs
them all, in this order, whenever a :class:`~pipeline.config.tree.Config` is built. The GPU-share rules are
in :mod:`pipeline.config.gpu_shares`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pipeline.config import schema
from pipeline.config.deployment import PINNABLE_ROLES, PLACEMENTS, ResourcesConfig, ServeConfig
from pipeline.config.gpu_shares import check_gpu_shares
from pipeline.config.schema import require


def check_ppo(p: schema.PPOConfig, learner: schema.LearnerConfig) -> None:
    """PPO's hyperparameters, and the batch split across the learner ranks."""
    require(0 < p.clip_ratio < 1, "ppo.clip_ratio", p.clip_ratio, "must be in (0, 1)", "use e.g. 0.2")
    require(p.value_clip > 0, "ppo.value_clip", p.value_clip, "must be > 0", "use e.g. 0.2")
    require(0 <= p.gamma <= 1, "ppo.gamma", p.gamma, "must be in [0, 1]", "use 1.0 (paper)")
    require(0 <= p.lam <= 1, "ppo.lam", p.lam, "must be in [0, 1]", "use 0.95 (paper)")
    require(p.kl_coef >= 0, "ppo.kl_coef", p.kl_coef, "must be >= 0", "use 0.2 (paper)")
    require(p.kl_target > 0, "ppo.kl_target", p.kl_target, "must be > 0", "use 6 (paper)")
    require(p.kl_horizon > 0, "ppo.kl_horizon", p.kl_horizon, "must be > 0", "use 10000 (paper)")
    require(p.max_grad_norm > 0, "ppo.max_grad_norm", p.max_grad_norm, "must be > 0", "use 1.0")
    require(p.max_restarts >= 0, "ppo.max_restarts", p.max_restarts, "must be >= 0", "use e.g. 3")
    counts = (
        "total_steps",
        "rollout_batch_size",
        "mini_batch_size",
        "ppo_epochs",
        "save_every",
        "keep_checkpoints",
    )
    _at_least(1, "ppo", p, dict.fromkeys(counts, "use a positive integer"))
    require(
        p.rollout_batch_size % p.mini_batch_size == 0,
        "ppo.mini_batch_size",
        p.mini_batch_size,
        f"must divide ppo.rollout_batch_size={p.rollout_batch_size}",
        "pick a divisor of the rollout batch size",
    )
    require(
        p.mini_batch_size % learner.num_ranks == 0,
        "learner.num_ranks",
        learner.num_ranks,
        f"must divide ppo.mini_batch_size={p.mini_batch_size} (each rank takes an equal share)",
        "change learner.num_ranks or ppo.mini_batch_size",
    )
    require(learner.num_ranks >= 1, "learner.num_ranks", learner.num_ranks, "must be >= 1", "use 1 or more")


def check_rollout(r: schema.RolloutConfig) -> None:
    """Sampling settings."""
    require(r.num_workers >= 1, "rollout.num_workers", r.num_workers, "must be >= 1", "use 1 or more")
    require(r.top_k >= 0, "rollout.top_k", r.top_k, "must be >= 0 (0 disables)", "use 20 (paper)")
    require(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]", "use 1.0 (paper)")
    require(r.temperature > 0, "rollout.temperature", r.temperature, "must be > 0", "use 0.9 (paper)")
    require(
        1 <= r.min_new_tokens <= r.max_new_tokens,
        "rollout.min_new_tokens",
        r.min_new_tokens,
        f"must be in [1, rollout.max_new_tokens={r.max_new_tokens}]",
        "use 5 and 30 (paper)",
    )


def check_reward(reward: schema.RewardConfig) -> None:
    """Scorer count and weights (finite, >= 0, not all zero)."""
    require(
        reward.num_scorers >= 1,
        "reward.num_scorers",
        reward.num_scorers,
        "must be >= 1",
        "use 1 or more",
    )
    weights = reward.weights.by_mechanism
    for mechanism, w in weights.items():
        leaf = f"reward.weights.{mechanism.lower()}"
        require(
            math.isfinite(w) and w >= 0,
            leaf,
            w,
            "must be a finite number >= 0",
            f"use e.g. {leaf}=1.0 (paper), or 0 to leave {mechanism} out of the reward",
        )
    require(
        sum(weights.values()) > 0,
        "reward.weights",
        {mechanism.lower(): w for mechanism, w in weights.items()},
        "must not all be zero (the reward would not depend on the response)",
        "set one of reward.weights.er, reward.weights.ip, reward.weights.ex above 0, e.g. reward.weights.er=1.0",
    )


def check_data(data: schema.DataConfig) -> None:
    """Data source, splits and history."""
    split = data.epitome_split
    require(
        all(f >= 0 for f in split) and abs(sum(split) - 1) < 1e-6 and split[0] > 0,
        "data.epitome_split",
        split,
        "fractions must be >= 0, train > 0, and sum to 1",
        "use [0.75, 0.05, 0.20]",
    )
    require(
        data.history_turns >= 0,
        "data.history_turns",
        data.history_turns,
        "must be >= 0 (0 keeps all turns)",
        "use 0",
    )
    require(
        data.source != "local" or (data.ed_path is not None and data.epitome_path is not None),
        "data.source",
        data.source,
        "'local' needs data.ed_path and data.epitome_path",
        "pass data.ed_path=DIR data.epitome_path=DIR (see `emprl data download`)",
    )
    bad_splits = set(data.splits) - {"train", "valid", "test"}
    require(
        not bad_splits and "train" in data.splits,
        "data.splits",
        data.splits,
        "must include 'train' and only name train/valid/test",
        "use [train, valid]",
    )


def check_model(m: schema.ModelConfig) -> None:
    """The policy's shape and lengths."""
    require(
        m.d_model % m.num_heads == 0 or m.name_or_path is not None,
        "model.num_heads",
        m.num_heads,
        f"must divide model.d_model={m.d_model}",
        "change one of them",
    )
    _at_least(
        1,
        "model",
        m,
        dict.fromkeys(("max_source_len", "max_target_len", "vocab_size"), "use a positive integer"),
    )


def check_identifiers(i: schema.IdentifiersConfig) -> None:
    """The identifiers' shape, dropout and mechanisms."""
    require(
        i.d_model % i.num_heads == 0,
        "identifiers.num_heads",
        i.num_heads,
        f"must divide identifiers.d_model={i.d_model}",
        "change one of them",
    )
    require(0 <= i.dropout < 1, "identifiers.dropout", i.dropout, "must be in [0, 1)", "use 0.1")
    bad = [m for m in i.mechanisms if m not in ("ER", "IP", "EX")]
    require(
        not bad and len(set(i.mechanisms)) == len(i.mechanisms) and bool(i.mechanisms),
        "identifiers.mechanisms",
        i.mechanisms,
        "must be distinct names among ER, IP, EX",
        "use [ER, IP, EX]",
    )


def check_trainer(sec: str, obj: schema.SFTConfig | schema.IdentifiersConfig) -> None:
    """The data-parallel training loop of ``sft`` or ``identifiers``: batch split, epochs, optimizer."""
    require(obj.batch_size >= 1, f"{sec}.batch_size", obj.batch_size, "must be >= 1", "use 8")
    require(obj.num_workers >= 1, f"{sec}.num_workers", obj.num_workers, "must be >= 1", "use 1 or more")
    require(
        obj.batch_size % obj.num_workers == 0,
        f"{sec}.batch_size",
        obj.batch_size,
        f"must be divisible by {sec}.num_workers={obj.num_workers} (each worker takes an equal share)",
        f"change {sec}.batch_size or {sec}.num_workers",
    )
    require(obj.epochs >= 1, f"{sec}.epochs", obj.epochs, "must be >= 1", "use 1 or more")
    _check_optimizer(f"{sec}.optimizer", obj.optimizer)


def _check_optimizer(key: str, o: schema.OptimizerConfig) -> None:
    require(o.lr > 0, f"{key}.lr", o.lr, "must be > 0", "use the preset's value")
    require(o.weight_decay >= 0, f"{key}.weight_decay", o.weight_decay, "must be >= 0", "use 0.0")
    require(o.max_grad_norm > 0, f"{key}.max_grad_norm", o.max_grad_norm, "must be > 0", "use 1.0")
    require(0 <= o.warmup_ratio < 1, f"{key}.warmup_ratio", o.warmup_ratio, "must be in [0, 1)", "use 0.0")


def check_engines(
    identifiers: schema.EngineConfig, sft: schema.EngineConfig, learner: schema.EngineConfig, *, use_gpu: bool
) -> None:
    """The rules every ``<section>.engine`` follows, then what each stage's loop supports."""
    for section, e in (("identifiers", identifiers), ("sft", sft), ("learner", learner)):
        key = f"{section}.engine"
        require(
            e.zero_stage in (0, 1, 2, 3),
            f"{key}.zero_stage",
            e.zero_stage,
            "DeepSpeed ZeRO stages are 0, 1, 2 and 3",
            "use 0-3 (3 also shards the parameters)",
        )
        require(
            not e.offload or e.zero_stage >= 2,
            f"{key}.offload",
            e.offload,
            "optimizer offload needs ZeRO stage 2 or 3",
            f"set {key}.zero_stage=2 (or 3) or {key}.offload=false",
        )
        if e.kind == "ddp":
            for name, default in (("zero_stage", 0), ("precision", "fp32"), ("offload", False)):
                value = getattr(e, name)
                require(
                    value == default,
                    f"{key}.{name}",
                    value,
                    f"is a DeepSpeed setting and {key}.kind='ddp'",
                    f"set {key}.kind=deepspeed or {key}.{name}={str(default).lower()}",
                )
    i, s, le = identifiers, sft, learner
    require(
        i.zero_stage <= 2,
        "identifiers.engine.zero_stage",
        i.zero_stage,
        "the identifier loop reads the model's weights directly, which ZeRO-3 shards across ranks",
        "use identifiers.engine.zero_stage=0, 1 or 2",
    )
    require(
        i.precision == "fp32",
        "identifiers.engine.precision",
        i.precision,
        "identifier training runs in fp32",
        "set identifiers.engine.precision=fp32",
    )
    require(
        s.precision == "fp32" or use_gpu,
        "sft.engine.precision",
        s.precision,
        "bf16 and fp16 training need a GPU (resources.use_gpu=false)",
        "use sft.engine.precision=fp32 on CPU, or set resources.use_gpu=true",
    )
    require(
        le.kind == "deepspeed",
        "learner.engine.kind",
        le.kind,
        "the PPO learner runs DeepSpeed in its own process group (DDP needs a Ray Train stage)",
        "set learner.engine.kind=deepspeed",
    )
    require(
        le.precision in ("fp32", "bf16"),
        "learner.engine.precision",
        le.precision,
        "the learner runs fp32 or bf16 autocast",
        "use learner.engine.precision=fp32 (paper) or bf16",
    )


def check_sft(s: schema.SFTConfig) -> None:
    """SFT's loop settings."""
    fixes = {
        "group_batches": "use 50 (1 disables length grouping)",
        "eval_batch_size": "use 32",
        "keep_checkpoints": "use 2",
    }
    _at_least(1, "sft", s, fixes)
    require(
        s.checkpoint_every >= 0,
        "sft.checkpoint_every",
        s.checkpoint_every,
        "must be >= 0 (0 checkpoints at epoch ends only)",
        "use 0 or a step count",
    )
    require(s.num_samples >= 0, "sft.num_samples", s.num_samples, "must be >= 0", "use 5")


def check_serve(s: ServeConfig) -> None:
    """The HTTP service: port, limits, replicas and autoscaling."""
    require(1 <= s.port <= 65535, "serve.port", s.port, "must be a TCP port in 1..65535", "use 8000")
    require(bool(s.host), "serve.host", s.host, "must not be empty", "use 127.0.0.1")
    locations = ("EveryNode", "HeadOnly", "Disabled")
    require(
        s.proxy_location in locations,
        "serve.proxy_location",
        s.proxy_location,
        f"must be one of {', '.join(locations)}",
        "use EveryNode",
    )
    counts = {
        "policy_replicas": "use 1",
        "identifier_replicas": "use 1",
        "torch_threads": "use 1 (threads x replicas <= cores)",
        "max_batch_size": "use 8",
        "max_body_bytes": "use 65536",
        "max_turns": "use 32",
        "max_text_chars": "use 2000",
        "max_candidates": "use 8",
        "max_choices": "use 4",
        "min_replicas": "use 1",
    }
    _at_least(1, "serve", s, counts)
    shares = ("policy_cpus", "identifier_cpus", "policy_gpus", "identifier_gpus")
    _at_least(0, "serve", s, dict.fromkeys(shares, "use a fraction like 0.5"))
    require(
        s.batch_wait_timeout_s >= 0,
        "serve.batch_wait_timeout_s",
        s.batch_wait_timeout_s,
        "must be >= 0",
        "use 0.01",
    )
    require(
        s.max_ongoing_requests >= s.max_batch_size,
        "serve.max_ongoing_requests",
        s.max_ongoing_requests,
        f"must be >= serve.max_batch_size={s.max_batch_size} (a replica never batches more requests "
        "than it has in flight)",
        f"set serve.max_ongoing_requests={2 * s.max_batch_size} or lower serve.max_batch_size",
    )
    require(
        s.ingress_max_ongoing_requests >= s.max_ongoing_requests,
        "serve.ingress_max_ongoing_requests",
        s.ingress_max_ongoing_requests,
        f"must be >= serve.max_ongoing_requests={s.max_ongoing_requests} (the ingress holds every request "
        "a model replica works on)",
        f"set serve.ingress_max_ongoing_requests={4 * s.max_ongoing_requests}",
    )
    require(
        s.max_queued_requests == -1 or s.max_queued_requests >= 1,
        "serve.max_queued_requests",
        s.max_queued_requests,
        "must be -1 (unbounded) or >= 1",
        "use 64",
    )
    require(
        s.request_timeout_s > 0,
        "serve.request_timeout_s",
        s.request_timeout_s,
        "must be > 0",
        "use 30",
    )
    require(
        s.max_replicas >= s.min_replicas,
        "serve.max_replicas",
        s.max_replicas,
        f"must be >= serve.min_replicas={s.min_replicas}",
        f"set serve.max_replicas={max(4, s.min_replicas)}",
    )
    if s.autoscaling:
        for name in ("policy_replicas", "identifier_replicas"):
            v = getattr(s, name)
            require(
                s.min_replicas <= v <= s.max_replicas,
                f"serve.{name}",
                v,
                f"must lie in serve.min_replicas..serve.max_replicas={s.min_replicas}..{s.max_replicas} "
                "when serve.autoscaling (it is the initial count)",
                f"set serve.{name}={s.min_replicas}",
            )
    positive = {
        "target_ongoing_requests": "use 4",
        "health_check_period_s": "use 10",
        "health_check_timeout_s": "use 30",
    }
    _above(0, "serve", s, positive)
    require(
        s.api_key_env.isidentifier(),
        "serve.api_key_env",
        s.api_key_env,
        "must name an environment variable (letters, digits, '_'), not hold a key",
        "use EMPRL_API_KEY and export the key in that variable",
    )


def check_resources(
    res: ResourcesConfig, learner: schema.LearnerConfig, shares: dict[str, float], counts: dict[str, int]
) -> None:
    """Threads, CPUs and GPU shares of the roles (``shares`` and ``counts`` per PPO role), and how weights
    reach the rollout workers."""
    require(res.torch_threads >= 1, "resources.torch_threads", res.torch_threads, "must be >= 1", "use 1")
    require(
        0 < res.role_gpus <= 1,
        "resources.role_gpus",
        res.role_gpus,
        "must be in (0, 1]",
        "use 1 or e.g. 0.25",
    )
    check_gpu_shares(res, shares, counts)
    _check_weight_sync(learner, res)
    for name in ("rollout_threads", "learner_threads", "reference_threads", "reward_threads"):
        value = getattr(res, name)
        require(
            value is None or value >= 1,
            f"resources.{name}",
            value,
            "must be >= 1 or null",
            "use null (= resources.torch_threads) or the cores a role may use alone",
        )
    cpus = ("rollout_cpus", "reward_cpus", "reference_cpus", "learner_cpus", "trainer_cpus")
    _at_least(0, "resources", res, dict.fromkeys(cpus, "use a fraction like 0.5"))
    require(
        res.scale_up_wait_s >= 0,
        "resources.scale_up_wait_s",
        res.scale_up_wait_s,
        "must be >= 0",
        "use 0 on a fixed cluster, e.g. 900 on an autoscaling one",
    )
    require(
        res.node_loss_wait_s >= 0,
        "resources.node_loss_wait_s",
        res.node_loss_wait_s,
        "must be >= 0",
        "use 0 to stop at once, or about the time a replacement node takes to start, e.g. 300",
    )
    require(
        res.placement in PLACEMENTS,
        "resources.placement",
        res.placement,
        f"must be one of {', '.join(PLACEMENTS)}",
        "use PACK (the default) unless roles must share or avoid a node",
    )
    for item in filter(None, (part.strip() for part in res.role_nodes.split(","))):
        role, eq, resource = item.partition("=")
        require(
            bool(eq) and role.strip() in PINNABLE_ROLES and bool(resource.strip()),
            "resources.role_nodes",
            item,
            f"each entry is ROLE=RESOURCE with ROLE one of {', '.join(PINNABLE_ROLES)}",
            'write e.g. "learner=big_gpu,rollout worker=small_gpu"',
        )


def _check_weight_sync(le: schema.LearnerConfig, res: ResourcesConfig) -> None:
    require(
        le.weight_sync in ("auto", "object_store", "collective"),
        "learner.weight_sync",
        le.weight_sync,
        "must be auto, object_store or collective",
        "use auto (collective on GPUs, object_store on CPU), object_store or collective",
    )
    require(
        math.isfinite(le.weight_sync_bucket_mb) and le.weight_sync_bucket_mb > 0,
        "learner.weight_sync_bucket_mb",
        le.weight_sync_bucket_mb,
        "must be a number > 0 (MiB per broadcast bucket)",
        "use 256",
    )
    require(
        res.frozen_precision in ("auto", "fp32", "bf16"),
        "resources.frozen_precision",
        res.frozen_precision,
        "T5 overflows in fp16 (activations exceed its range), so the reference policy and the identifiers "
        "cannot run in fp16"
        if res.frozen_precision == "fp16"
        else "must be auto, fp32 or bf16",
        "use auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32",
    )


def _at_least(floor: int, section: str, obj: object, fixes: Mapping[str, str]) -> None:
    """Each field named in ``fixes`` of ``obj`` (the ``section``) is ``>= floor``, else the error shows its fix."""
    for name, fix in fixes.items():
        v = getattr(obj, name)
        require(v >= floor, f"{section}.{name}", v, f"must be >= {floor}", fix)


def _above(floor: int, section: str, obj: object, fixes: Mapping[str, str]) -> None:
    """Each field named in ``fixes`` of ``obj`` (the ``section``) is ``> floor``, else the error shows its fix."""
    for name, fix in fixes.items():
        v = getattr(obj, name)
        require(v > floor, f"{section}.{name}", v, f"must be > {floor}", fix)
