"""Weight sync: how the learner's new policy and value-head weights reach the rollout workers.

``object_store`` (:class:`ObjectStoreSync`): learner rank 0 puts a float32 CPU state dict in Ray's object
store once; every rollout worker loads that reference. ``collective`` (:class:`CollectiveSync`): learner
rank 0 and the rollout workers form their own torch.distributed process group (a :class:`WeightGroup`,
rendezvous on a TCPStore that rank 0 hosts, apart from the learner ranks' DeepSpeed group), and rank 0
broadcasts the weights in bounded buckets straight into the workers' parameters. The group is rebuilt
whenever a member is replaced (a restarted rollout worker, a recovered learner).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch._C._distributed_c10d import TCPStore

from actors.cluster.group import Group, RemoteRoleError, gather
from pipeline.config import Config

logger = logging.getLogger(__name__)

Backend = Literal["nccl", "gloo"]

SYNC_TIMEOUT_S = 300.0
"""Longest wait of a weight-group rendezvous or broadcast before it fails."""


# ----- members: learner rank 0 and every rollout worker -----------------------------------------


def sync_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors a broadcast carries, in a fixed order: parameters (tied ones once), then buffers."""
    return [p for _, p in module.named_parameters()] + [b for _, b in module.named_buffers()]


def layout(module: nn.Module) -> str:
    """A digest of names, shapes and dtypes of :func:`sync_tensors` (ZeRO-3 shapes included), so that
    members whose models differ fail at once instead of exchanging garbage."""
    h = hashlib.sha256()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        shape = tuple(getattr(t, "ds_shape", t.shape))
        h.update(f"{name}:{shape}:{t.dtype};".encode())
    return h.hexdigest()


