"""Ray nodes on this machine that share no disk: a head and workers on 127.0.0.1, each a Python process in
its own mount namespace whose ``/tmp`` is a private tmpfs (Ray's session folder, the node's scratch root
``/tmp/emprl`` and its ``HOME`` live there and vanish with the node), with the checkout visible read-only
(the software as a baked image). A folder outside ``/tmp`` that every node sees stands for a shared file
system; only build caches (``TORCH_EXTENSIONS_DIR``) use one.

Each node is started the way ``ray.cluster_utils`` does it (``ray._private.node.Node``), not with
``ray start`` (which refuses a second node on loopback; see docs/ENVIRONMENT.md), with every port of its
own. Jobs go through ``ray job submit`` against the head's dashboard, so their driver runs on the head in
the head's namespace. A node's death (:meth:`NoSharedDiskCluster.kill_node`) is SIGKILL of every process in
its namespace; :meth:`NoSharedDiskCluster.stop` ends only what the cluster started (never ``ray stop``).

Needs root (mount namespaces). Run as a script (``python nodes.py NODE_SPEC_JSON``) it is one node.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
"""The checkout every node sees read-only."""
PYTHON = Path(sys.executable)
RAY = PYTHON.parent / "ray"
BASE_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Every node's environment (loopback-only Ray, no usage stats, no auth token, offline, CPU DeepSpeed)."""
READY = "EMPRL-NODE-READY"
WORKER_PORTS = 150
"""Ports of each node's worker-port range (one per worker process)."""
NODE_TMP_SIZE = "6g"
"""Size cap of each node's private ``/tmp`` (tmpfs pages are only used when written)."""
AGENT_TIMEOUT_S = 120.0
"""How long a started head may go without a job agent (it takes a few seconds) before it counts as broken."""
PORT_LOCK = Path(tempfile.gettempdir()) / "emprl-node-ports.lock"
"""Held by whoever picks a node's ports, until the node listens on them: test processes that start clusters
at the same moment (pytest-xdist workers) do not pick the same free ports."""
_LOOPBACK = re.compile(r"^(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]|\[::1\]):\d+$")


@dataclass
class NodeProcess:
    """One started node: its name, resources, ports and the process that holds its namespace."""

    name: str
    head: bool
    num_cpus: float
    resources: dict[str, float]
    ports: dict[str, int]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    namespace: str = ""
    """``mnt:[inode]`` of the node's mount namespace (``readlink /proc/PID/ns/mnt``)."""
    started_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids_in(namespace: str) -> list[int]:
    """Every live, non-zombie process in mount namespace ``namespace``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _namespace(int(entry)) != namespace:
            continue
        try:
            state = next(
                (
                    ln
                    for ln in Path(f"/proc/{entry}/status").read_text().splitlines()
                    if ln.startswith("State:")
                ),
                "",
            )
        except OSError:
            continue
        if "zombie" not in state:
            found.append(int(entry))
    return found


class AgentMissing(RuntimeError):
    """The head's dashboard answers, but no job agent ever registered with it."""


class NodeStartFailed(RuntimeError):
    """A node's process exited while starting (e.g. its first call to a GCS slowed by a loaded machine
    timed out: "The current node timed out during startup")."""


