"""What a user reads when a node is lost for good: the lost node, its resources, what the reservation
lacks, and the exact command that resumes the run (this command line with ``--resume``, or for
``emprl run`` the PPO resume and the evaluation); and SIGTERM taking Ctrl-C's path."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import time

import pytest

from actors.cluster.recovery import LostNode, NodeLostError
from actors.cluster.session import stop_on_sigterm
from jobs.launch.stage import node_loss_stop, resume_command


def _lost() -> NodeLostError:
    node = LostNode("95c84a39d55e0000", {"CPU": 2.0, "node_b": 1.0, "memory": 1e9, "node:127.0.0.1": 1.0})
    return NodeLostError("PPO", [node], {"CPU": 0.2, "node_b": 0.001}, 20.0)


def test_the_message_names_the_node_its_resources_and_what_is_missing() -> None:
    text = str(_lost())
    assert "node 95c84a39d55e {CPU: 2, node_b: 1} died" in text  # Ray's bookkeeping resources left out
    assert "({CPU: 0.2, node_b: 0.001})" in text and "within 20 s (resources.node_loss_wait_s)" in text


def test_the_stop_gives_this_command_line_with_resume() -> None:
    argv = [
        "ppo",
        "--run-dir",
        "s3://b/runs/r",
        "resources.role_nodes=learner=gpu big",
        "resources.address=auto",
    ]
    args = argparse.Namespace(command="ppo", argv=argv)
    with pytest.raises(SystemExit) as stop, node_loss_stop(args):
        raise _lost()
    message = str(stop.value)
    assert message.startswith("node lost: PPO: node 95c84a39d55e")
    command = message.splitlines()[-1].strip()
    assert command == resume_command(args)
    assert shlex.split(command) == ["emprl", *argv, "--resume"]  # quoted where it must be: it runs as shown
    already = argparse.Namespace(command="ppo", argv=[*argv, "--resume"])
    assert shlex.split(resume_command(already)).count("--resume") == 1


def test_a_whole_run_names_the_ppo_resume_and_the_evaluation() -> None:
    args = argparse.Namespace(command="run", argv=["run"])
    then = "emprl ppo --run-dir s3://b/runs/r --resume\n  emprl evaluate --run-dir s3://b/runs/r"
    with pytest.raises(SystemExit) as stop, node_loss_stop(args, then):
        raise _lost()
    assert str(stop.value).endswith(then)


def test_sigterm_raises_keyboard_interrupt_once() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread as soon as the signal arrives
        os.kill(os.getpid(), signal.SIGTERM)  # a second one while stopping: logged, ignored
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
