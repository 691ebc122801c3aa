"""The three ways to start the service, each for real in its own processes on 127.0.0.1: `emprl serve`
in the foreground (Ctrl-C stops it, nothing left behind), `serve run configs/serve.yaml`, and
`serve deploy` of the same file onto a running Ray head (started with the module, it comes up while the
other launches run)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ppo_inputs import tiny_overrides
from processes import BIN, RayHead, free_port, job_env, kill_all, leftovers, selected_tests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVE_OVERRIDES = {"serve__policy_cpus": 0.25, "serve__identifier_cpus": 0.25}


@pytest.fixture(scope="module")
def run_dir(ppo_run: Path) -> Path:
    return ppo_run


@pytest.fixture(scope="module", autouse=True)
def head(request: pytest.FixtureRequest) -> Iterator[RayHead | None]:
    """The Ray head of the deploy test, started with the module when that test is selected."""
    started = RayHead() if DEPLOY_TEST in selected_tests(request) else None
    try:
        yield started
    finally:
        if started is not None:
            started.stop()


def get(url: str, body: Any = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until_serving(
    url: str, proc: subprocess.Popen[bytes] | None, log: Path, limit_s: float = 180
) -> None:
    """Until the app's own /healthz answers (Serve's proxy answers 404 before the app is up)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before serving:\n{log.read_text()[-3000:]}")
        try:
            if get(f"{url}/healthz") == (200, '{"status":"ok"}'):
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not serving after {limit_s} s:\n{log.read_text()[-3000:]}")


def round_trip(url: str) -> None:
    status, text = get(f"{url}/v1/respond", {"turns": ["I lost my job today."], "sampling": {"seed": 1}})
    assert status == 200, text
    assert set(json.loads(text)["levels"]) == {"er", "ip", "ex"}
    status, text = get(
        f"{url}/v1/chat/completions",
        {"model": "emprl", "messages": [{"role": "user", "content": "I lost my job today."}], "seed": 1},
    )
    assert status == 200, text
    assert json.loads(text)["choices"][0]["message"]["role"] == "assistant"


def stop_with(sig: signal.Signals, proc: subprocess.Popen[bytes], marker: str, log: Path) -> float:
    """Send ``sig``; the process must exit with 0 and leave nothing running. Returns the seconds to exit."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        kill_all(marker)
        pytest.fail(f"still running 90 s after {sig.name}:\n{log.read_text()[-3000:]}")
    seconds = time.monotonic() - sent
    left = leftovers(marker)
    if left:
        kill_all(marker)
    assert code == 0, log.read_text()[-3000:]
    assert not left, f"processes left after {sig.name}: {left}"
    return seconds


def test_emprl_serve_runs_in_the_foreground_and_sigterm_stops_everything(
    run_dir: Path, tmp_path: Path
) -> None:
    env, marker = job_env()
    port = free_port()
    log = tmp_path / "serve.log"
    command = [str(BIN / "emprl"), "serve", "--run-dir", str(run_dir),
               *tiny_overrides(serve__port=port, **SERVE_OVERRIDES)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, proc, log)
        round_trip(url)
        deadline = time.monotonic() + 60  # what the user sees once every deployment is up
        while f"EmpRL serving at {url}" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # SIGTERM (docker stop, Kubernetes, systemd, `ray job stop`) takes Ctrl-C's path (Ctrl-C itself:
        # test_run_job's README serve); within 30 s, every process gone (Ray's agents included)
        seconds = stop_with(signal.SIGTERM, proc, marker, log)
        print(f"emprl serve stopped {seconds:.1f} s after SIGTERM")
        assert seconds < 30, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_all(marker)


def serve_config(run_dir: Path, port: int, folder: Path) -> Path:
    """``configs/serve.yaml`` pointed at ``run_dir`` and ``port`` with the tiny overrides."""
    config = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    assert app["import_path"] == "jobs.cli.serve:app_builder"
    app["args"]["run_dir"] = str(run_dir)
    app["args"]["overrides"] = [*app["args"]["overrides"], *tiny_overrides(**SERVE_OVERRIDES)]
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_serve_run_of_the_shipped_config_file(run_dir: Path, tmp_path: Path) -> None:
    env, marker = job_env()
    port = free_port()
    log = tmp_path / "serve_run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "serve"), "run", str(serve_config(run_dir, port, tmp_path))],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", proc, log)
        round_trip(f"http://127.0.0.1:{port}")
        # `serve run` is Serve's own command line: Ctrl-C is its stop (on SIGTERM Ray's driver aborts with
        # a signal dump, which no code of this project runs in that process to change: docs/serving.md)
        seconds = stop_with(signal.SIGINT, proc, marker, log)
        print(f"serve run stopped {seconds:.1f} s after Ctrl-C")
        assert seconds < 30, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_all(marker)


DEPLOY_TEST = "test_serve_deploy_of_the_same_file_onto_a_running_cluster"


def test_serve_deploy_of_the_same_file_onto_a_running_cluster(
    run_dir: Path, tmp_path: Path, head: RayHead
) -> None:
    port = free_port()
    config = serve_config(run_dir, port, tmp_path)
    address, env = head.ready()
    serve = [str(BIN / "serve")]
    deploy = subprocess.run([*serve, "deploy", str(config), "--address", address],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    log = tmp_path / "status.log"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # the app is built on the cluster after deploy returns
        status = subprocess.run([*serve, "status", "--address", address],
                                env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        log.write_text(status.stdout + status.stderr)
        if "DEPLOY_FAILED" in status.stdout:
            pytest.fail(f"deploy failed:\n{status.stdout}")
        if "status: RUNNING" in status.stdout:
            break
        time.sleep(1)
    wait_until_serving(f"http://127.0.0.1:{port}", None, log, limit_s=60)
    round_trip(f"http://127.0.0.1:{port}")
    shutdown = subprocess.run([*serve, "shutdown", "--address", address, "--yes"],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shutdown.returncode == 0, shutdown.stdout + shutdown.stderr
    with pytest.raises(OSError):  # the HTTP proxy is gone with the app
        get(f"http://127.0.0.1:{port}/healthz")


def test_app_builder_refuses_bad_args_with_the_fix(run_dir: Path) -> None:
    from jobs.cli.serve import app_builder

    with pytest.raises(ValueError, match="unknown"):
        app_builder({"run_dir": str(run_dir), "replicas": 2})
    with pytest.raises(ValueError, match="give run_dir"):
        app_builder({})
    with pytest.raises(ValueError, match="list of 'key=value'"):
        app_builder({"run_dir": str(run_dir), "overrides": "serve.port=1"})
    with pytest.raises(ValueError, match=r"serve\.max_batch_size"):
        app_builder({"run_dir": str(run_dir), "overrides": ["serve.max_batch_size=0"]})
    with pytest.raises(ValueError, match="no policy"):
        app_builder({"run_dir": str(run_dir.parent)})
    from ray.serve import Application

    assert isinstance(app_builder({"run_dir": str(run_dir), "overrides": tiny_overrides()}), Application)
