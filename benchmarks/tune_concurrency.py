"""Wall time of the tiny sweep with 1 vs 2 concurrent trials, per scheduler, side by side.

    python benchmarks/tune_concurrency.py [--run-dir runs/sweep_bench] [--space configs/sweeps/tiny.yaml]
        [--schedulers asha fifo] [--concurrency 1 2] [--repeats 1] [--cpus 2]

Builds the sweep's inputs once with the ``sweep_tiny`` preset on the demo data (the whole pipeline,
into ``--run-dir``, reused when present), then runs the same sweep (``--space``, seeded draws) into a
fresh folder for every scheduler and concurrency, and prints the wall time of each, the trials
completed / stopped, and the ratio of 2-at-once to 1-at-once. Run it on an otherwise idle machine: the
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

# first: the process defaults, before Ray or transformers load
from machine import load_after, load_before

from actors.cluster.session import ray_session
from jobs.cli.run import run
from jobs.stages.tune import SweepSettings, tune_stage
from pipeline.config import load_config
from pipeline.config.search_space import load_search_space
from pipeline.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "sweep_bench")
    parser.add_argument("--space", type=Path, default=ROOT / "configs" / "sweeps" / "tiny.yaml")
    parser.add_argument("--schedulers", nargs="+", default=["asha", "fifo"], choices=["asha", "fifo"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (the median is shown)")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    cfg = load_config("sweep_tiny", [f"resources.num_cpus={args.cpus}"])
    layout = RunLayout(args.run_dir)
    space = load_search_space(args.space, cfg)
    load_before()
    with ray_session(cfg.resources):
        if not layout.sft.policy.exists():
            started = time.perf_counter()
            layout.root.mkdir(parents=True, exist_ok=True)
            run(cfg, layout)
            print(f"sweep inputs built in {time.perf_counter() - started:.0f} s: {layout.root}")
        rows = []
        for scheduler in args.schedulers:
            times: dict[int, list[float]] = {}
            outcome: dict[int, str] = {}
            for n in args.concurrency:
                for repeat in range(args.repeats):
                    out = layout.root / f"sweep_{scheduler}_{n}_{repeat}"
                    shutil.rmtree(out, ignore_errors=True)
                    # the trials alone, as measured before sweeps had a control, a confirmation and a pilot
                    settings = SweepSettings(
                        scheduler=scheduler, max_concurrent_trials=n, control=False, dev_examples=32
                    )
                    started = time.perf_counter()
                    result = tune_stage(cfg, layout, space, settings, sweep_dir=out)
                    times.setdefault(n, []).append(time.perf_counter() - started)
                    m = result.metrics
                    outcome[n] = (
                        f"{m['completed']} completed, {m['trials'] - m['completed'] - m['errors']} stopped"
                    )
            for n in args.concurrency:
                rows.append((scheduler, n, statistics.median(times[n]), outcome[n]))
    load_after()
    print(f"\n{'scheduler':<10} {'at once':>7} {'wall s':>8} {'vs 1 at once':>13}  trials")
    for scheduler, n, seconds, trials in rows:
        one = next(s for sch, k, s, _ in rows if sch == scheduler and k == args.concurrency[0])
        print(f"{scheduler:<10} {n:>7} {seconds:>8.1f} {seconds / one:>12.2f}x  {trials}")


if __name__ == "__main__":
    main()
