"""Actor groups: N Ray actors of one role, made from a plain class, that behave like one instance.

A :class:`RoleGroup` fans sharded calls out round-robin and gathers them once, in shard order.
Groups marked restartable replace an actor that dies (its process killed, its node lost), replay
the calls that gave it its state (e.g. the latest weights) and re-run its shards, so no shard is
lost or counted twice. Application errors are re-raised as :class:`RemoteRoleError` with role and
rank; a dead actor of a non-restartable group raises :class:`RoleDiedError` for the caller to recover.
A :class:`LocalGroup` is the same interface over one instance in the caller's own process (no actor, no
restart): ``resources.in_process_roles`` and a CPU sweep trial's final evaluation use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

logger = logging.getLogger(__name__)

_DEATH = (RayActorError, ActorDiedError, ActorUnavailableError)


class RemoteRoleError(RuntimeError):
    """A role's method raised: carries the role, the rank and the remote traceback text."""

    def __init__(self, role: str, rank: int, method: str, cause: BaseException) -> None:
        super().__init__(f"{role} rank {rank} failed in {method}(): {cause}")
        self.role, self.rank, self.method = role, rank, method


class RoleDiedError(RuntimeError):
    """An actor of a group that cannot restart it alone died (its caller recovers, e.g. from a checkpoint)."""

    def __init__(self, role: str, rank: int, method: str, cause: BaseException) -> None:
        super().__init__(f"{role} rank {rank} died during {method}(): {type(cause).__name__}: {cause}")
        self.role, self.rank, self.method = role, rank, method


@dataclass
class _Call:
    group: Group
    shard: int
    rank: int
    generation: int
    method: str
    args: tuple[Any, ...]
    ref: Any = None
    local: bool = False
    """Ran at submit time in this process (:class:`LocalGroup`): ``ref`` holds the result itself."""


@dataclass
class Pending:
    """Calls submitted to one group; :func:`gather` resolves them in shard order."""

    calls: list[_Call]
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None


