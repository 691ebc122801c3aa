"""``resources.placement`` and ``resources.role_nodes``: roles pinned to nodes by custom resource, and
the settings' errors."""

from __future__ import annotations

import pytest

from actors.cluster.placement import evaluation_bundles, ppo_bundles
from pipeline.config import ConfigError, load_config


def test_role_nodes_pin_roles_by_custom_resource() -> None:
    cfg = load_config(
        "local", ["resources.role_nodes=learner=node_b, rollout worker=node_c,evaluation worker=node_c"]
    )
    bundles = {(b.role, b.rank): dict(b.resources) for b in ppo_bundles(cfg)}
    assert bundles[("learner", 0)]["node_b"] == pytest.approx(0.001)
    assert bundles[("rollout worker", 0)]["node_c"] == pytest.approx(0.001)
    assert "node_b" not in bundles[("reference policy", 0)] and "node_c" not in bundles[("reward scorer", 0)]
    assert all("node_c" in b.resources for b in evaluation_bundles(cfg, 2) if b.role == "evaluation worker")
    assert ppo_bundles(load_config("local", []))[0].resources.keys() == {"CPU"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resources.placement=TIGHT", "must be one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"),
        ("resources.role_nodes=critic=node_b", "each entry is ROLE=RESOURCE"),
        ("resources.role_nodes=learner", "each entry is ROLE=RESOURCE"),
    ],
)
def test_bad_placement_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override])
