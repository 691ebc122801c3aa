"""What every benchmark script shares: importing it first sets the process defaults (those of ``jobs``,
then no Ray auth on the local cluster, an offline Hugging Face hub) before Ray or transformers load;
then the ED folder the scripts read, and the machine's state (load average, CPUs idle or busy) they
print before and after their runs.
"""

import os
import time
from pathlib import Path

import jobs  # noqa: F401  (loopback-only Ray, quiet libraries, CPU DeepSpeed)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
ED = Path(os.environ.get("EMPRL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "empatheticdialogues"
"""The ED folder: ``$EMPRL_SHARED_DATA/empatheticdialogues``, else ``shared/data`` beside the checkout."""
IDLE_BUSY = 0.25
"""CPU busy fraction under which the machine counts as idle (:func:`wait_idle`)."""


def load_before(cpus: int | None = None) -> tuple[float, float, float]:
    """Print the load average before the runs (with ``cpus``: idle or not for that many cores) and return it."""
    load = os.getloadavg()
    if cpus is None:
        print(f"load average before: {load}")
    else:
        idle = load[0] < 0.5 * cpus
        print(f"load average before: {load} ({'idle' if idle else 'NOT idle: figures will be noisy'})")
    return load


def load_after() -> tuple[float, float, float]:
    """Print the load average after the runs and return it."""
    load = os.getloadavg()
    print(f"load average after: {load}")
    return load


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs' time spent not idle over the next ``seconds`` (Linux ``/proc/stat``); where
    there is none, the 1-minute load average per core."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # idle + iowait

    try:
        total, idle = sample()
        time.sleep(seconds)
        total2, idle2 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    return 1 - (idle2 - idle) / max(1, total2 - total)


def wait_idle(limit_s: float) -> tuple[float, float]:
    """Sample the CPUs until they are under :data:`IDLE_BUSY` busy or ``limit_s`` has passed: (busy, waited s)."""
    started = time.perf_counter()
    busy = cpu_busy()
    while busy >= IDLE_BUSY and time.perf_counter() - started < limit_s:
        busy = cpu_busy()
    return busy, time.perf_counter() - started
