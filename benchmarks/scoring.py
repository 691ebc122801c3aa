"""Scoring throughput of the three identifiers (pairs/s) on this machine, side by side.

    python benchmarks/scoring.py --identifiers runs/<run>/identifiers [--minilm-identifiers DIR]
        [--ed ../shared/data/empatheticdialogues/train.csv] [--pairs 2000] [--threads 1 2]

Scores real ED (context, gold response) pairs with ``EmpathyScorer`` for each identifier
folder, thread count and batch size given, three repeats each, and prints the median pairs/s.
Run it on an otherwise idle machine (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from pipeline.config import DataConfig
from pipeline.data import parse_ed_split
from pipeline.scoring import EmpathyScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--identifiers", type=Path, nargs="+", required=True, help="identifier folders (ER/IP/EX)"
    )
    parser.add_argument("--ed", type=Path, default=Path("../shared/data/empatheticdialogues/train.csv"))
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--max-context-len", type=int, default=200)
    parser.add_argument("--max-response-len", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    examples = parse_ed_split(args.ed, DataConfig()).examples[: args.pairs]
    contexts = [e.context for e in examples]
    responses = [e.response for e in examples]
    print(f"load average before: {os.getloadavg()}")
    print(
        f"{len(contexts)} ED pairs, context <= {args.max_context_len} tokens, response <= {args.max_response_len}"
    )
    print(f"{'identifiers':40} {'threads':>7} {'batch':>5} {'pairs/s (median)':>17} {'runs':>22}")
    for folder in args.identifiers:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch_sizes:
                scorer = EmpathyScorer.from_folder(
                    folder,
                    max_context_len=args.max_context_len,
                    max_response_len=args.max_response_len,
                    batch_size=batch,
                )
                scorer.score(contexts[:batch], responses[:batch])  # warm-up
                rates = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    scorer.score(contexts, responses)
                    rates.append(len(contexts) / (time.perf_counter() - t0))
                runs = " ".join(f"{r:.0f}" for r in rates)
                print(
                    f"{str(folder)[-40:]:40} {threads:7d} {batch:5d} {statistics.median(rates):17.1f} {runs:>22}"
                )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
