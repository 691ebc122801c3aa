"""A node lost under a stage's reservation: find out, wait for the lost bundles to come back, or stop.

When a node dies every actor on it dies at once and the placement-group bundles it held go to
RESCHEDULING: Ray re-reserves them as soon as some node has the resources (an autoscaler's
replacement, or spare capacity elsewhere) and waits forever otherwise. An actor placed in such a
bundle before the GCS has noticed the death lands on the dead node and is cancelled. So before a
role group replaces a dead actor, :func:`await_reservation` settles what happened:

1. every node that holds a bundle of the reservation is asked to run a no-resource task; a node
   the GCS lists as dead, or that does not answer until the GCS declares it dead, is *lost*
   (the GCS's health checks decide within ~15-30 s; a process that died on a live node is not a
   node loss and costs one answered probe, ~1 s);
2. with a lost node, wait up to ``resources.node_loss_wait_s`` for the placement group to be
   CREATED again with every bundle on a live node, logging what is missing meanwhile;
3. if it is not, raise :class:`NodeLostError`, which names the lost node, its resources and what
   the reservation still lacks; the command line adds the ``--resume`` command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import placement_group_table
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.cluster.placement import Reservation, format_resources

logger = logging.getLogger(__name__)

SETTLE_S = 90.0
"""Longest wait for a silent node to answer or be declared dead by the GCS (its health checks fail
a dead raylet after about 15-30 s; slack for a loaded head)."""
POLL_S = 0.5


@dataclass(frozen=True)
class LostNode:
    """A node that died: its id and the resources it had (custom ones name its type)."""

    node_id: str
    resources: Mapping[str, float]

    def describe(self) -> str:
        shown = {
            k: v for k, v in self.resources.items() if not k.startswith(("node:", "memory", "object_store"))
        }
        return f"{self.node_id[:12]} {format_resources(shown)}"


class NodeLostError(RuntimeError):
    """Bundles of a reservation were on a node that died and were not re-reserved in time."""

    def __init__(
        self, what: str, lost: list[LostNode], missing: Mapping[str, float], waited_s: float
    ) -> None:
        nodes = ", ".join(n.describe() for n in lost) or "a node"
        super().__init__(
            f"{what}: node {nodes} died and its share of the {what} reservation ({format_resources(missing)}) was not "
            f"re-reserved within {waited_s:.0f} s (resources.node_loss_wait_s): no node with those resources "
            "came up. Everything up to the last complete checkpoint is in the run folder."
        )
        self.what, self.lost, self.missing, self.waited_s = what, lost, dict(missing), waited_s


@ray.remote(num_cpus=0)
def _answer() -> str:
    return str(ray.get_runtime_context().get_node_id())


_SEEN: dict[str, dict[str, float]] = {}
"""Resources of every node seen alive (the GCS lists none for a dead one): what a lost node had."""


def _node_table() -> dict[str, dict[str, Any]]:
    table = {n["NodeID"]: n for n in ray.nodes()}  # type: ignore[no-untyped-call]
    for node, info in table.items():
        if info.get("Alive") and info.get("Resources"):
            _SEEN[node] = dict(info["Resources"])
    return table


def note_nodes() -> None:
    """Remember the resources of the nodes alive now (a stage calls it once its roles are placed), so a
    later :class:`NodeLostError` can say what a lost node had."""
    _node_table()


def _bundle_nodes(reservation: Reservation) -> tuple[str, dict[int, str]]:
    table = placement_group_table(reservation.group)
    return str(table["state"]), {int(i): str(n) for i, n in table["bundles_to_node_id"].items()}


def lost_nodes(node_ids: set[str], *, settle_s: float = SETTLE_S) -> list[LostNode]:
    """Those of ``node_ids`` that are dead: listed dead by the GCS, or silent until it lists them dead.
    A node that answers a no-resource task is alive; one still undecided after ``settle_s`` counts as lost."""
    table = _node_table()
    lost = {n for n in node_ids if n and not table.get(n, {}).get("Alive", False)}
    probes = {}
    for node in node_ids - lost - {""}:
        strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        probes[_answer.options(scheduling_strategy=strategy).remote()] = node
    deadline = time.monotonic() + settle_s
    while probes:
        ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=POLL_S)
        for ref in ready:
            node = probes.pop(ref)
            try:
                ray.get(ref)
            except Exception:  # the task could not run there: the node went away under it
                lost.add(node)
        table = _node_table()
        for ref, node in list(probes.items()):
            if not table.get(node, {}).get("Alive", False):
                lost.add(node)
                probes.pop(ref)
                ray.cancel(ref, force=False)
        if probes and time.monotonic() > deadline:
            logger.warning(
                "nodes %s did not answer within %.0f s: counted as lost", sorted(probes.values()), settle_s
            )
            lost.update(probes.values())
            break
    return [LostNode(n, dict(table.get(n, {}).get("Resources") or _SEEN.get(n, {}))) for n in sorted(lost)]


def await_reservation(
    reservation: Reservation, what: str, wait_s: float, *, settle_s: float = SETTLE_S
) -> float | None:
    """Return once every bundle of ``reservation`` sits on a live node: ``None`` when no node was lost (a
    process died, its bundle is still there), else the seconds from this call to the reservation being
    whole again (telling the loss apart included).

    Raises:
        NodeLostError: a node was lost and its bundles were not re-reserved within ``wait_s``.
    """
    called = time.monotonic()
    state, where = _bundle_nodes(reservation)
    lost = lost_nodes(set(where.values()), settle_s=settle_s)
    if not lost and state == "CREATED":
        return None
    started = time.monotonic()
    dead = {n.node_id for n in lost}
    specs = reservation.bundle_specs()
    missing: dict[str, float] = {}
    for index, node in where.items():
        if node in dead or not node:
            for kind, amount in specs[index].items():
                missing[kind] = missing.get(kind, 0.0) + amount
    logger.warning(
        "%s: node %s lost with %s of the reservation; waiting up to %.0f s (resources.node_loss_wait_s) for "
        "those bundles to be re-reserved on a live node",
        what, ", ".join(n.describe() for n in lost) or "?", format_resources(missing), wait_s,
    )  # fmt: skip
    deadline = started + wait_s
    while True:
        state, where = _bundle_nodes(reservation)
        alive = {n for n, info in _node_table().items() if info.get("Alive")}
        if state == "CREATED" and all(node in alive for node in where.values()):
            logger.warning(
                "%s: the reservation is whole again %.1f s after the loss was found (%.1f s to tell it from a "
                "dead process); re-creating the lost roles", what, time.monotonic() - started, started - called,
            )  # fmt: skip
            return time.monotonic() - called
        if time.monotonic() > deadline:
            raise NodeLostError(what, lost, missing, wait_s)
        time.sleep(POLL_S)
