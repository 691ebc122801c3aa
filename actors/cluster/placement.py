"""Placement: a stage's roles as one bundle list, reserved in one placement group.

:func:`ppo_bundles` and :func:`evaluation_bundles` compute, from the config alone, one bundle per
role instance (rollout workers, reward scorers, reference policy, learner ranks; evaluation
workers, identifier scorers). A :class:`Reservation` is a placement group holding such bundles:
made by the stage itself, or adopted from a caller that reserved it already (a Tune trial's
placement group, whose bundle 0 runs the trial itself). Roles are then placed bundle by bundle, so
a stage never takes resources outside its reservation and creates no other placement group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.config import Config

logger = logging.getLogger(__name__)


class ReservationError(ValueError):
    """A stage's bundles do not fit the reservation or the cluster; names requested vs available."""


@dataclass(frozen=True)
class RoleBundle:
    """The resources of one role instance (``role`` rank ``rank``)."""

    role: str
    rank: int
    resources: Mapping[str, float]


def _role_resources(cpus: float, gpus: float, pinned: Mapping[str, float] | None = None) -> dict[str, float]:
    """One bundle's resources (``gpus`` is 0 without ``resources.use_gpu``: see ``Config.ppo_gpu_shares``),
    with the node resource ``resources.role_nodes`` pins the role to."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {}), **(pinned or {})}


def ppo_bundles(cfg: Config) -> list[RoleBundle]:
    """One bundle per PPO role instance, in placement order: rollout workers, reward scorers, the
    reference policy, learner ranks. A caller reserves exactly these (e.g. a Tune trial). GPU shares
    per role come from ``resources.{rollout,reward,reference,learner}_gpus``."""
    res, gpus = cfg.resources, cfg.ppo_gpu_shares
    cpus = {
        "rollout worker": res.rollout_cpus,
        "reward scorer": res.reward_cpus,
        "reference policy": res.reference_cpus,
        "learner": res.learner_cpus,
    }
    pinned = res.role_node_resources
    return [
        RoleBundle(role, rank, _role_resources(cpus[role], gpus[role], pinned.get(role)))
        for role, count in cfg.ppo_role_counts.items()
        for rank in range(count)
    ]


def evaluation_bundles(cfg: Config, num_workers: int) -> list[RoleBundle]:
    """One bundle per evaluation role instance: evaluation workers, then identifier scorers.

    With ``num_workers == rollout.num_workers`` these match the first bundles of :func:`ppo_bundles`
    bundle for bundle, so an evaluation can run inside a PPO run's reservation after PPO ends."""
    res, gpus, pinned = cfg.resources, cfg.ppo_gpu_shares, cfg.resources.role_node_resources
    return [
        *(RoleBundle("evaluation worker", r,
                     _role_resources(res.rollout_cpus, gpus["rollout worker"], pinned.get("evaluation worker")))
          for r in range(num_workers)),
        *(RoleBundle("identifier scorer", r,
                     _role_resources(res.reward_cpus, gpus["reward scorer"], pinned.get("identifier scorer")))
          for r in range(cfg.reward.num_scorers)),
    ]  # fmt: skip


def total(bundles: Sequence[RoleBundle]) -> dict[str, float]:
    """Resources of all ``bundles`` together, per kind."""
    out: dict[str, float] = {}
    for b in bundles:
        for kind, amount in b.resources.items():
            out[kind] = out.get(kind, 0.0) + amount
    return out


def breakdown(bundles: Sequence[RoleBundle]) -> str:
    """``2 rollout worker x {CPU: 0.5}, ...``: the bundle list grouped by role, for messages."""
    groups: dict[str, list[RoleBundle]] = {}
    for b in bundles:
        groups.setdefault(b.role, []).append(b)
    return ", ".join(f"{len(bs)} {role} x {format_resources(bs[0].resources)}" for role, bs in groups.items())


