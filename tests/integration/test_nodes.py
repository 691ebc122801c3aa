"""The harness of nodes that share no disk (``tests/nodes.py``) checks itself: three Ray nodes on loopback,
each with a ``/tmp`` of its own, the checkout read-only on each, a job's driver on the head, a file written
on one node invisible on the others, every socket on 127.0.0.1, a node's death, and nothing left behind."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from nodes import ROOT, NoSharedDiskCluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")

PROBE = """
import json, os, sys, time
from pathlib import Path
import ray

ray.init(address="auto")
NAME = sys.argv[1]


@ray.remote(num_cpus=0)
class Probe:
    def where(self):
        scratch = Path(os.environ.get("EMPRL_SCRATCH") or "/tmp/emprl")
        own = scratch / "probe" / f"{os.environ['EMPRL_NODE']}-{NAME}.txt"
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(os.environ["EMPRL_NODE"])
        try:
            (Path(sys.argv[2]) / f".probe-{NAME}").write_text("x")
            checkout_writable = True
        except OSError:
            checkout_writable = False
        return {
            "node": os.environ.get("EMPRL_NODE"), "pid": os.getpid(), "ns": os.readlink("/proc/self/ns/mnt"),
            "home": os.environ.get("HOME"), "scratch_files": sorted(p.name for p in own.parent.iterdir()),
            "checkout_writable": checkout_writable, "node_id": ray.get_runtime_context().get_node_id(),
        }

    def write(self, path, text):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return True

    def exists(self, path):
        return os.path.exists(path)


names = ("head", "node_b", "node_c")
probes = {n: Probe.options(resources={n: 0.01}).remote() for n in names}
where = {n: ray.get(p.where.remote()) for n, p in probes.items()}
secret = f"/tmp/emprl/probe/secret-{NAME}.txt"
ray.get(probes["node_b"].write.remote(secret, "only on node_b"))
seen = {n: ray.get(p.exists.remote(secret)) for n, p in probes.items()}
nodes = [{"alive": x["Alive"], "ip": x["NodeManagerAddress"], "resources": sorted(x["Resources"])} for x in ray.nodes()]
driver = {"node": os.environ.get("EMPRL_NODE"), "ns": os.readlink("/proc/self/ns/mnt")}
print("EMPRL_PROBE " + json.dumps({"where": where, "seen": seen, "nodes": nodes, "driver": driver}), flush=True)
"""


def test_three_nodes_each_with_its_own_disk(tmp_path: Path) -> None:
    started = time.monotonic()
    job = tmp_path / "job"
    job.mkdir()
    (job / "probe.py").write_text(PROBE)
    name = uuid.uuid4().hex[:8]
    with NoSharedDiskCluster({"head": 2, "node_b": 2, "node_c": 2}, logs=tmp_path / "logs") as cluster:
        startup = cluster.startup_s
        command = [str(ROOT / ".venv" / "bin" / "python"), "probe.py", name, str(ROOT)]
        rc, logs = cluster.submit(command, job, timeout=600)
        if rc != 0 and "CreateCoreWorker" in logs:
            # the job's driver process failed to start (its raylet connection, on a loaded machine) before
            # the probe ran: submit it once more; anything else is a failure of the probe itself
            rc, logs = cluster.submit(command, job, timeout=600)
        assert rc == 0, logs[-4000:]
        line = next(ln for ln in logs.splitlines() if ln.startswith("EMPRL_PROBE "))
        probe = json.loads(line.split(" ", 1)[1])

        # three alive nodes on loopback, each with its own resource; the driver runs on the head
        assert len(probe["nodes"]) == 3 and all(n["alive"] and n["ip"] == "127.0.0.1" for n in probe["nodes"])
        assert sorted(r for n in probe["nodes"] for r in n["resources"] if r in ("head", "node_b", "node_c")) == [
            "head", "node_b", "node_c",
        ]  # fmt: skip
        assert probe["driver"]["node"] == "head"
        where = probe["where"]
        assert {n: w["node"] for n, w in where.items()} == {
            "head": "head",
            "node_b": "node_b",
            "node_c": "node_c",
        }
        assert len({w["node_id"] for w in where.values()}) == 3
        assert len({w["ns"] for w in where.values()}) == 3, "each node has its own mount namespace"
        assert probe["driver"]["ns"] == where["head"]["ns"]
        # a file written in /tmp on node_b is there only
        assert probe["seen"] == {"head": False, "node_b": True, "node_c": False}
        # each node's scratch folder holds only what was written on that node
        for node, w in where.items():
            assert w["scratch_files"] == [f"{node}-{name}.txt"], w
            assert w["home"] == "/tmp/home"
            assert not w["checkout_writable"], f"the checkout must be read-only on {node}"
        assert not (ROOT / f".probe-{name}").exists()
        # seen from outside: the file is in node_b's /tmp only, not in this machine's /tmp
        assert f"emprl/probe/secret-{name}.txt" in cluster.node_files("node_b", "/tmp")
        assert f"emprl/probe/secret-{name}.txt" not in cluster.node_files("node_c", "/tmp")
        assert not Path(f"/tmp/emprl/probe/secret-{name}.txt").exists()
        # every socket of every node is on 127.0.0.1 (listening and connected)
        conns = cluster.connections()
        assert conns["established"] and conns["listening"]
        assert cluster.off_loopback() == []

        # a node's death: every process of node_c is gone and the head notices
        cluster.kill_node("node_c")
        assert cluster.pids("node_c") == []
        deadline = (
            time.monotonic() + 120
        )  # the head declares a node dead within seconds; slack for a loaded CI machine
        while len(cluster.alive_nodes()) != 2:
            assert time.monotonic() < deadline, cluster.alive_nodes()
            time.sleep(0.5)
        namespaces = [n.namespace for n in cluster.nodes.values()]
    # nothing of the cluster is left
    assert all(not cluster.pids(n) for n in cluster.nodes)
    assert all(ns for ns in namespaces)
    print(f"startup {startup:.1f} s, whole test {time.monotonic() - started:.1f} s")
