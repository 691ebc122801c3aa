"""The sections about where things run: the Ray cluster and each role's share of it
(:class:`ResourcesConfig`), and the HTTP service's deployments (:class:`ServeConfig`).

Part of the schema (:mod:`pipeline.config.schema` holds the other sections); kept apart because these two
are the longest sections and change with the hardware, not with the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Ray placement strategies ``resources.placement`` may name."""
PINNABLE_ROLES = (
    "rollout worker",
    "reward scorer",
    "reference policy",
    "learner",
    "evaluation worker",
    "identifier scorer",
    "trainer",
)
"""Roles ``resources.role_nodes`` may pin to a node resource."""
NODE_RESOURCE_SHARE = 0.001
"""How much of a pinning resource a role asks for (many roles fit one node that has 1 of it)."""


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray cluster and per-role resources."""

    address: str | None = None
    """Ray address to join (``auto`` inside ``ray job submit``); ``None`` starts a local
    cluster on 127.0.0.1."""
    num_cpus: int | None = None
    """CPUs of a local cluster; ``None`` uses the machine's count."""
    use_gpu: bool = False
    """Place roles on GPUs."""
    role_gpus: float = 1.0
    """GPU share of each PPO rollout worker, reward scorer and reference policy (and of a single
    learner rank; ranks of a multi-rank learner get a whole GPU each). 0.25 packs one rollout
    worker, one scorer, the reference and one learner rank on one GPU."""
    rollout_gpus: float | None = None
    """GPU share of each rollout worker (``None``: ``role_gpus``)."""
    reward_gpus: float | None = None
    """GPU share of each reward scorer (``None``: ``role_gpus``)."""
    reference_gpus: float | None = None
    """GPU share of the reference policy (``None``: ``role_gpus``)."""
    learner_gpus: float | None = None
    """GPU share of each learner rank (``None``: a whole GPU when ``learner.num_ranks > 1``, else
    ``role_gpus``). Ranks of a multi-rank learner need more than 0.5 each: NCCL refuses two ranks on
    one GPU."""
    num_gpus: int | None = None
    """GPUs the PPO roles are sized for (a local cluster gets this many). When set, validation checks
    that the roles' GPU shares pack onto this many GPUs; ``None``: every GPU of the node, checked
    only when the roles are placed."""
    frozen_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Weights of the frozen models: the reference policy and the identifiers of the reward scorers.
    ``auto``: bf16 on CUDA (``resources.use_gpu``), fp32 on the CPU. ``fp16`` is refused (T5
    overflows in fp16). Log-probabilities and scores stay float32 either way."""
    rollout_cpus: float = 0.5
    """CPUs per rollout worker."""
    reward_cpus: float = 0.5
    """CPUs per reward scorer."""
    reference_cpus: float = 0.5
    """CPUs of the reference policy."""
    learner_cpus: float = 1.0
    """CPUs per learner rank."""
    trainer_cpus: float = 1.0
    """CPUs per Ray Train worker (identifier and SFT training); the three identifiers train
    concurrently when the cluster has CPUs for more than one."""
    torch_threads: int = 1
    """torch/OpenMP threads per actor; keep threads x actors <= cores."""
    rollout_threads: int | None = None
    """torch threads per rollout worker (``None``: ``torch_threads``); generation runs alone, so
    the workers of a node may share all its cores."""
    learner_threads: int | None = None
    """torch threads per PPO learner rank (``None``: ``torch_threads``). The update phase runs
    alone, so a single rank may use every core of its node."""
    reward_threads: int | None = None
    """torch threads per reward scorer (``None``: ``torch_threads``)."""
    in_process_roles: bool = False
    """Run the PPO rollout worker, reward scorer and reference policy as one object each inside the PPO
    driver's process (``emprl ppo``/``emprl run``'s driver, a sweep trial's function) instead of as actors,
    and with one learner rank the DeepSpeed learner too. Up to four fewer processes per PPO run (each
    imports torch and transformers, the learner DeepSpeed too: 5 to 7 CPU s and 300 MB each), for a laptop
    or a CPU sweep of many small trials; their calls then run one after another, a failed one is not
    restarted, and ``rollout.num_workers`` and ``reward.num_scorers`` shard nothing (the results are the
    same: every chunk is seeded). The roles' bundles are still reserved, so placement is unchanged. They
    stay actors where the driver cannot host them: with ``use_gpu`` (the driver holds no GPU), a
    ``collective`` weight sync, or a ``role_nodes`` pin of one of the three; the learner also with
    ``learner.num_ranks`` above 1 or a ``role_nodes`` pin of its own (see ``Config.in_process_roles`` and
    ``Config.in_process_learner``)."""
    overlap_evaluate: bool = True
    """Run the reward scorers and the reference policy side by side (with the learner's values when
    it computes them). ``false`` runs the scorers first, then the rest: on a node whose cores they
    share, each then has every core to itself instead of oversubscribing them (set
    ``reward_threads`` and ``reference_threads`` to the node's cores)."""
    reference_threads: int | None = None
    """torch threads of the reference policy (``None``: ``torch_threads``). It runs beside the
    reward scorers, whose tiny identifiers finish first: on a small node the reference may take
    every core for the rest of that phase."""
    object_store_memory: int = 500_000_000
    """Object store bytes of a local cluster."""
    scale_up_wait_s: float = 0.0
    """Seconds a stage that reserves its roles (PPO, evaluation, sweep trials) waits for nodes an
    autoscaler adds when the cluster lacks them now. ``0``: fail at once, naming requested and
    available resources (a fixed cluster). On an autoscaling cluster whose GPU workers start at 0
    (``cluster.yaml``) set about the time a node takes to boot, e.g. ``900``: the stage's demand is
    what makes the autoscaler start them."""
    node_loss_wait_s: float = 300.0
    """Seconds a PPO run (or an evaluation) whose node died waits for the lost roles' resources to come
    back (an autoscaler's replacement node, or spare capacity on the others) before it stops with the
    ``--resume`` command to run once they are back. Roles are re-created in their re-reserved bundles;
    a lost learner rank rolls every rank back to the last complete checkpoint. ``0``: stop at once."""
    placement: str = "PACK"
    """How a stage's role bundles (PPO roles, evaluation workers, a sweep trial's roles) lie on the
    nodes, as a Ray placement strategy: ``PACK`` (as few nodes as possible, spilling onto others when
    one is full), ``SPREAD``, ``STRICT_PACK`` (all on one node: learner ranks that talk NCCL, no
    cross-node weight traffic) or ``STRICT_SPREAD``. Every artifact moves through the run folder (an
    object store or a mount every node sees), so any of them works on a multi-node cluster."""
    role_nodes: str = ""
    """Pin roles to nodes by custom resource, ``"learner=big_gpu,rollout worker=small_gpu"``: each named
    role asks for 0.001 of that resource, so only nodes started with it (``ray start --resources``,
    ``cluster.yaml`` ``resources:``) hold it. Roles: rollout worker, reward scorer, reference policy,
    learner, evaluation worker, identifier scorer, trainer (the identifier and SFT Train workers)."""

    @property
    def role_node_resources(self) -> dict[str, dict[str, float]]:
        """``{role: {custom resource: 0.001}}`` parsed from :attr:`role_nodes`."""
        pinned: dict[str, dict[str, float]] = {}
        for item in filter(None, (part.strip() for part in self.role_nodes.split(","))):
            role, _, resource = item.partition("=")
            pinned[role.strip()] = {resource.strip(): NODE_RESOURCE_SHARE}
        return pinned

    @property
    def frozen_weights(self) -> Literal["fp32", "bf16"]:
        """The resolved ``frozen_precision``: ``bf16`` or ``fp32``."""
        if self.frozen_precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return "bf16" if self.frozen_precision == "bf16" else "fp32"


@dataclass(frozen=True)
class ServeConfig:
    """``emprl serve``: the HTTP service (Ray Serve) answering with a policy and scoring with the identifiers."""

    host: str = "127.0.0.1"
    """Address the HTTP proxy binds to (loopback; expose it through a reverse proxy, not here)."""
    port: int = 8000
    """HTTP port of the service."""
    policy_replicas: int = 1
    """Replicas of the policy deployment."""
    identifier_replicas: int = 1
    """Replicas of the identifier deployment (all three identifiers in each)."""
    policy_cpus: float = 1.0
    """CPUs reserved per policy replica."""
    identifier_cpus: float = 1.0
    """CPUs reserved per identifier replica."""
    torch_threads: int = 1
    """torch/OpenMP threads per replica; keep threads x replicas <= cores."""
    max_batch_size: int = 8
    """Requests generated (or scored) together in one ``@serve.batch`` call."""
    batch_wait_timeout_s: float = 0.01
    """Seconds a partial batch waits for more requests before it runs."""
    max_ongoing_requests: int = 64
    """Requests in flight per model replica (Serve's option); must be >= ``max_batch_size`` or batches
    never fill. Several batches' worth keeps the replica's batch queue full: requests waiting in
    Serve's router instead (more clients than this) are retried with a back-off and stall."""
    ingress_max_ongoing_requests: int = 256
    """Requests the ingress holds at once (it runs no model, it awaits the deployments); the model
    deployments' queues then bound the load (503 beyond ``max_queued_requests``)."""
    ingress_on_head: bool = True
    """Keep the ingress (no CPU of its own) on the head node, beside the HTTP proxy and the job's driver:
    a lost worker node then takes only model replicas with it, whose calls the ingress retries, never the
    ingress with every request in flight. ``false`` lets it run anywhere (with GCS fault tolerance, where
    the worker nodes' proxies keep serving while a new head starts)."""
    proxy_location: str = "EveryNode"
    """Where Serve runs its HTTP proxies: ``EveryNode`` (Serve's default; a load balancer in front of the
    nodes keeps answering when one is lost), ``HeadOnly`` (one address, the head's) or ``Disabled``
    (handles only, no HTTP)."""
    max_queued_requests: int = 64
    """Requests queued per caller before Serve answers 503 (-1: unbounded)."""
    request_timeout_s: float = 30.0
    """End-to-end HTTP timeout; a request running longer gets 408."""
    max_body_bytes: int = 65536
    """Largest request body accepted; larger bodies get 413 before they are parsed."""
    max_turns: int = 32
    """Most dialogue turns in one request."""
    max_text_chars: int = 2000
    """Most characters in one turn, response, emotion or situation."""
    api_key_env: str = "EMPRL_API_KEY"
    """Name of the environment variable holding an API key; when set and non-empty, every endpoint
    but ``/healthz`` and the chat page needs ``Authorization: Bearer <key>``. Keys never go into config
    files."""
    api_key_file: str = ""
    """A file holding the API key (first line), used when the variable is unset; empty: none."""
    max_candidates: int = 8
    """Most candidates one request may sample (``n_candidates``, empathy-aware decoding)."""
    max_choices: int = 4
    """Most choices one ``/v1/chat/completions`` request may ask for (OpenAI's ``n``)."""
    policy_gpus: float = 0.0
    """GPUs per policy replica; > 0 loads the policy in bf16 on CUDA (T5 overflows in fp16)."""
    identifier_gpus: float = 0.0
    """GPUs per identifier replica; > 0 loads the identifiers in bf16 on CUDA."""
    autoscaling: bool = False
    """Scale the policy and identifier replicas with load (Serve autoscaling) between ``min_replicas``
    and ``max_replicas``; the ``*_replicas`` fields are then the initial counts."""
    min_replicas: int = 1
    """Fewest replicas per deployment when autoscaling."""
    max_replicas: int = 4
    """Most replicas per deployment when autoscaling."""
    target_ongoing_requests: float = 4.0
    """Requests in flight per replica that autoscaling aims for."""
    health_check_period_s: float = 10.0
    """Seconds between health checks of a replica (a failing replica is replaced)."""
    health_check_timeout_s: float = 30.0
    """Seconds a health check may take before the replica counts as unhealthy."""