def format_resources(resources: Mapping[str, float]) -> str:
    """``{CPU: 0.5, GPU: 1}``: resources for messages."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def _check_nonempty(what: str, bundles: Sequence[RoleBundle]) -> None:
    for b in bundles:
        if not any(v > 0 for v in b.resources.values()):
            raise ReservationError(
                f"{what}: {b.role} {b.rank} asks for no resources ({format_resources(b.resources)}); a placement bundle "
                "needs some. Fix: give the role CPUs (resources.*_cpus > 0)."
            )


def cluster_shortfall(what: str, bundles: Sequence[RoleBundle]) -> str | None:
    """What the cluster's nodes, as they are now, lack to hold ``bundles`` (requested vs available),
    or ``None`` when they can."""
    have: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    for kind, need in total(bundles).items():
        if need > have.get(kind, 0.0) + 1e-9:
            return f"{what} needs {need:g} {kind} ({breakdown(bundles)}) but the cluster has {have.get(kind, 0.0):g}"
    return None


class Reservation:
    """A placement group whose bundles ``first``, ``first + 1``, ... hold a stage's role bundles."""

    def __init__(self, group: PlacementGroup, *, first: int = 0, owned: bool = False) -> None:
        self.group, self.first, self.owned = group, first, owned

    @classmethod
    def create(
        cls,
        what: str,
        bundles: Sequence[RoleBundle],
        *,
        timeout_s: float = 300.0,
        scale_up_wait_s: float = 0.0,
        strategy: str = "PACK",
    ) -> Reservation:
        """Reserve ``bundles`` in a new placement group (released by :meth:`release`).

        A cluster that lacks the resources now fails at once, unless ``scale_up_wait_s`` > 0
        (``resources.scale_up_wait_s``): then the request waits that long for an autoscaler to add
        nodes (the pending placement group is the demand it scales up for). ``strategy`` is the
        placement group's (``resources.placement``).

        Raises:
            ReservationError: the cluster cannot hold the bundles, or they are not granted in time
                (other work holds the resources, or no node came up).
        """
        _check_nonempty(what, bundles)
        shortfall = cluster_shortfall(what, bundles)
        if shortfall is not None:
            if scale_up_wait_s <= 0:
                raise ReservationError(
                    f"{shortfall}. Fix: lower resources.*_cpus or the worker counts, or add nodes (or set "
                    "resources.scale_up_wait_s on an autoscaling cluster)."
                )
            timeout_s = scale_up_wait_s
            logger.warning("%s; waiting up to %g s for the autoscaler to add nodes", shortfall, timeout_s)
        group = placement_group([dict(b.resources) for b in bundles], strategy=strategy)
        ready, _ = ray.wait([group.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(group)
            free: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
            raise ReservationError(
                f"{what} asked for {format_resources(total(bundles))} ({breakdown(bundles)}); after {timeout_s:g} s the "
                f"cluster still has only {format_resources(free)} free. Fix: wait for other work to finish, or lower "
                "resources.*_cpus or the worker counts"
                + (
                    ", or raise resources.scale_up_wait_s if nodes are still starting."
                    if scale_up_wait_s > 0
                    else "."
                )
            )
        return cls(group, owned=True)

    @classmethod
    def current(cls, *, first: int = 1) -> Reservation:
        """The placement group this task or actor runs in (a Tune trial's), roles from bundle ``first``."""
        group = get_current_placement_group()
        if group is None:
            raise ReservationError(
                "Reservation.current: this code does not run inside a placement group. Fix: reserve the "
                "stage's bundles first (e.g. tune.with_resources(fn, PlacementGroupFactory(...)))."
            )
        return cls(group, first=first, owned=False)

    def bundle_specs(self) -> list[dict[str, float]]:
        """The placement group's bundles as Ray reports them."""
        table = placement_group_table(self.group)
        specs: dict[int, dict[str, float]] = table["bundles"]
        return [dict(specs[i]) for i in sorted(specs)]

    def place(self, what: str, bundles: Sequence[RoleBundle]) -> Placement:
        """Check that ``bundles`` fit this reservation bundle for bundle; the options to place each role.

        Raises:
            ReservationError: a bundle is missing or smaller than its role needs (requested vs available).
        """
        _check_nonempty(what, bundles)
        have = self.bundle_specs()
        available = have[self.first :]
        if len(available) < len(bundles):
            raise ReservationError(
                f"{what} needs {len(bundles)} bundles ({breakdown(bundles)}) but the reservation holds "
                f"{len(available)} after bundle {self.first} ({[format_resources(b) for b in available]}). Fix: reserve "
                "the stage's bundle list (ppo_bundles / evaluation_bundles of the same config)."
            )
        for index, (b, spec) in enumerate(zip(bundles, available, strict=False)):
            short = {k: v for k, v in b.resources.items() if v > spec.get(k, 0.0) + 1e-9}
            if short:
                raise ReservationError(
                    f"{what}: {b.role} {b.rank} needs {format_resources(b.resources)} but bundle {self.first + index} of the "
                    f"reservation has {format_resources(spec)}. Fix: reserve the stage's bundle list computed from the same "
                    "config."
                )
        return Placement(self, list(bundles))

    def release(self) -> None:
        """Remove the placement group if this reservation made it (an adopted one stays its owner's)."""
        if self.owned:
            remove_placement_group(self.group)
            self.owned = False


@dataclass(frozen=True)
class Placement:
    """A stage's bundle list mapped onto a reservation: Ray actor options for each role instance."""

    reservation: Reservation
    bundles: list[RoleBundle]

    def index(self, role: str, rank: int) -> int:
        """The placement-group bundle index of ``role`` rank ``rank``."""
        for i, b in enumerate(self.bundles):
            if (b.role, b.rank) == (role, rank):
                return self.reservation.first + i
        raise KeyError(f"no bundle for {role} rank {rank} in {[(b.role, b.rank) for b in self.bundles]}")

    def options(self, role: str, rank: int) -> dict[str, Any]:
        """``num_cpus``, ``num_gpus`` and the bundle's scheduling strategy for one role instance."""
        index = self.index(role, rank)
        b = self.bundles[index - self.reservation.first]
        return {
            "num_cpus": b.resources.get("CPU", 0.0),
            "num_gpus": b.resources.get("GPU", 0.0),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.reservation.group, placement_group_bundle_index=index
            ),
        }

    def count(self, role: str) -> int:
        """How many instances of ``role`` the bundle list holds."""
        return sum(1 for b in self.bundles if b.role == role)


def frozen_dtype(precision: str) -> torch.dtype:
    """The weight dtype of a frozen model (reference policy, identifiers) for a resolved
    ``resources.frozen_precision`` (``fp32`` or ``bf16``; T5 overflows in fp16)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(
            f"frozen model precision {precision!r}: must be fp32 or bf16 (T5 overflows in fp16). Fix: set "
            "resources.frozen_precision to auto, bf16 or fp32."
        )
    return dtypes[precision]


class RoleProcess:
    """Mixed into every role class: where the actor runs (for tests and fault injection)."""

    def pid(self) -> int:
        """The actor's process id."""
        return os.getpid()

    def placement(self) -> dict[str, Any]:
        """The actor's process id, placement group id and the resources Ray assigned to it."""
        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "placement_group": ctx.get_placement_group_id(),
            "resources": dict(ctx.get_assigned_resources()),  # type: ignore[no-untyped-call]
        }
