"""GPU-facing settings: weight sync, frozen-model precision, per-role GPU shares, the sized paper presets
and the ``base:`` key of presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actors.cluster.placement import ppo_bundles, total
from pipeline.config import Config, ConfigError, load_config
from pipeline.config.deployment import ResourcesConfig
from pipeline.config.gpu_shares import pack_gpu_shares
from pipeline.config.schema import LearnerConfig

pytestmark = pytest.mark.unit


def test_weight_sync_auto_is_collective_on_gpus_and_object_store_on_cpu() -> None:
    assert load_config("local").weight_sync == "object_store"
    assert load_config("local", ["resources.use_gpu=true"]).weight_sync == "collective"
    assert load_config("local", ["learner.weight_sync=collective"]).weight_sync == "collective"
    assert load_config(
        "local", ["resources.use_gpu=true", "learner.weight_sync=object_store"]
    ).weight_sync == ("object_store")


def test_bad_weight_sync_settings_name_the_key_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"learner\.weight_sync='broadcast': must be one of"):
        load_config("local", ["learner.weight_sync=broadcast"])
    with pytest.raises(ConfigError, match=r"learner\.weight_sync='nccl'.*Fix: use auto"):
        Config(learner=LearnerConfig(weight_sync="nccl"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"learner\.weight_sync_bucket_mb=0\.0: must be a number > 0.*Fix"):
        load_config("local", ["learner.weight_sync_bucket_mb=0"])


def test_frozen_precision_resolves_per_device_and_refuses_fp16() -> None:
    assert load_config("local").resources.frozen_weights == "fp32"
    assert load_config("local", ["resources.use_gpu=true"]).resources.frozen_weights == "bf16"
    assert load_config("local", ["resources.frozen_precision=bf16"]).resources.frozen_weights == "bf16"
    gpu_fp32 = ["resources.use_gpu=true", "resources.frozen_precision=fp32"]
    assert load_config("local", gpu_fp32).resources.frozen_weights == "fp32"
    with pytest.raises(ConfigError, match=r"frozen_precision='fp16': T5 overflows in fp16.*Fix: use auto"):
        load_config("local", ["resources.use_gpu=true", "resources.frozen_precision=fp16"])


def test_role_gpu_shares_default_to_role_gpus_and_feed_the_bundles() -> None:
    cfg = load_config("local", ["resources.use_gpu=true", "resources.role_gpus=0.25"])
    assert cfg.ppo_gpu_shares == dict.fromkeys(
        ("rollout worker", "reward scorer", "reference policy", "learner"), 0.25
    )
    two_ranks = load_config("local", ["resources.use_gpu=true", "learner.num_ranks=2"])
    assert two_ranks.ppo_gpu_shares["learner"] == 1.0  # NCCL ranks: a GPU each
    cfg = load_config(
        "local",
        ["resources.use_gpu=true", "resources.rollout_gpus=0.3", "resources.reward_gpus=0.1",
         "resources.reference_gpus=0.2", "resources.learner_gpus=1", "rollout.num_workers=2"],
    )  # fmt: skip
    gpus = {(b.role, b.rank): b.resources["GPU"] for b in ppo_bundles(cfg)}
    assert gpus == {
        ("rollout worker", 0): 0.3, ("rollout worker", 1): 0.3, ("reward scorer", 0): 0.1,
        ("reference policy", 0): 0.2, ("learner", 0): 1.0,
    }  # fmt: skip
    assert all("GPU" not in b.resources for b in ppo_bundles(load_config("local")))  # CPU: no GPU asked


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["resources.rollout_gpus=1.5"], r"resources\.rollout_gpus=1\.5: must be in \(0, 1\].*Fix"),
        (["resources.learner_gpus=0"], r"resources\.learner_gpus=0\.0: must be in \(0, 1\]"),
        (["resources.num_gpus=0"], r"resources\.num_gpus=0: must be >= 1 or null"),
        (
            ["resources.use_gpu=true", "learner.num_ranks=2", "resources.learner_gpus=0.5"],
            r"resources\.learner_gpus=0\.5: learner\.num_ranks=2 ranks talk over NCCL.*Fix: set resources\.learner_gpus=1",
        ),
        (
            [
                "resources.use_gpu=true",
                "resources.num_gpus=1",
                "resources.rollout_gpus=0.5",
                "resources.learner_gpus=0.6",
                "resources.reward_gpus=0.1",
                "resources.reference_gpus=0.1",
            ],
            r"resources\.num_gpus=1: the PPO roles' GPU shares do not fit: 1 rollout worker x 0\.5 "
            r"\(resources\.rollout_gpus\).*1 learner x 0\.6 \(resources\.learner_gpus\); total 1\.3 GPUs.*Fix",
        ),
    ],
)
def test_gpu_shares_that_cannot_work_fail_with_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("local", overrides)


def test_gpu_packing_is_first_fit_decreasing() -> None:
    assert pack_gpu_shares([0.5, 0.5, 0.25, 0.25], 2) is not None
    assert pack_gpu_shares([0.6, 0.6], 1) is None
    # 1.8 GPUs in total fit 2 GPUs by sum, but no two 0.6 shares share a GPU
    assert pack_gpu_shares([0.6, 0.6, 0.6], 2) is None


def test_one_gpu_preset_puts_every_role_on_one_gpu_in_bf16_with_collective_sync() -> None:
    cfg = load_config("paper_1gpu")
    paper = load_config("paper")
    assert cfg.model == paper.model and cfg.ppo == paper.ppo  # the paper's settings, inherited
    assert cfg.resources.use_gpu and cfg.weight_sync == "collective"
    assert cfg.rollout.precision == "bf16" and cfg.learner.engine.precision == "bf16"
    assert cfg.resources.frozen_weights == "bf16"
    bundles = ppo_bundles(cfg)
    assert all(0 < b.resources["GPU"] < 1 for b in bundles)
    assert total(bundles)["GPU"] == pytest.approx(1.0)


def test_eight_gpu_preset_gives_four_learner_ranks_a_gpu_each() -> None:
    cfg = load_config("paper_8gpu")
    assert cfg.learner.num_ranks == 4 and cfg.learner.engine.zero_stage == 2
    assert cfg.rollout.num_workers == 2 and cfg.weight_sync == "collective"
    # each rollout worker gets a generation chunk of its own
    assert cfg.ppo.rollout_batch_size // cfg.rollout.batch_size == cfg.rollout.num_workers
    shares = cfg.ppo_gpu_shares
    assert shares["learner"] == 1.0 and shares["rollout worker"] == 1.0
    # the reference and both scorers share one GPU
    assert shares["reference policy"] + cfg.reward.num_scorers * shares["reward scorer"] <= 1.0
    assert total(ppo_bundles(cfg))["GPU"] <= 8


def test_a_preset_extends_another_with_base(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump({"base": "paper_1gpu", "ppo": {"total_steps": 10}, "resources": {"num_cpus": 4}})
    )
    cfg = load_config(child)
    one_gpu = load_config("paper_1gpu")
    assert cfg.ppo.total_steps == 10 and cfg.ppo.lr == one_gpu.ppo.lr  # a section merges key by key
    assert cfg.resources.num_cpus == 4 and cfg.resources.rollout_gpus == one_gpu.resources.rollout_gpus
    assert cfg.model.name_or_path == "t5-base"  # two levels up: paper.yaml
    # a relative YAML path as base, and CLI overrides still last
    (tmp_path / "grandchild.yaml").write_text(yaml.safe_dump({"base": "child.yaml", "ppo": {"lr": 1e-4}}))
    cfg = load_config(tmp_path / "grandchild.yaml", ["ppo.total_steps=3"])
    assert (cfg.ppo.total_steps, cfg.ppo.lr, cfg.resources.num_cpus) == (3, 1e-4, 4)


def test_bad_base_keys_fail_with_the_fix(tmp_path: Path) -> None:
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text("base: b.yaml\n")
    loop_b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base: chain loops.*Fix: remove one"):
        load_config(loop_a)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [paper]\n")
    with pytest.raises(ConfigError, match=r"base=\['paper'\] must name a preset"):
        load_config(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("base: no_such_preset\n")
    with pytest.raises(ConfigError, match=r"unknown preset 'no_such_preset'"):
        load_config(missing)
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"base": "paper", "resources": {"rollout_gpu": 0.5}}))
    with pytest.raises(
        ConfigError, match=r"unknown config key 'resources\.rollout_gpu'; did you mean 'rollout_gpus'"
    ):
        load_config(typo)


def test_frozen_precision_default_is_auto() -> None:
    assert ResourcesConfig().frozen_precision == "auto" and LearnerConfig().weight_sync == "auto"
