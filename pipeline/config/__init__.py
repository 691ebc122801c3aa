"""One frozen, typed configuration tree for every stage of EmpRL.

Loading order is always: dataclass defaults < YAML preset < dotted CLI overrides
(``ppo.clip_ratio=0.1``). Unknown keys, wrong types and inconsistent values raise
:class:`ConfigError` naming the key, the value, the rule and the fix.
"""

from pipeline.config.deployment import ResourcesConfig, ServeConfig
from pipeline.config.loading import load_config, preset_path, save_config
from pipeline.config.schema import (
    CONFIGS_DIR,
    MECHANISMS,
    ConfigError,
    DataConfig,
    EngineConfig,
    IdentifiersConfig,
    LearnerConfig,
    ModelConfig,
    OptimizerConfig,
    PPOConfig,
    RewardConfig,
    RewardWeights,
    RolloutConfig,
    RunConfig,
    SFTConfig,
)
from pipeline.config.tree import Config, from_dict, validate

__all__ = [
    "CONFIGS_DIR",
    "MECHANISMS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EngineConfig",
    "IdentifiersConfig",
    "LearnerConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PPOConfig",
    "ResourcesConfig",
    "RewardConfig",
    "RewardWeights",
    "RolloutConfig",
    "RunConfig",
    "SFTConfig",
    "ServeConfig",
    "from_dict",
    "load_config",
    "preset_path",
    "save_config",
    "validate",
]
