"""Config loader: precedence, unknown keys, wrong types, cross-field validation, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    MECHANISMS,
    Config,
    ConfigError,
    RewardWeights,
    load_config,
    preset_path,
    save_config,
)


def test_defaults_are_the_paper_method_values() -> None:
    cfg = Config()
    assert (cfg.ppo.clip_ratio, cfg.ppo.value_clip, cfg.ppo.vf_coef) == (0.2, 0.2, 0.1)
    assert (cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.lr) == (1.0, 0.95, 1e-5)
    assert (cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon) == (0.2, 6.0, 10000)
    assert (cfg.ppo.rollout_batch_size, cfg.ppo.mini_batch_size, cfg.ppo.ppo_epochs) == (32, 8, 4)
    assert (cfg.rollout.top_k, cfg.rollout.temperature, cfg.rollout.top_p) == (20, 0.9, 1.0)
    assert (cfg.rollout.min_new_tokens, cfg.rollout.max_new_tokens) == (5, 30)
    assert cfg.ppo_minibatches_per_epoch == 4


def test_precedence_defaults_then_preset_then_overrides(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"ppo": {"clip_ratio": 0.3, "lam": 0.9}, "model": {"d_model": 64}}))
    cfg = load_config(preset, ["ppo.clip_ratio=0.1"])
    assert cfg.ppo.clip_ratio == 0.1  # override beats preset
    assert cfg.ppo.lam == 0.9  # preset beats default
    assert cfg.ppo.gamma == 1.0  # default kept
    assert cfg.model.d_model == 64


def test_named_presets_load() -> None:
    local, paper = load_config("local"), load_config("paper")
    assert local.data.source == "demo" and local.model.name_or_path is None
    assert paper.model.name_or_path == "t5-base" and paper.identifiers.encoder == "t5-base"
    assert (paper.sft.optimizer.lr, paper.sft.epochs, paper.sft.batch_size) == (1e-4, 3, 8)
    assert (paper.model.max_source_len, paper.model.max_target_len) == (200, 50)
    assert paper.ppo.total_steps == 1600 and paper.ppo.max_grad_norm == 1.0


def test_unknown_key_names_the_key_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"ppo\.clip_ratoi.*did you mean 'clip_ratio'"):
        load_config("local", ["ppo.clip_ratoi=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nosuch'"):
        load_config("local", ["nosuch.key=1"])


def test_unknown_key_in_preset(tmp_path: Path) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text("ppo:\n  kl_cof: 0.1\n")
    with pytest.raises(ConfigError, match=r"ppo\.kl_cof"):
        load_config(preset)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("ppo.clip_ratio=abc", r"ppo\.clip_ratio='abc': expected a number"),
        ("ppo.total_steps=1.5", r"ppo\.total_steps=1\.5: expected an integer"),
        ("reward.normalize_scores=maybe", r"reward\.normalize_scores='maybe': expected true or false"),
        ("ppo.kl_mode=sometimes", r"ppo\.kl_mode='sometimes': must be one of \['adaptive', 'fixed'\]"),
        ("reward.weights.er=abc", r"reward\.weights\.er='abc': expected a number"),
        (
            "reward.weights=[1, 2, 3]",
            r"reward\.weights=\[1, 2, 3\]: .* section with keys \['er', 'ip', 'ex'\]",
        ),
        ("reward.weights.er.x=1", r"reward\.weights\.er is a value, not a section"),
        ("model.vocab_size=true", r"model\.vocab_size=True: expected an integer"),
    ],
)
def test_wrong_types_name_key_and_value(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config("local", [override])


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["ppo.clip_ratio=1.5"], r"ppo\.clip_ratio=1\.5: must be in \(0, 1\)"),
        (["ppo.rollout_batch_size=32", "ppo.mini_batch_size=6"], r"must divide ppo\.rollout_batch_size=32"),
        (["learner.num_ranks=3"], r"learner\.num_ranks=3: must divide ppo\.mini_batch_size=8"),
        (
            ["learner.engine.zero_stage=4"],
            r"learner\.engine\.zero_stage=4: DeepSpeed ZeRO stages are 0, 1, 2 and 3",
        ),
        (
            ["learner.engine.offload=true"],
            r"learner\.engine\.offload=True: optimizer offload needs ZeRO stage 2 or 3",
        ),
        (["learner.engine.kind=ddp"], r"learner\.engine\.kind='ddp': the PPO learner runs DeepSpeed"),
        (
            ["learner.engine.precision=fp16"],
            r"learner\.engine\.precision='fp16': the learner runs fp32 or bf16",
        ),
        (
            ["identifiers.engine.kind=deepspeed", "identifiers.engine.zero_stage=3"],
            r"identifiers\.engine\.zero_stage=3: the identifier loop reads the model's weights directly",
        ),
        (["identifiers.engine.zero_stage=1"], r"identifiers\.engine\.zero_stage=1: is a DeepSpeed setting"),
        (["identifiers.optimizer.lr=0"], r"identifiers\.optimizer\.lr=0\.0: must be > 0"),
        (["sft.optimizer.warmup_ratio=1.0"], r"sft\.optimizer\.warmup_ratio=1\.0: must be in \[0, 1\)"),
        (["sft.optimizer.max_grad_norm=0"], r"sft\.optimizer\.max_grad_norm=0\.0: must be > 0"),
        (["ppo.max_grad_norm=-1"], r"ppo\.max_grad_norm=-1\.0: must be > 0"),
        (
            ["rollout.min_new_tokens=40"],
            r"rollout\.min_new_tokens=40: must be in \[1, rollout\.max_new_tokens=30\]",
        ),
        (["data.source=local"], r"'local' needs data\.ed_path and data\.epitome_path"),
        (["data.epitome_split=[0.5, 0.2, 0.2]"], r"sum to 1"),
        (["reward.weights.ip=-0.5"], r"reward\.weights\.ip=-0\.5: must be a finite number >= 0"),
        (["reward.weights.ex=.nan"], r"reward\.weights\.ex=nan: must be a finite number >= 0"),
        (
            ["reward.weights.er=0", "reward.weights.ip=0", "reward.weights.ex=0"],
            r"reward\.weights=\{'er': 0\.0, 'ip': 0\.0, 'ex': 0\.0\}: must not all be zero.*"
            r"Fix: set one of reward\.weights\.er, reward\.weights\.ip, reward\.weights\.ex above 0",
        ),
    ],
)
def test_cross_field_validation(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config("local", overrides)
    assert "Fix:" in str(info.value)


def test_engine_and_optimizer_sections_keep_each_stage_defaults() -> None:
    cfg = Config()
    assert (cfg.identifiers.optimizer.lr, cfg.identifiers.optimizer.weight_decay) == (2e-5, 0.01)
    assert (cfg.identifiers.engine.kind, cfg.identifiers.engine.zero_stage) == ("ddp", 0)
    assert (cfg.sft.optimizer.lr, cfg.sft.optimizer.weight_decay, cfg.sft.optimizer.warmup_ratio) == (
        1e-4,
        0.0,
        0.0,
    )
    assert (cfg.sft.engine.kind, cfg.sft.engine.precision, cfg.sft.engine.offload) == (
        "deepspeed",
        "fp32",
        False,
    )
    assert (cfg.learner.engine.kind, cfg.learner.engine.zero_stage, cfg.learner.engine.precision) == (
        "deepspeed",
        0,
        "fp32",
    )
    assert cfg.ppo.lr == 1e-5  # the learner's learning rate stays PPO's
    # a preset that sets one key of a nested section keeps the section's other defaults
    paper = load_config("paper")
    assert (paper.identifiers.optimizer.lr, paper.identifiers.optimizer.weight_decay) == (2e-5, 0.01)
    assert (paper.sft.engine.zero_stage, paper.learner.engine.zero_stage) == (2, 2)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("sft.lr", "sft.optimizer.lr"),
        ("sft.zero_stage", "sft.engine.zero_stage"),
        ("identifiers.weight_decay", "identifiers.optimizer.weight_decay"),
        ("learner.precision", "learner.engine.precision"),
    ],
)
def test_a_moved_key_names_its_new_key(old: str, new: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"unknown config key '{old}': it is now '{new}'"):
        load_config("local", [f"{old}=1"])
    section, leaf = old.split(".")
    preset = tmp_path / "old.yaml"
    preset.write_text(yaml.safe_dump({section: {leaf: 1}}))
    with pytest.raises(ConfigError, match=rf"it is now '{new}'"):
        load_config(preset)


def test_malformed_override_and_unknown_preset() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config("local", ["ppo.clip_ratio"])
    with pytest.raises(ConfigError, match=r"unknown preset .nope.*local.*paper"):
        preset_path("nope")


def test_config_is_frozen() -> None:
    cfg = load_config("local")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ppo.clip_ratio = 0.5  # type: ignore[misc]


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config("paper", ["reward.weights.ip=0.5", "reward.weights.ex=2.0", "ppo.kl_mode=fixed"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_with_overrides_is_a_tune_trial() -> None:
    base = load_config("local")
    trial = base.with_overrides({"ppo.kl_coef": 0.05, "reward.weights.er": 2.0})
    assert trial.ppo.kl_coef == 0.05 and trial.reward.weights == RewardWeights(er=2.0)
    # a mapping for a section updates the keys it names and keeps the others
    again = trial.with_overrides({"reward.weights": {"ex": 0.5}})
    assert again.reward.weights == RewardWeights(er=2.0, ip=1.0, ex=0.5)
    assert base.ppo.kl_coef == 0.2  # the base is untouched
    with pytest.raises(ConfigError, match=r"ppo\.kl_coef=-1"):
        base.with_overrides({"ppo.kl_coef": -1})


def test_exponent_without_dot_is_a_number() -> None:
    assert load_config("local", ["identifiers.optimizer.lr=5e-5"]).identifiers.optimizer.lr == 5e-5


def test_reward_weights_by_name_from_yaml_and_overrides(tmp_path: Path) -> None:
    preset = tmp_path / "w.yaml"
    preset.write_text("reward:\n  weights: {er: 2.0, ex: 0.0}\n")
    weights = load_config(preset).reward.weights
    assert weights == RewardWeights(er=2.0, ip=1.0, ex=0.0)  # ip keeps its default
    assert weights.by_mechanism == {"ER": 2.0, "IP": 1.0, "EX": 0.0}
    assert list(weights.by_mechanism) == list(MECHANISMS)
    assert load_config("paper", ["reward.weights.ex=0.5"]).reward.weights == RewardWeights(ex=0.5)
    assert load_config("local", ["reward.weights.ip=3"]).reward.weights.ip == 3.0  # int → float


def test_reward_weights_unknown_leaf_and_old_list_form(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'reward\.weights\.xx'; valid keys here"):
        load_config("local", ["reward.weights.xx=1"])
    with pytest.raises(ConfigError, match=r"reward\.weights\.eex.*did you mean 'ex'"):
        load_config("local", ["reward.weights.eex=1"])
    old = tmp_path / "old.yaml"
    old.write_text("reward:\n  weights: [1.0, 1.0, 1.0]\n")
    with pytest.raises(ConfigError, match=r"reward\.weights=\[1\.0, 1\.0, 1\.0\]: .*Fix: set its keys"):
        load_config(old)


@pytest.mark.parametrize(
    ("overrides", "in_process", "learner"),
    [
        ([], True, True),  # the local preset's
        (["resources.in_process_roles=false"], False, False),
        (["resources.use_gpu=true", "resources.num_gpus=1", "resources.role_gpus=0.25"], False, False),
        (["learner.weight_sync=collective"], False, False),
        (["resources.role_nodes=reference policy=node_b"], False, False),
        (["resources.role_nodes=learner=node_b"], True, False),  # the three in-process, the learner pinned
        (["learner.num_ranks=2"], True, False),  # two learner ranks are two processes
    ],
)
def test_in_process_roles_only_where_the_driver_can_host_them(
    overrides: list[str], in_process: bool, learner: bool
) -> None:
    """The rollout, reward and reference roles run in the driver's process only on the CPU, with the
    object-store weight sync and none of them pinned to a node; the learner as well only with one rank,
    not pinned; elsewhere they stay actors."""
    cfg = load_config("local", overrides)
    assert (cfg.in_process_roles, cfg.in_process_learner) == (in_process, learner)
