"""The PPO run's role groups, placed in one reservation, and the weight sync between two of them.

Rollout workers, reward scorers and the reference policy start with :class:`PPORoles` (Ray restarts
a failed one, up to ``ppo.max_restarts``); the learner group starts when first needed and, after it
died, again from scratch (:meth:`PPORoles.kill_learner`). Every actor takes its own bundle of the
reservation (:func:`~actors.cluster.placement.ppo_bundles`). With ``Config.in_process_roles`` the
rollout worker, reward scorer and reference policy are one instance each in this (the driver's) process
instead (:class:`~actors.cluster.group.LocalGroup`), and with ``Config.in_process_learner`` the learner's one
rank too. The weight sync lives here
because learner rank 0 and the rollout workers are its members.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors.cluster.group import Group, LocalGroup, RoleGroup, gather
from actors.cluster.placement import Placement, Reservation, ppo_bundles
from actors.cluster.recovery import await_reservation, note_nodes
from actors.cluster.session import worker_runtime_env
from actors.ppo.learner import LearnerWorker
from actors.ppo.reference import ReferenceWorker
from actors.ppo.reward import RewardWorker
from actors.ppo.rollout import RolloutWorker
from actors.ppo.weight_sync import WeightSync, make_weight_sync
from pipeline.config import Config


class PPORoles:
    """Every role group of a PPO run from ``policy_dir`` and ``identifiers_dir``.

    Placed in ``reservation`` (by default one made from :func:`ppo_bundles` and released on
    :meth:`shutdown`). ``version()`` is the weight version the rollout workers should hold: a
    replaced rollout worker gets it before its shards run again.
    """

    def __init__(
        self,
        cfg: Config,
        policy_dir: Path,
        identifiers_dir: Path,
        *,
        reservation: Reservation | None,
        version: Callable[[], int],
    ) -> None:
        self.cfg, self.policy_dir, self.identifiers_dir = cfg, policy_dir, identifiers_dir
        self.learner: Group | None = None
        """The learner group while it runs (see :meth:`learner_group`)."""
        self.node_losses: list[float] = []
        """Seconds waited for the reservation to be whole again after each lost node."""
        self.sync: WeightSync = make_weight_sync(cfg)
        self.reservation = reservation or Reservation.create(
            "PPO",
            ppo_bundles(cfg),
            scale_up_wait_s=cfg.resources.scale_up_wait_s,
            strategy=cfg.resources.placement,
        )
        try:
            self.placement: Placement = self.reservation.place("PPO", ppo_bundles(cfg))
            self.rollout, self.reward, self.reference = self._make_workers()
            for group in (self.rollout, self.reward, self.reference):
                group.before_replace = self.await_capacity
            note_nodes()
            self.rollout.on_replace = lambda rank: self.sync.replaced(
                self.learner_group(), self.rollout, version()
            )
        except BaseException:
            self.reservation.release()
            raise

    def _group(self, role: str, cls: type, args: tuple[Any, ...], **kwargs: Any) -> RoleGroup:
        """``placement.count(role)`` actors of ``cls``, each in its own bundle of the reservation."""
        placement = self.placement
        return RoleGroup(
            role,
            cls,
            args,
            count=placement.count(role),
            options={"runtime_env": worker_runtime_env(self.cfg.resources)},
            make_options=lambda rank: placement.options(role, rank),
            **kwargs,
        )

    def _role(self, role: str, cls: type, args: tuple[Any, ...], **kwargs: Any) -> Group:
        """The role's actors (:meth:`_group`), or with ``Config.in_process_roles`` one instance of ``cls`` in
        this process (nothing to restart)."""
        if self.cfg.in_process_roles:
            return LocalGroup.build(role, cls, args)
        return self._group(role, cls, args, **kwargs)

    def _make_workers(self) -> tuple[Group, Group, Group]:
        cfg, res = self.cfg, self.cfg.resources
        device = "cuda" if res.use_gpu else "cpu"
        restarts = cfg.ppo.max_restarts
        rollout = self._role(
            "rollout worker",
            RolloutWorker,
            (str(self.policy_dir), cfg.rollout, res.rollout_threads or res.torch_threads, device),
            max_restarts=restarts,
        )
        reward = self._role(
            "reward scorer",
            RewardWorker,
            (
                str(self.identifiers_dir),
                cfg.identifiers,
                cfg.reward,
                res.reward_threads or res.torch_threads,
                device,
                res.frozen_weights,
            ),
            max_restarts=restarts,
        )
        reference = self._role(
            "reference policy",
            ReferenceWorker,
            (str(self.policy_dir), res.reference_threads or res.torch_threads, device, res.frozen_weights),
            max_restarts=restarts,
        )
        return rollout, reward, reference

    def learner_group(self) -> Group:
        """The learner group, started (its ranks joined in one process group) if none runs: with
        ``Config.in_process_learner`` its one rank in this process."""
        if self.learner is None:
            cfg, res = self.cfg, self.cfg.resources
            args = (cfg.learner.num_ranks, str(self.policy_dir), cfg.ppo, cfg.learner,
                    res.learner_threads or res.torch_threads, res.use_gpu)  # fmt: skip
            group: Group
            if cfg.in_process_learner:
                group = LocalGroup.build("learner", LearnerWorker, (0, *args))
                host, port = group.actors[0].address()
            else:
                group = self._group("learner", LearnerWorker, args, rank_args=True, restartable=False)
                host, port = ray.get(group.actors[0].address.remote())
            try:
                gather(group.submit_all("setup", host, port, cfg.run.seed))
            except BaseException:
                group.kill()
                raise
            self.learner = group
        return self.learner

    def await_capacity(self) -> None:
        """Before a dead role is re-created: when its node died, wait (``resources.node_loss_wait_s``) until
        the reservation's bundles are on live nodes again (:func:`await_reservation`; raises
        :class:`~actors.cluster.recovery.NodeLostError` when they are not)."""
        waited = await_reservation(self.reservation, "PPO", self.cfg.resources.node_loss_wait_s)
        if waited is not None:
            self.node_losses.append(waited)

    def kill_learner(self) -> None:
        """End the learner group (the next :meth:`learner_group` starts a new one)."""
        if self.learner is not None:
            self.learner.kill()
            self.learner = None
            self.sync.invalidate()  # learner rank 0 belongs to the weight-sync group

    def publish(self, version: int) -> None:
        """The learner's weights to every rollout worker as ``version`` (see :mod:`actors.ppo.weight_sync`)."""
        self.sync.publish(self.learner_group(), self.rollout, version)

    def groups(self) -> dict[str, Group]:
        """Every role group that is running, by role."""
        groups: dict[str, Group] = {g.role: g for g in (self.rollout, self.reward, self.reference)}
        if self.learner is not None:
            groups[self.learner.role] = self.learner
        return groups

    def shutdown(self) -> None:
        """End every actor and release a reservation made here."""
        self.kill_learner()
        for group in (self.rollout, self.reward, self.reference):
            group.kill()
        self.reservation.release()