def checksum(module: nn.Module) -> str:
    """SHA-256 of the bytes of :func:`sync_tensors` (the module's full weights must be in place)."""
    h = hashlib.sha256()
    for t in sync_tensors(module):
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def buckets(tensors: Iterable[torch.Tensor], bucket_bytes: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of one dtype of at most ``bucket_bytes`` each (a larger tensor goes alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (t.dtype != bucket[0].dtype or size + nbytes > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def device_id(device: torch.device) -> str | None:
    """The UUID of the CUDA device a member works on (``None`` on the CPU): NCCL needs them distinct."""
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(device).uuid)


def host_store(host: str, world_size: int, timeout_s: float = SYNC_TIMEOUT_S) -> tuple[TCPStore, int]:
    """Rank 0: a new TCPStore server on ``host`` and a free port, for one build of the group."""
    store = TCPStore(
        host, 0, world_size, is_master=True, wait_for_workers=False, timeout=dt.timedelta(seconds=timeout_s)
    )
    return store, int(store.port)


class WeightGroup:
    """One member's handle on the weight-sync group: rank 0 (learner rank 0) sends, the others receive.

    Built on ``ProcessGroupNCCL`` / ``ProcessGroupGloo`` objects used directly: no default group is
    needed or touched, so learner rank 0 keeps DeepSpeed's group as its default one.
    """

    def __init__(self, pg: Any, rank: int, world_size: int, backend: Backend, store: Any) -> None:
        self.pg, self.rank, self.world_size, self.backend, self.store = pg, rank, world_size, backend, store

    @classmethod
    def join(
        cls,
        *,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: Backend,
        own_host: str,
        store: TCPStore | None = None,
        timeout_s: float = SYNC_TIMEOUT_S,
    ) -> WeightGroup:
        """Join the group whose store listens on ``host:port`` (rank 0 passes its own ``store``); blocks
        until all ``world_size`` members joined. ``own_host``: this member's address for gloo's sockets.
        NCCL works on the current CUDA device (a Ray actor sees only its own GPU: device 0)."""
        timeout = dt.timedelta(seconds=timeout_s)
        if store is None:
            store = TCPStore(host, port, world_size, is_master=False, timeout=timeout)
        if backend == "nccl":
            nccl: Any = dist.ProcessGroupNCCL  # CUDA builds of torch only
            options = nccl.Options()
            options._timeout = timeout
            pg = nccl(store, rank, world_size, options)
        else:
            options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=own_host)]
            pg = dist.ProcessGroupGloo(store, rank, world_size, options)
        return cls(pg, rank, world_size, backend, store)

    def broadcast(self, tensors: list[torch.Tensor], *, bucket_bytes: int) -> int:
        """Rank 0's ``tensors`` into every other member's ``tensors`` (same layout), in place, one
        broadcast per bucket; returns the bytes sent. gloo stages CUDA tensors through host memory."""
        comm = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )
        sent = 0
        with torch.no_grad():
            for bucket in buckets(tensors, bucket_bytes):
                if self.rank == 0:
                    flat = torch.cat([t.detach().reshape(-1).to(comm) for t in bucket])
                else:
                    flat = torch.empty(sum(t.numel() for t in bucket), dtype=bucket[0].dtype, device=comm)
                self.pg.broadcast(flat, 0).wait()
                if self.rank != 0:
                    offset = 0
                    for t in bucket:
                        t.copy_(flat[offset : offset + t.numel()].view_as(t))
                        offset += t.numel()
                sent += flat.numel() * flat.element_size()
        if self.backend == "nccl":
            torch.cuda.synchronize()
        return sent

    def close(self) -> None:
        """Leave the group (a rebuilt group replaces it)."""
        shutdown = getattr(self.pg, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception:  # a group whose peers are gone may refuse a clean shutdown
                logger.debug("weight group shutdown failed", exc_info=True)
        self.pg = None


# ----- the controller's side -------------------------------------------------------------------


class WeightSync(Protocol):
    """How the controller publishes weights; chosen by ``learner.weight_sync``."""

    def publish(self, learner: Group, rollout: Group, version: int) -> None:
        """Every rollout worker ends holding the learner's current weights as ``version``."""
        ...

    def replaced(self, learner: Group, rollout: Group, version: int) -> None:
        """A rollout worker was replaced (before its calls are re-sent): give it ``version``."""
        ...

    def invalidate(self) -> None:
        """The learner group was replaced: rebuild what depends on it before the next publish."""
        ...


class ObjectStoreSync:
    """Learner rank 0 puts the weights in the object store once; every worker loads that reference
    (a replacement worker gets the remembered call replayed by its group)."""

    def publish(self, learner: Group, rollout: Group, version: int) -> None:
        refs = gather(learner.submit_all("publish"))[0][0]
        rollout.remember("set_weights", refs, version)
        gather(rollout.submit_all("set_weights", refs, version))

    def replaced(self, learner: Group, rollout: Group, version: int) -> None:
        pass

    def invalidate(self) -> None:
        pass


class CollectiveSync:
    """Learner rank 0 broadcasts to the rollout workers over their own process group (see module doc).

    ``use_gpu`` picks NCCL when every member has a GPU of its own, else gloo (NCCL refuses two members
    on one GPU). A member replaced or lost mid-broadcast makes the group stale: it is rebuilt and the
    broadcast repeated, at most ``retries`` times per publish.
    """

    def __init__(self, *, use_gpu: bool, bucket_mb: float, retries: int, timeout_s: float = SYNC_TIMEOUT_S):
        self.use_gpu, self.retries, self.timeout_s = use_gpu, retries, timeout_s
        self.bucket_bytes = max(1, int(bucket_mb * 2**20))
        self.stale, self.busy = True, False
        self.backend: Backend | None = None
        self.builds = 0

    def invalidate(self) -> None:
        self.stale = True

    def replaced(self, learner: Group, rollout: Group, version: int) -> None:
        self.stale = True
        if not self.busy:  # between publishes: the learner's weights are still ``version``
            self.publish(learner, rollout, version)

    def publish(self, learner: Group, rollout: Group, version: int) -> None:
        self.busy = True
        try:
            for attempt in range(self.retries + 1):
                try:
                    if self.stale:
                        self._build(learner, rollout)
                    gather(
                        learner.submit_all("broadcast_weights", self.bucket_bytes),
                        rollout.submit_all("receive_weights", version, self.bucket_bytes),
                    )
                    if not self.stale:
                        return
                except RemoteRoleError as exc:
                    if attempt == self.retries:
                        raise
                    logger.warning("weight broadcast failed (%s); rebuilding the weight-sync group", exc)
                    self.stale = True
            raise RuntimeError(
                f"the weight-sync group lost members on {self.retries + 1} broadcasts in a row "
                f"(ppo.max_restarts={self.retries})"
            )
        finally:
            self.busy = False

    def _build(self, learner: Group, rollout: Group) -> None:
        """A new group of learner rank 0 (rank 0) and rollout worker ``i`` (rank ``i + 1``)."""
        self.stale = False
        first, rest = gather(learner.submit("sync_device_id", [()]), rollout.submit_all("sync_device_id"))
        devices = [first[0], *rest]
        distinct = all(d is not None for d in devices) and len(set(devices)) == len(devices)
        backend: Backend = "nccl" if self.use_gpu and distinct else "gloo"
        world = 1 + len(rollout)
        host, port = gather(learner.submit("sync_store", [(world, self.timeout_s)]))[0][0]
        common = {
            "host": host,
            "port": port,
            "world_size": world,
            "backend": backend,
            "timeout_s": self.timeout_s,
        }
        mine, theirs = gather(
            learner.submit("join_sync", [({**common, "rank": 0},)]),
            rollout.submit("join_sync", [({**common, "rank": i + 1},) for i in range(len(rollout))]),
        )
        for i, digest in enumerate(theirs):
            if digest != mine[0]:
                raise RuntimeError(
                    f"rollout worker {i} holds a model whose parameters differ from the learner's (names, "
                    "shapes or dtypes): the broadcast needs the same architecture on both sides. Fix: start "
                    "both from the same policy folder."
                )
        self.backend, self.builds = backend, self.builds + 1
        why = "" if backend == "nccl" or not self.use_gpu else " (members share a GPU, which NCCL refuses)"
        logger.info("weight-sync group %d: learner rank 0 + %d rollout workers over %s%s",
                    self.builds, len(rollout), backend, why)  # fmt: skip


def make_weight_sync(cfg: Config) -> WeightSync:
    """The :class:`WeightSync` that ``learner.weight_sync`` names (``auto``: see :attr:`Config.weight_sync`)."""
    if cfg.weight_sync == "collective":
        return CollectiveSync(
            use_gpu=cfg.resources.use_gpu,
            bucket_mb=cfg.learner.weight_sync_bucket_mb,
            retries=cfg.ppo.max_restarts,
        )
    return ObjectStoreSync()
