"""DIEN's training step by number of history-length groups (the choice of ``DIEN.GROUPED_ROWS``).

For each batch size, DIEN variants that differ only in how their recurrences run (one pass,
or per length group with 2, 3, 4 or 6 groups) take turns in every round through the trainer's
own step (``train_throughput.Variant``, Electronics-shaped generated data, dense Adam); the
figure per variant is its best round. The ratio column is the variant's step time over the
one-pass step time (below 1: grouping pays). ``DIEN.GROUPED_ROWS`` and ``auto_groups`` were
chosen from this sweep (docs/performance.md §2, third round). Figures only. Usage:
  python benchmarks/dien_groups.py                    # batches 128,256,512,1024; groups 1,2,3,4,6
  python benchmarks/dien_groups.py --batch-sizes 1024 --groups 1,4,6 --rounds 8
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args, thread_counts
from train_throughput import Variant, generated_train_split


def grouped(variant: Variant, groups: int) -> Variant:
    """``groups`` 1: one pass at every batch size; otherwise that many length groups always."""
    if groups == 1:
        variant.model.GROUPED_ROWS = 10**9
    else:
        variant.model.GROUPED_ROWS, variant.model.LENGTH_GROUPS = 1, groups
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=thread_counts, default=[128, 256, 512, 1024])
    parser.add_argument("--groups", type=thread_counts, default=[1, 2, 3, 4, 6],
                        help="1 = one pass (the baseline of the ratio column)")
    parser.add_argument("--rows", type=int, default=50_000, help="generated train rows")
    parser.add_argument("--samples", type=int, default=5120,
                        help="training samples per variant and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    add_save_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    groups = sorted(set(args.groups))
    rows = []
    with generated_train_split(args.rows) as (data, train):
        for batch_size in args.batch_sizes:
            variants = {g: grouped(Variant(data, "dien", "adam", batch_size, train), g)
                        for g in groups}
            for variant in variants.values():
                variant.clock = time.process_time
                variant.run(3)  # warm-up
            for _ in range(args.rounds):
                for variant in variants.values():
                    variant.run(max(4, args.samples // batch_size))
            base = variants[groups[0]].best
            for g, variant in variants.items():
                rows.append({"batch_size": batch_size, "groups": g,
                             "samples_per_s": round(variant.best, 1),
                             "time_vs_fewest_groups": round(base / variant.best, 3)})
            print(", ".join(f"batch {batch_size} groups {g}: {v.best:,.0f}/s"
                            for g, v in variants.items()), flush=True)
    print(f"\nDIEN step by length groups; adam, threads={args.threads}, CPU time, best of "
          f"{args.rounds} interleaved rounds (ratio: time over groups={groups[0]})")
    print(tabulate([[r["batch_size"], r["groups"], f"{r['samples_per_s']:,.0f}",
                     f"{r['time_vs_fewest_groups']:.3f}"] for r in rows],
                   headers=["batch", "groups", "samples/s", "time ratio"]))
    save_from_args("dien_groups", args, rows)


if __name__ == "__main__":
    main()
