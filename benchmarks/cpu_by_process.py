"""Where a command's CPU goes, by kind of process: Ray actors by class and method, Ray's own daemons, drivers.

    python benchmarks/cpu_by_process.py [--interval 0.5] [--top 30] -- COMMAND [ARGS...]
    python benchmarks/cpu_by_process.py -- .venv/bin/pytest -q tests/integration/test_tune.py

Runs COMMAND and, every ``--interval`` seconds until it ends, reads ``/proc`` for every process that started
after it began (run it on an otherwise idle machine: other users' new processes would count too). Each
process is named by its title (a Ray worker's ``ray::Class.method``, ``ray::IDLE`` until its first task) or
its program (``raylet``, ``gcs_server``, the dashboard and its agents, ``pytest``, ``emprl``); a worker seen
idle first is counted under what it ran next. It prints the CPU seconds (user + system) of each kind, the
number of processes and the mean per process, and what the sampled processes add up to against the
machine's busy CPU over the same time (from ``/proc/stat``: the share the samples caught; a process that
lives less than one interval may be missed, and a worker whose titled life is shorter than one interval stays
under ``ray::IDLE`` or ``default_worker``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PROGRAMS = ("raylet", "gcs_server")
"""Ray daemons, known by their program's name."""
SCRIPTS = ("dashboard/agent", "dashboard.py", "runtime_env/agent", "log_monitor", "monitor.py", "default_worker",
           "moto", "pytest", "emprl", "chromium", "chromedriver")  # fmt: skip
"""Python programs (and a browser), known by a part of their command line, in this order."""


@dataclass
class Seen:
    kind: str
    cpu: float = 0.0
    system: float = 0.0


def kind_of(argv: list[str]) -> str:
    """A process's kind from its command line (a Ray worker's title replaces it: ``ray::Class.method``)."""
    if argv[0].startswith("ray::"):
        return argv[0].split()[0][:48]
    program = Path(argv[0]).name
    if program in PROGRAMS:
        return program
    line = " ".join(argv)
    return next((script for script in SCRIPTS if script in line), program[:32])


def busy_seconds() -> float:
    """The machine's busy CPU seconds since boot, all cores (``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def sample(since: float, seen: dict[tuple[int, int], Seen]) -> None:
    """Update ``seen`` with every process that started after ``since`` (seconds after boot)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            argv = Path(entry.path, "cmdline").read_text().split("\0")
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        started = int(fields[19]) / TICK
        if started < since or not argv[0]:  # older than the command, or a kernel thread
            continue
        key = (int(entry.name), int(fields[19]))
        kind = kind_of(argv)
        record = seen.setdefault(key, Seen(kind))
        if record.kind in ("ray::IDLE", "default_worker") and kind not in ("ray::IDLE", "default_worker"):
            record.kind = kind  # an idle worker's CPU (its imports) counts for what it ran
        record.cpu = (int(fields[11]) + int(fields[12])) / TICK
        record.system = int(fields[12]) / TICK


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two looks at /proc")
    parser.add_argument("--top", type=int, default=30, help="kinds to print, most CPU first")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given: pass it after --")
    print(f"load average before: {os.getloadavg()}")
    since = float(Path("/proc/uptime").read_text().split()[0]) - 0.1
    busy, started = busy_seconds(), time.monotonic()
    seen: dict[tuple[int, int], Seen] = {}
    process = subprocess.Popen(command)
    while process.poll() is None:
        sample(since, seen)
        time.sleep(args.interval)
    wall, busy = time.monotonic() - started, busy_seconds() - busy
    kinds: dict[str, list[float]] = {}
    for record in seen.values():
        row = kinds.setdefault(record.kind, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += record.cpu
        row[2] += record.system
    total = sum(row[1] for row in kinds.values())
    print(f"\n{'CPU s':>8} {'system':>7} {'share':>6} {'procs':>6} {'s/proc':>7}  kind")
    for kind, (count, cpu, system) in sorted(kinds.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(
            f"{cpu:8.1f} {system:7.1f} {cpu / max(total, 1e-9):6.1%} {int(count):6d} {cpu / count:7.2f}  {kind}"
        )
    print(f"\n{total:.0f} CPU s in {len(seen)} processes over {wall:.0f} s wall; the machine was busy {busy:.0f} CPU s "
          f"({total / max(busy, 1e-9):.0%} of it sampled); exit {process.returncode}")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    raise SystemExit(process.returncode)


if __name__ == "__main__":
    main()
