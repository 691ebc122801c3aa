"""CPU seconds a new process spends importing what it runs, per kind of process, side by side with a git ref.

    python benchmarks/process_start.py [--baseline-ref HEAD~1] [--repeats 3]

Every Ray actor is a process of its own that imports its class's module before its first call: on the tiny
models of the tests that import is nearly all of the process's CPU (a tiny sweep trial starts seven: its
function, the four PPO roles, an evaluation worker and an identifier scorer, each importing torch and
transformers). For each kind below the script imports the module in a fresh interpreter ``--repeats``
times, in this checkout and in ``--baseline-ref`` (a temporary git worktree), and prints the median CPU
seconds (user + system) of each, their ratio, and the heavy packages the import loaded that the baseline's
did not (and the reverse). Run it on an idle machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# first: the process defaults, before Ray or transformers load
from machine import ROOT, load_after, load_before

KINDS = {
    "PPO rollout worker": "actors.ppo.rollout",
    "PPO reward scorer": "actors.ppo.reward",
    "PPO reference policy": "actors.ppo.reference",
    "PPO learner": "actors.ppo.learner",
    "evaluation worker": "actors.inference.evaluator",
    "identifier scorer": "actors.inference.scorer",
    "labelling worker": "actors.inference.labeling",
    "Train worker (SFT)": "actors.training.sft_worker",
    "sweep trial function": "jobs.stages.tune.trial",
    "Serve replicas": "actors.serving.deployments",
    "emprl CLI": "jobs.cli.main",
}
"""What a process of each kind imports first: the module of its actor class or function."""
HEAVY = ("ray.train", "ray.data", "ray.tune", "ray.serve", "pandas", "datasets", "matplotlib", "deepspeed",
         "transformers", "torch", "scipy", "sympy", "torch._dynamo", "boto3")  # fmt: skip
PROBE = """
import json, resource, sys
import {module}
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"file": sys.modules["{module}"].__file__, "cpu": usage.ru_utime + usage.ru_stime, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def measure(checkout: Path, module: str, repeats: int) -> tuple[float, list[str]]:
    """Median CPU seconds of a fresh interpreter importing ``module`` from ``checkout``, and what it loaded.
    A first import, not counted, compiles the checkout's bytecode (a new worktree has none); every import
    must come from ``checkout``, not from the editable install's folder."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    runs = []
    for _ in range(repeats + 1):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)],
            cwd=checkout, env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        run = json.loads(out.stdout.strip().splitlines()[-1])
        if not Path(run["file"]).is_relative_to(checkout):
            raise SystemExit(f"{module} was imported from {run['file']}, not from {checkout}")
        runs.append(run)
    return statistics.median(r["cpu"] for r in runs[1:]), runs[0]["loaded"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-ref", default="HEAD", help="git ref to compare with (default HEAD)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before(os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="emprl-baseline-") as tmp:
        baseline = Path(tmp) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline_ref], cwd=ROOT,
                       check=True, capture_output=True)  # fmt: skip
        try:
            print(
                f"{'process':22} {'module':28} {'this s':>7} {args.baseline_ref + ' s':>10} {'ratio':>6}  loaded"
            )
            totals = [0.0, 0.0]
            for kind, module in KINDS.items():
                now, loaded = measure(ROOT, module, args.repeats)
                before, loaded_before = measure(baseline, module, args.repeats)
                totals[0] += now
                totals[1] += before
                diff = [f"-{m}" for m in loaded_before if m not in loaded] + [
                    f"+{m}" for m in loaded if m not in loaded_before
                ]
                print(f"{kind:22} {module:28} {now:7.2f} {before:10.2f} {now / before:6.2f}  "
                      f"{' '.join(loaded)}{'  (' + ' '.join(diff) + ')' if diff else ''}")  # fmt: skip
            print(f"{'all kinds':51} {totals[0]:7.2f} {totals[1]:10.2f} {totals[0] / totals[1]:6.2f}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False)
    load_after()


if __name__ == "__main__":
    main()