@contextlib.contextmanager
def _port_lock() -> Iterator[None]:
    """An exclusive lock across this machine's processes (``flock`` on :data:`PORT_LOCK`)."""
    with PORT_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (all held open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _free_range(size: int, taken: set[int]) -> int:
    """The first port of ``size`` consecutive ports, below the ephemeral range (32768) and above Ray's
    default worker ports (10002-19999, used by other local clusters), all bindable now."""
    for _ in range(200):
        start = random.randrange(20000, 32000 - size)
        ports = range(start, start + size)
        if taken & set(ports):
            continue
        ok = True
        for port in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            taken.update(ports)
            return start
    raise RuntimeError(f"no {size} consecutive free ports found in 20000-32000 on 127.0.0.1")


class NoSharedDiskCluster:
    """A Ray head and worker nodes on 127.0.0.1, each in its own mount namespace with a private ``/tmp``.

    ``nodes`` maps node names to ``(num_cpus, custom resources)``; the first is the head. Every node also
    gets the resource ``{name: 1}``, so a test places work with ``resources={"node_b": 0.01}``. ``env``
    goes to every node (e.g. the object store's endpoint and keys: the nodes' "instance role").
    ``shared`` is a folder outside ``/tmp`` every node sees (``TORCH_EXTENSIONS_DIR`` goes there, so
    DeepSpeed's JIT builds are not redone per node); ``None`` uses ``~/.cache``'s folder of this user.
    """

    def __init__(
        self,
        nodes: Mapping[str, float] | None = None,
        *,
        env: dict[str, str] | None = None,
        shared: Path | None = None,
        object_store_memory: int = 200_000_000,
        logs: Path | None = None,
        readonly: Sequence[Path] = (ROOT,),
        startup_timeout_s: float = 120.0,
    ) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("NoSharedDiskCluster needs root (mount namespaces via `unshare --mount`)")
        for tool in ("unshare", "nsenter", "mount"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"NoSharedDiskCluster needs `{tool}` (util-linux) on PATH")
        spec = nodes or {"head": 2, "node_b": 2, "node_c": 2}
        self.env = {**BASE_ENV, **(env or {})}
        shared_dir = shared or Path.home() / ".cache"
        if Path("/tmp") in [shared_dir, *shared_dir.parents]:
            raise ValueError(
                f"shared={shared_dir} is under /tmp, which no node shares; give a folder outside /tmp"
            )
        self.env.setdefault("TORCH_EXTENSIONS_DIR", str(shared_dir / "torch_extensions"))
        self.object_store_memory = object_store_memory
        self.readonly = [Path(p).resolve() for p in readonly]
        self.startup_timeout_s = startup_timeout_s
        self._own_logs = logs is None
        self.logs = logs or Path(tempfile.mkdtemp(prefix="emprl-nodes-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        # folders outside /tmp that hold read-only paths under /tmp across the tmpfs (rarely needed)
        self._holds = Path(
            tempfile.mkdtemp(prefix="emprl-node-holds-", dir="/run" if os.path.isdir("/run") else "/var/tmp")
        )
        self._taken: set[int] = set()
        self._spec = {name: float(cpus) for name, cpus in spec.items()}
        self.nodes: dict[str, NodeProcess] = {}
        self._plan()
        self.startup_s = 0.0

    def _plan(self) -> None:
        """The nodes of ``spec``, not started, without ports yet (:meth:`start` picks them)."""
        names = list(self._spec)
        self.nodes = {
            name: self._node(name, self._spec[name], {name: 1.0}, head=index == 0)
            for index, name in enumerate(names)
        }
        self.head = self.nodes[names[0]]

    def _node(self, name: str, num_cpus: float, resources: dict[str, float], *, head: bool) -> NodeProcess:
        return NodeProcess(
            name=name,
            head=head,
            num_cpus=num_cpus,
            resources=resources,
            ports={},
            log=self.logs / f"{name}.log",
        )

    def _pick_ports(self, node: NodeProcess) -> None:
        """Free ports for every server of ``node`` (hold :func:`_port_lock` from here until it listens)."""
        port_names = ["node_manager", "object_manager", "metrics_export", "metrics_agent",
                      "dashboard_agent_http", "runtime_env_agent"]  # fmt: skip
        if node.head:
            port_names += ["gcs", "dashboard"]
        ports = dict(zip(port_names, _free_ports(len(port_names)), strict=True))
        ports["min_worker"] = _free_range(WORKER_PORTS, self._taken)
        ports["max_worker"] = ports["min_worker"] + WORKER_PORTS - 1
        node.ports = ports

    # -- addresses -----------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:PORT``)."""
        return f"127.0.0.1:{self.head.ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        """The head's dashboard (the jobs API): ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.head.ports['dashboard']}"

    # -- life cycle ----------------------------------------------------------------------------------
    def __enter__(self) -> NoSharedDiskCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NoSharedDiskCluster:
        """Start the head, then every worker node; return once all of them are alive in the GCS and the
        head's job agent takes jobs. A cluster whose job agent never comes (it could not bind its port:
        another process took it between our choice and its start), or one of whose nodes exited while
        starting (its GCS calls timed out on a loaded machine), is stopped and started again on new ports,
        once."""
        started = time.monotonic()
        try:
            try:
                self._start_nodes()
            except (AgentMissing, NodeStartFailed) as missing:
                self.stop()
                print(
                    f"nodes: {missing}; starting the cluster again on new ports", file=sys.stderr, flush=True
                )
                self._plan()
                self._start_nodes()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _start_nodes(self) -> None:
        """One try of :meth:`start`: ports, the head, the workers, then the job agent."""
        with _port_lock():  # no other cluster of this machine picks ports until ours listen
            for node in self.nodes.values():
                self._pick_ports(node)
            self._launch(self.head)
            self._wait_ready([self.head])
            workers = [n for n in self.nodes.values() if not n.head]
            for node in workers:
                self._launch(node)
            self._wait_ready(workers)
        self._wait_alive(len(self.nodes), time.monotonic())
        self._wait_job_agent(AGENT_TIMEOUT_S)

    def _wait_job_agent(self, timeout_s: float) -> None:
        """Until the head's dashboard hands a job to the head's job agent (``POST /api/jobs/`` of a no-op
        answers 200); :class:`AgentMissing` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        body = json.dumps(
            {"entrypoint": "true", "submission_id": f"emprl-agent-check-{uuid.uuid4().hex[:8]}"}
        )
        answer = ""
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                f"{self.dashboard_url}/api/jobs/", data=body.encode(), method="POST",
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                answer = e.read().decode(errors="replace")[-300:]
                if "already exists" in answer:  # an earlier try's job got through
                    return
            except OSError as e:
                answer = str(e)
            time.sleep(2)
        raise AgentMissing(
            f"the head's job agent took no job within {timeout_s:.0f} s (last answer: {answer}); logs in {self.logs}"
        )

    def add_node(self, name: str, num_cpus: float, resources: Mapping[str, float] | None = None) -> float:
        """Start one more worker node (an autoscaler's replacement): resource ``{name: 1}`` plus
        ``resources`` (e.g. the lost node's ``{"node_b": 1}``: the same node type). Returns once the head
        lists it alive; the seconds that took."""
        started = time.monotonic()
        for attempt in (1, 2):  # a node that exits while starting (a loaded machine) is started once more
            node = self._node(name, num_cpus, {name: 1.0, **(resources or {})}, head=False)
            self.nodes[name] = node
            try:
                with _port_lock():
                    self._pick_ports(node)
                    self._launch(node)
                    self._wait_ready([node])
                break
            except NodeStartFailed as failed:
                if attempt == 2:
                    raise
                print(f"nodes: {failed}; starting node {name} again", file=sys.stderr, flush=True)
                self.kill_node(name)  # whatever the failed start left in its namespace goes first
        deadline = time.monotonic() + self.startup_timeout_s
        while not any(name in row.get("resources_total", {}) for row in self.alive_nodes()):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the head did not list node {name} alive within {self.startup_timeout_s:.0f} s"
                )
            time.sleep(0.5)
        return time.monotonic() - started

    def _node_params(self, node: NodeProcess) -> dict[str, Any]:
        p = node.ports
        params: dict[str, Any] = {
            "node_ip_address": "127.0.0.1",
            "num_cpus": node.num_cpus,
            "num_gpus": 0,
            "resources": node.resources,
            "object_store_memory": self.object_store_memory,
            "temp_dir": "/tmp/ray",
            "node_manager_port": p["node_manager"],
            "object_manager_port": p["object_manager"],
            "metrics_export_port": p["metrics_export"],
            "metrics_agent_port": p["metrics_agent"],
            "dashboard_agent_listen_port": p["dashboard_agent_http"],
            "runtime_env_agent_port": p["runtime_env_agent"],
            "min_worker_port": p["min_worker"],
            "max_worker_port": p["max_worker"],
            "include_log_monitor": True,  # every node has its own log folder: each needs its monitor
            "ray_client_server_port": None,
        }
        if node.head:
            params.update(
                gcs_server_port=p["gcs"], include_dashboard=True, dashboard_host="127.0.0.1",
                dashboard_port=p["dashboard"],
            )  # fmt: skip
        else:
            params.update(gcs_address=self.address, include_dashboard=False)
        return params

    def _launch(self, node: NodeProcess) -> None:
        spec = json.dumps({"name": node.name, "head": node.head, "params": self._node_params(node)})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "EMPRL_SCRATCH"))}
        env.update(self.env)
        env["HOME"] = "/tmp/home"
        env["EMPRL_NODE"] = node.name
        env.pop("RAY_TMPDIR", None)
        env.pop("TMPDIR", None)
        hold = self._holds / node.name
        setup = ["set -e"]
        under_tmp = [p for p in self.readonly if Path("/tmp") in p.parents]
        for i, path in enumerate(under_tmp):  # keep them across the new /tmp
            setup += [f"mkdir -p {hold}/{i}", f"mount --bind {shlex.quote(str(path))} {hold}/{i}"]
        setup.append(f"mount -t tmpfs -o size={NODE_TMP_SIZE},mode=1777 tmpfs /tmp")
        for i, path in enumerate(under_tmp):
            q = shlex.quote(str(path))
            setup += [f"mkdir -p {q}", f"mount --move {hold}/{i} {q}"]
        for path in self.readonly:
            q = shlex.quote(str(path))
            if path not in under_tmp:
                setup.append(f"mount --bind {q} {q}")
            setup.append(f"mount -o remount,bind,ro {q}")
        setup += ["mkdir -p /tmp/home", 'exec "$@"']
        command = [
            "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(setup), "node",
            str(PYTHON), str(Path(__file__).resolve()), spec,
        ]  # fmt: skip
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                command, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        node.started_s = time.monotonic()

    def _wait_ready(self, nodes: list[NodeProcess]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        waiting = list(nodes)
        while waiting:
            for node in list(waiting):
                assert node.proc is not None
                if not node.namespace:
                    ns = _namespace(node.proc.pid)
                    if ns and ns != _namespace(os.getpid()):
                        node.namespace = ns
                if READY in node.log.read_text(errors="replace"):
                    node.extra["ready_s"] = time.monotonic() - node.started_s
                    waiting.remove(node)
                elif node.proc.poll() is not None:
                    raise NodeStartFailed(
                        f"node {node.name} exited with code {node.proc.returncode} while starting; its log "
                        f"{node.log}:\n{node.log.read_text(errors='replace')[-3000:]}"
                    )
            if waiting and time.monotonic() > deadline:
                names = ", ".join(n.name for n in waiting)
                raise RuntimeError(
                    f"nodes {names} not up within {self.startup_timeout_s:.0f} s; logs in {self.logs}"
                )
            time.sleep(0.2)

    def _wait_alive(self, count: int, started: float) -> None:
        """Until the head's state API lists ``count`` alive nodes."""
        deadline = started + self.startup_timeout_s
        while True:
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the head did not list {count} alive nodes within {self.startup_timeout_s:.0f} s"
                )
            time.sleep(0.5)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The nodes the head's state API lists as ALIVE (each with ``node_ip``, ``resources_total``)."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=100", timeout=5) as r:
            body = json.loads(r.read())
        rows = body["data"]["result"]["result"]
        return [row for row in rows if row.get("state") == "ALIVE"]

    def pids(self, name: str) -> list[int]:
        """Every live process of node ``name`` (those in its mount namespace); none once the node's own
        process has exited (the kernel may give a later node the same namespace inode)."""
        node = self.nodes[name]
        if not node.namespace or node.proc is None or node.proc.poll() is not None:
            return []
        return _pids_in(node.namespace)

    def kill_node(self, name: str) -> None:
        """A node's death: SIGKILL every process in its namespace (its private ``/tmp`` goes with them)."""
        node = self.nodes[name]
        if not node.namespace:  # never got past `unshare`: only its own process exists
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)
            return
        for _ in range(50):
            pids = _pids_in(node.namespace)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if node.proc is not None:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        left = _pids_in(node.namespace)
        if left:
            raise RuntimeError(f"node {name}: processes {left} survived SIGKILL")

    def stop(self) -> None:
        """End every node: SIGTERM each node's process (Ray's own shutdown), then SIGKILL whatever is left
        in its namespace. Workers first, the head last."""
        order = [n for n in self.nodes.values() if not n.head] + [self.head]
        for node in order:
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for node in order:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self.kill_node(node.name)
        shutil.rmtree(self._holds, ignore_errors=True)

    # -- inspecting nodes ----------------------------------------------------------------------------
    def node_files(self, name: str, path: str = "/tmp") -> list[str]:
        """Every file under ``path`` as node ``name`` sees it (``find`` inside its mount namespace), relative
        to ``path``; ``[]`` if it does not exist there."""
        node = self.nodes[name]
        assert node.proc is not None and node.proc.poll() is None, f"node {name} is not running"
        done = subprocess.run(
            ["nsenter", f"--mount=/proc/{node.proc.pid}/ns/mnt", "--", "find", path, "-type", "f"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0 and "No such file" in done.stderr:
            return []
        prefix = path.rstrip("/") + "/"
        return sorted(line.removeprefix(prefix) for line in done.stdout.splitlines() if line)

    def connections(self) -> dict[str, list[tuple[str, str, str]]]:
        """TCP sockets of the cluster's processes (``ss -tanp``): ``{"established": [(process, local, peer)],
        "listening": [...]}``."""
        ours = {
            pid: node.name
            for node in self.nodes.values()
            if node.namespace
            for pid in _pids_in(node.namespace)
        }
        done = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, timeout=30, check=True)
        found: dict[str, list[tuple[str, str, str]]] = {"established": [], "listening": []}
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) < 6:
                continue
            state, local, peer, users = parts[0], parts[3], parts[4], " ".join(parts[5:])
            owners = [
                (int(p), n) for p, n in ((m, ours.get(int(m))) for m in re.findall(r"pid=(\d+)", users)) if n
            ]
            if not owners:
                continue
            name = re.search(r'\(\("([^"]+)"', users)
            who = f"{owners[0][1]}:{name.group(1) if name else '?'}"
            if state == "LISTEN":
                found["listening"].append((who, local, peer))
            elif state == "ESTAB":
                found["established"].append((who, local, peer))
        return found

    def off_loopback(self) -> list[tuple[str, str, str]]:
        """Established connections or listening sockets of the cluster not on 127.0.0.1 (should be none)."""
        conns = self.connections()
        bad = [c for c in conns["established"] if not (_LOOPBACK.match(c[1]) and _LOOPBACK.match(c[2]))]
        bad += [c for c in conns["listening"] if not _LOOPBACK.match(c[1])]
        return bad

    # -- jobs ----------------------------------------------------------------------------------------
    def submit(
        self,
        command: Sequence[str],
        working_dir: Path,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 900.0,
        log: Path | None = None,
    ) -> tuple[int, str]:
        """``ray job submit`` of ``command`` with ``working_dir`` to the head; waits for the job and returns
        its exit code and logs (also streamed to ``log`` if given). The driver runs on the head."""
        runtime_env = json.dumps({"env_vars": env or {}})
        cli = [
            str(RAY), "job", "submit", "--address", self.dashboard_url, "--working-dir", str(working_dir),
            "--runtime-env-json", runtime_env, "--", *command,
        ]  # fmt: skip
        cli_env = self._cli_env()
        deadline = time.monotonic() + timeout
        agent_deadline = time.monotonic() + AGENT_TIMEOUT_S  # a head whose agent is gone stays without one
        while True:  # start() waited for the job agent; a new one (after a head restart) takes seconds
            out_path = log or self.logs / f"job-{time.time_ns()}.log"
            with out_path.open("w") as out:
                proc = subprocess.Popen(cli, env=cli_env, stdout=out, stderr=subprocess.STDOUT, text=True)
                try:
                    rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    rc = 124
            output = out_path.read_text(errors="replace")
            if "No available agent" in output and time.monotonic() < min(deadline - 30, agent_deadline):
                time.sleep(2)
                continue
            return rc, output

    def start_job(
        self, command: Sequence[str], working_dir: Path, *, env: dict[str, str] | None = None
    ) -> str:
        """``ray job submit --no-wait`` of ``command`` (e.g. a server that runs until stopped); returns the
        job's submission id (for :meth:`job_logs` and :meth:`stop_job`)."""
        job_id = f"emprl-{uuid.uuid4().hex[:10]}"
        cli = [
            str(RAY), "job", "submit", "--no-wait", "--submission-id", job_id, "--address", self.dashboard_url,
            "--working-dir", str(working_dir), "--runtime-env-json", json.dumps({"env_vars": env or {}}),
            "--", *command,
        ]  # fmt: skip
        for _ in range(30):  # the head's job agent starts a few seconds after the dashboard answers
            done = subprocess.run(cli, env=self._cli_env(), capture_output=True, text=True, timeout=300)
            if "No available agent" not in done.stdout + done.stderr:
                break
            time.sleep(2)
        if done.returncode != 0:
            raise RuntimeError(
                f"ray job submit --no-wait failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return job_id

    def job_logs(self, job_id: str) -> str:
        """What job ``job_id`` printed so far (the jobs API's ``GET /api/jobs/<id>/logs``, what ``ray job logs``
        reads: no CLI process, which costs two CPU seconds, per look at a running job)."""
        url = f"{self.dashboard_url}/api/jobs/{urllib.parse.quote(job_id)}/logs"
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                return str(json.loads(r.read())["logs"])
        except (OSError, ValueError, KeyError) as exc:
            return f"(no logs of job {job_id}: {exc})"

    def job_status(self, job_id: str) -> str:
        """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED`` (the jobs API's word)."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/{job_id}", timeout=10) as r:
            return str(json.loads(r.read())["status"])

    def wait_job(self, job_id: str, timeout_s: float) -> tuple[str, str]:
        """Until job ``job_id`` ends (failing after ``timeout_s`` with its logs); its final status and logs."""
        deadline = time.monotonic() + timeout_s
        while (status := self.job_status(job_id)) in ("PENDING", "RUNNING"):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} still {status} after {timeout_s:.0f} s:\n{self.job_logs(job_id)[-6000:]}"
                )
            time.sleep(1)
        return status, self.job_logs(job_id)

    def stop_job(self, job_id: str) -> None:
        """``ray job stop`` (SIGTERM to the job's driver, then SIGKILL), waiting for the job to end."""
        cli = [str(RAY), "job", "stop", "--address", self.dashboard_url, job_id]
        subprocess.run(cli, env=self._cli_env(), capture_output=True, text=True, timeout=120)

    def _cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(BASE_ENV)
        return env

    def worker_pids(self) -> dict[int, str]:
        """``{pid: node}`` of every Ray worker process each node has started this session (from the
        ``worker-*-<pid>.out`` files in its log folder): attributes a job's ``(Actor pid=N)`` lines to nodes."""
        found: dict[int, str] = {}
        for name, node in self.nodes.items():
            if node.proc is None or node.proc.poll() is not None:
                continue
            for file in self.node_files(name, "/tmp/ray/session_latest/logs"):
                match = re.fullmatch(
                    r"(?:python-core-)?worker-[0-9a-f]+-[0-9a-f]+-(\d+)\.(?:out|err|log)", file
                )
                if match:
                    found[int(match.group(1))] = name
        return found


def _run_node(spec: dict[str, Any]) -> None:
    """Inside the node's namespace: start the node's Ray processes, then sleep until told to stop."""
    import ray._private.node
    from ray._private.parameter import RayParams

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    params = RayParams(**spec["params"])
    node = ray._private.node.Node(params, head=spec["head"], shutdown_at_exit=True, spawn_reaper=True)
    if spec["head"]:
        # what `ray start --head` writes: a job's driver (`ray.init(address="auto")`) reads it; without it
        # Ray falls back to the first GCS process it finds on the machine, possibly another cluster's
        from ray._private.utils import write_ray_address

        write_ray_address(node.gcs_address, params.temp_dir)
    print(f"{READY} {spec['name']} gcs={node.gcs_address} session={node.session_name}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    _run_node(json.loads(sys.argv[1]))
