"""Actor groups on a real local cluster: shard order, restart with replayed state, errors with role and rank."""

from __future__ import annotations

import os
import sys

import pytest
import ray

from actors.cluster.group import LocalGroup, RemoteRoleError, RoleDiedError, RoleGroup, gather

pytestmark = pytest.mark.integration

OPTIONS = {"num_cpus": 0.1}
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules


class Counter:
    """A toy role: state set by ``set_offset``, ``add`` uses it, ``die`` ends the process."""

    def __init__(self, base: int) -> None:
        self.base, self.offset = base, 0

    def set_offset(self, offset: int) -> int:
        self.offset = offset
        return offset

    def add(self, x: int) -> int:
        if x < 0:
            raise ValueError(f"negative input {x}")
        return self.base + self.offset + x

    def die(self) -> None:
        os._exit(1)

    def pid(self) -> int:
        return os.getpid()


def test_results_come_back_in_shard_order(ray_cluster: None) -> None:
    group = RoleGroup("counter", Counter, (100,), count=2, options=OPTIONS)
    try:
        (out,) = gather(group.submit("add", [(i,) for i in range(5)]))
        assert out == [100, 101, 102, 103, 104]
        a, b = gather(group.submit_all("set_offset", 7), group.submit("add", [(1,), (2,)]))
        assert a == [7, 7] and b == [108, 109]
    finally:
        group.kill()


def test_a_dead_actor_is_replaced_with_its_state_replayed_and_its_shards_rerun(ray_cluster: None) -> None:
    group = RoleGroup("counter", Counter, (0,), count=2, options=OPTIONS, max_restarts=1)
    try:
        group.remember("set_offset", 10)
        gather(group.submit_all("set_offset", 10))
        old_pid = gather(group.submit_all("pid"))[0][1]
        group.actors[1].die.remote()
        (out,) = gather(group.submit("add", [(1,), (2,), (3,), (4,)]))
        assert out == [11, 12, 13, 14]  # no shard lost or doubled, the offset replayed on the new actor
        assert group.restarts == 1
        assert gather(group.submit_all("pid"))[0][1] != old_pid
        group.actors[0].die.remote()
        with pytest.raises(RuntimeError, match="max_restarts=1"):
            gather(group.submit("add", [(1,), (2,)]))
    finally:
        group.kill()


def test_errors_name_role_and_rank_and_fixed_groups_report_deaths(ray_cluster: None) -> None:
    group = RoleGroup("reward scorer", Counter, (0,), count=2, options=OPTIONS)
    fixed = RoleGroup("learner", Counter, (0,), count=1, options=OPTIONS, restartable=False)
    try:
        with pytest.raises(
            RemoteRoleError, match=r"(?s)reward scorer rank 1 failed in add\(\).*negative input -2"
        ):
            gather(group.submit("add", [(1,), (-2,)]))
        fixed.actors[0].die.remote()
        with pytest.raises(RoleDiedError, match="learner rank 0 died"):
            gather(fixed.submit_all("add", 1))
    finally:
        group.kill()
        fixed.kill()


def test_a_local_group_answers_like_actors_in_the_same_gather(ray_cluster: None) -> None:
    """The in-process stand-in (``resources.in_process_roles``): shard order, state kept between calls,
    results gathered beside an actor group's, errors named with role and rank."""
    local = LocalGroup.build("reward scorer", Counter, (100,))
    actors = RoleGroup("counter", Counter, (100,), count=2, options=OPTIONS)
    try:
        assert len(local) == 1 and local.restarts == 0
        gather(local.submit_all("set_offset", 7), actors.submit_all("set_offset", 7))
        mine, theirs = gather(
            actors.submit("add", [(i,) for i in range(4)]), local.submit("add", [(i,) for i in range(4)])
        )
        assert mine == theirs == [107, 108, 109, 110]
        assert gather(local.submit_all("pid")) == [[os.getpid()]]  # it runs here, not in a worker
        with pytest.raises(
            RemoteRoleError, match=r"(?s)reward scorer rank 0 failed in add\(\).*negative input -2"
        ):
            local.submit("add", [(1,), (-2,)])
    finally:
        actors.kill()
        local.kill()
    assert local.actors == []


class Allocator:
    """Reports its malloc settings and the page faults of re-allocating one large tensor."""

    def malloc_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}

    def faults_of_reallocating(self, mib: int, times: int) -> int:
        import resource

        import torch

        torch.ones(mib << 18).sum()  # first touch: the heap grows once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(times):
            torch.ones(mib << 18).sum()  # float32: ``mib`` MiB, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_workers_keep_large_tensors_on_the_heap(ray_cluster: None) -> None:
    from actors.cluster.session import MALLOC_TUNING

    tuned = ray.remote(Allocator).options(num_cpus=0.1).remote()
    # glibc's own starting values, fixed: every 16 MiB tensor is mmapped, faulted in and unmapped
    default = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10), "MALLOC_TRIM_THRESHOLD_": str(128 << 10)}
    control = ray.remote(Allocator).options(num_cpus=0.1, runtime_env={"env_vars": default}).remote()
    assert ray.get(tuned.malloc_env.remote()) == MALLOC_TUNING
    assert ray.get(control.malloc_env.remote()) == default
    pages, times = 16 << 8, 20  # 16 MiB in 4 KiB pages
    control_faults = ray.get(control.faults_of_reallocating.remote(16, times))
    tuned_faults = ray.get(tuned.faults_of_reallocating.remote(16, times))
    assert control_faults >= 0.9 * pages * times, control_faults
    # the heap serves most rounds again (another thread's allocation may split the freed block now and then)
    assert tuned_faults < control_faults / 2, (tuned_faults, control_faults)
    for actor in (tuned, control):
        ray.kill(actor)
