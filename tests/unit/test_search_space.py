"""Sweep search spaces: dotted keys and sampling specs, rejected before any trial with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import CONFIGS_DIR, ConfigError, load_config
from pipeline.config.search_space import Dimension, SearchSpaceError, load_search_space, parse_search_space

BASE = load_config("local")


def test_a_space_parses_into_typed_dimensions_in_file_order() -> None:
    space = parse_search_space(
        {
            "reward.weights.ex": {"uniform": [0.5, 2.0]},
            "ppo.kl_coef": {"loguniform": [0.05, 0.5]},
            "ppo.kl_mode": {"choice": ["adaptive", "fixed"]},
            "ppo.kl_target": {"grid": [3.0, 6.0]},
            "ppo.ppo_epochs": {"randint": [1, 4]},
        },
        BASE,
    )
    assert space.keys == (
        "reward.weights.ex",
        "ppo.kl_coef",
        "ppo.kl_mode",
        "ppo.kl_target",
        "ppo.ppo_epochs",
    )
    assert space.dimensions[1] == Dimension("ppo.kl_coef", "loguniform", (0.05, 0.5))
    assert space.dimensions[4].probes == (1, 3)  # randint's upper end is exclusive
    assert space.grid_size == 2
    # every combination of probe values is a valid config
    assert len(space.probe_configs(BASE)) == 2 * 2 * 2 * 2 * 2


def test_every_shipped_space_is_valid_for_every_preset() -> None:
    for space in sorted((CONFIGS_DIR / "sweeps").glob("*.yaml")):
        for preset in ("local", "paper", "sweep_tiny"):
            assert load_search_space(space, load_config(preset)).dimensions
        real = load_config("sweep_real", ["data.ed_path=ed", "data.epitome_path=epitome"])
        assert load_search_space(space, real).dimensions


def rejects(space: dict[str, object], message: str) -> None:
    """``space`` fails against the local preset with a :class:`SearchSpaceError` matching ``message``."""
    with pytest.raises(SearchSpaceError, match=message):
        parse_search_space(space, BASE)


def test_an_unknown_key_is_named_with_the_closest_one() -> None:
    rejects(
        {"ppo.kl_coeff": {"uniform": [0.1, 0.2]}},
        r"unknown config key 'ppo.kl_coeff'.*did you mean 'ppo.kl_coef'",
    )
    rejects(
        {"reward.weights": {"uniform": [0.1, 0.2]}}, r"reward.weights is a config section.*reward.weights.er"
    )


def test_a_range_the_config_rejects_fails_naming_the_key_value_and_rule() -> None:
    rejects(
        {"ppo.kl_target": {"uniform": [0, 6]}},
        r"ppo.kl_target=0 \(from uniform \[0, 6\]\).*must be > 0.*narrow",
    )
    rejects({"reward.weights.ex": {"uniform": [-1.0, 1.0]}}, r"reward.weights.ex=-1.0 .*reward.weights.ex")
    rejects({"ppo.kl_horizon": {"choice": [0, 100]}}, r"ppo.kl_horizon=0 \(from choice \[0, 100\]\)")
    assert issubclass(SearchSpaceError, ConfigError)


def test_a_value_of_the_wrong_type_fails_naming_the_key() -> None:
    rejects(
        {"ppo.kl_mode": {"uniform": [0.1, 0.2]}}, r"ppo.kl_mode=0.1 .*must be one of \['adaptive', 'fixed'\]"
    )
    rejects({"ppo.ppo_epochs": {"uniform": [1.5, 3]}}, r"ppo.ppo_epochs=1.5 .*expected an integer")


def test_combinations_that_break_a_cross_key_rule_are_caught() -> None:
    # each value alone is valid with the base config, but a mini-batch of 16 does not divide 24
    rejects(
        {"ppo.rollout_batch_size": {"choice": [16, 24]}, "ppo.mini_batch_size": {"choice": [8, 16]}},
        r"ppo.rollout_batch_size=24 .*ppo.mini_batch_size=16 .*must divide",
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (0.1, r"is not a sampling spec.*\['uniform', 'loguniform', 'randint', 'choice', 'grid'\]"),
        ({"normal": [0, 1]}, "is not a sampling spec"),
        ({"uniform": [0.5]}, r"uniform takes \[LOW, HIGH\], two numbers"),
        ({"uniform": [0.5, 0.1]}, "needs LOW < HIGH"),
        ({"loguniform": [0, 0.5]}, "needs LOW > 0"),
        ({"randint": [1.0, 3]}, "two integers"),
        ({"choice": []}, "non-empty list"),
    ],
)
def test_malformed_specs_fail_with_the_fix(spec: object, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message) as info:
        parse_search_space({"ppo.kl_coef": spec}, BASE)
    assert "ppo.kl_coef" in str(info.value)


def test_a_space_file_must_exist_and_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SearchSpaceError, match="does not exist"):
        load_search_space(tmp_path / "missing.yaml", BASE)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- ppo.kl_coef\n")
    with pytest.raises(SearchSpaceError, match=r"bad.yaml: a search space is a non-empty mapping"):
        load_search_space(bad, BASE)


def test_clamp_pulls_perturbed_values_back_into_the_space() -> None:
    """PBT scales a value by 0.8 / 1.2: the trial config must stay inside the checked space."""
    space = parse_search_space(
        {
            "ppo.kl_coef": {"loguniform": [0.05, 0.5]},
            "ppo.ppo_epochs": {"randint": [1, 4]},
            "ppo.kl_mode": {"choice": ["adaptive", "fixed"]},
        },
        BASE,
    )
    assert space.clamp({"ppo.kl_coef": 0.6, "ppo.ppo_epochs": 3.6, "ppo.kl_mode": "fixed"}) == {
        "ppo.kl_coef": 0.5,
        "ppo.ppo_epochs": 3,  # randint's upper end is exclusive
        "ppo.kl_mode": "fixed",
    }
    clamped = space.clamp({"ppo.kl_coef": 0.04, "ppo.ppo_epochs": 1.2, "ppo.kl_mode": "other", "run.seed": 7})
    assert clamped == {"ppo.kl_coef": 0.05, "ppo.ppo_epochs": 1, "ppo.kl_mode": "adaptive", "run.seed": 7}
    assert isinstance(clamped["ppo.ppo_epochs"], int)
    BASE.with_overrides({k: v for k, v in clamped.items() if k != "run.seed"})  # a valid config