class RoleGroup:
    """``count`` actors of class ``cls`` built with ``args``; ``options`` are Ray actor options.

    ``make_options(rank)`` may return per-rank options (e.g. a placement-group bundle).
    """

    def __init__(
        self,
        role: str,
        cls: type,
        args: Sequence[Any],
        *,
        count: int,
        options: dict[str, Any],
        rank_args: bool = False,
        restartable: bool = True,
        max_restarts: int = 3,
        make_options: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.role, self.cls, self.args = role, cls, tuple(args)
        self.options, self.make_options = options, make_options
        self.rank_args, self.restartable, self.max_restarts = rank_args, restartable, max_restarts
        self.restarts = 0
        self.on_replace: Callable[[int], None] | None = None
        """Called with the rank of a replacement actor after the remembered calls were replayed to it
        and before its shards are re-sent (e.g. to rebuild a process group it belongs to)."""
        self.before_replace: Callable[[], None] | None = None
        """Called before a dead actor is replaced: e.g. waits until the reservation's bundles are on live
        nodes again when the actor's node died (:func:`actors.cluster.recovery.await_reservation`)."""
        self._remote: Any = ray.remote(cls)
        self._replay: dict[str, tuple[Any, ...]] = {}
        self.actors = [self._spawn(rank) for rank in range(count)]
        self.generations = [0] * count

    def __len__(self) -> int:
        return len(self.actors)

    def _spawn(self, rank: int) -> Any:
        opts = {**self.options, **(self.make_options(rank) if self.make_options else {})}
        args = (rank, *self.args) if self.rank_args else self.args
        return self._remote.options(name=None, **opts).remote(*args)

    def remember(self, method: str, *args: Any) -> None:
        """Replay ``method(*args)`` on any actor that replaces a dead one (latest call per method wins)."""
        self._replay[method] = args

    def submit(self, method: str, shards: Sequence[tuple[Any, ...]]) -> Pending:
        """Call ``method(*shard)`` for each shard, shard ``i`` on actor ``i mod count``."""
        calls = [
            _Call(self, i, i % len(self.actors), 0, method, tuple(shard)) for i, shard in enumerate(shards)
        ]
        for call in calls:
            self._send(call)
        return Pending(calls)

    def submit_all(self, method: str, *args: Any) -> Pending:
        """Call ``method(*args)`` on every actor (shard ``i`` = actor ``i``)."""
        calls = [_Call(self, i, i, 0, method, args) for i in range(len(self.actors))]
        for call in calls:
            self._send(call)
        return Pending(calls)

    def _send(self, call: _Call) -> None:
        call.generation = self.generations[call.rank]
        call.ref = getattr(self.actors[call.rank], call.method).remote(*call.args)

    def _replace(self, rank: int, cause: BaseException) -> None:
        if self.restarts >= self.max_restarts:
            raise RuntimeError(
                f"{self.role} rank {rank} died and the group already restarted {self.restarts} actor(s) "
                f"(ppo.max_restarts={self.max_restarts}); last cause: {cause}"
            ) from cause
        self.restarts += 1
        logger.warning("%s rank %d died (%s); starting a replacement", self.role, rank, type(cause).__name__)
        _kill(self.actors[rank])
        if self.before_replace is not None:
            self.before_replace()
        self.actors[rank] = self._spawn(rank)
        self.generations[rank] += 1
        for method, args in self._replay.items():
            getattr(self.actors[rank], method).remote(*args)
        if self.on_replace is not None:
            self.on_replace(rank)

    def kill(self) -> None:
        """End every actor of the group (no graceful shutdown: state lives in checkpoints)."""
        for actor in self.actors:
            _kill(actor)


class LocalGroup:
    """A :class:`RoleGroup` stand-in: one instance of ``cls`` in this process that runs every call as it
    is submitted (shards in order), for roles that need no process of their own. Nothing restarts it: an
    error in a call raises :class:`RemoteRoleError` with the role at submit time."""

    restartable = False
    restarts = 0
    max_restarts = 0

    def __init__(self, role: str, instance: Any) -> None:
        self.role, self.actors, self.generations = role, [instance], [0]
        self.on_replace: Callable[[int], None] | None = None
        self.before_replace: Callable[[], None] | None = None

    @classmethod
    def build(cls, role: str, worker: type, args: Sequence[Any]) -> LocalGroup:
        """A group of one new ``worker(*args)``."""
        return cls(role, worker(*args))

    def __len__(self) -> int:
        return 1

    def remember(self, method: str, *args: Any) -> None:
        """Nothing to replay: the instance never dies alone."""

    def submit(self, method: str, shards: Sequence[tuple[Any, ...]]) -> Pending:
        """Run ``method(*shard)`` for each shard, one after the other."""
        return Pending([self._run(i, method, tuple(shard)) for i, shard in enumerate(shards)])

    def submit_all(self, method: str, *args: Any) -> Pending:
        """Run ``method(*args)`` once (the group has one member)."""
        return Pending([self._run(0, method, args)])

    def _run(self, shard: int, method: str, args: tuple[Any, ...]) -> _Call:
        call = _Call(self, shard, 0, 0, method, args, local=True)
        try:
            # as for an actor call, a top-level object reference arrives as its value
            values = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
            call.ref = getattr(self.actors[0], method)(*values)
        except Exception as exc:
            raise RemoteRoleError(self.role, 0, method, exc) from exc
        return call

    def kill(self) -> None:
        """Close the instance (its ``close()``, where it has one: a learner's process group) and drop it (its
        memory goes with the last reference)."""
        for instance in self.actors:
            close = getattr(instance, "close", None)
            if close is not None:
                close()
        self.actors = []


Group = RoleGroup | LocalGroup
"""A role's actors, or its one in-process instance."""


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        pass


def gather(*pendings: Pending) -> list[list[Any]]:
    """Results of each pending set of calls, in shard order; one wait loop over all of them.

    A dead actor of a restartable group is replaced and its calls re-sent; its other calls in
    flight are re-sent too. Application errors raise :class:`RemoteRoleError`.
    """
    by_ref: dict[Any, tuple[Pending, _Call]] = {
        c.ref: (p, c) for p in pendings for c in p.calls if not c.local
    }
    results: dict[int, dict[int, Any]] = {
        id(p): {c.shard: c.ref for c in p.calls if c.local} for p in pendings
    }
    for p in pendings:
        if len(results[id(p)]) == len(p.calls):
            p.finished = time.perf_counter()
    while by_ref:
        ready, _ = ray.wait(list(by_ref), num_returns=1)
        pending, call = by_ref.pop(ready[0])
        try:
            results[id(pending)][call.shard] = ray.get(ready[0])
        except RayTaskError as exc:
            if isinstance(exc, _DEATH) or isinstance(getattr(exc, "cause", None), _DEATH):
                _resend(pending, call, exc, by_ref)
                continue
            raise RemoteRoleError(call.group.role, call.rank, call.method, exc) from exc
        except _DEATH as exc:
            _resend(pending, call, exc, by_ref)
            continue
        if len(results[id(pending)]) == len(pending.calls):
            pending.finished = time.perf_counter()
    return [[results[id(p)][i] for i in range(len(p.calls))] for p in pendings]


def _resend(
    pending: Pending, call: _Call, exc: BaseException, by_ref: dict[Any, tuple[Pending, _Call]]
) -> None:
    group = call.group
    assert isinstance(group, RoleGroup), "a LocalGroup's calls are done at submit time, never waited on"
    if not group.restartable:
        raise RoleDiedError(group.role, call.rank, call.method, exc) from exc
    if call.generation == group.generations[call.rank]:
        group._replace(call.rank, exc)
    group._send(call)
    by_ref[call.ref] = (pending, call)
