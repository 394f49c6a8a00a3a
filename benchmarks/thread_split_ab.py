"""Training step time under three thread settings, as ratios in one run: one thread, N threads
for every op, and N split (torch's ops on one thread, the large products on N).

``ctrbench run --threads N`` splits N under OpenMP's PASSIVE wait policy (what ``import
ctrbench`` sets; :func:`ctrbench.engine.threads.splits_threads`). This script shows what the
split gives per model card (dense ``adam``), Electronics-shaped generated data
(``train_throughput.generated_train_split``), ``--batch-size``: the settings take turns in every
round, each figure the best of ``--rounds`` rounds of ``--steps`` steps (``Variant.run``: the
batch slicing and the trainer's whole ``TrainStep``). Figures only. Usage:
  python benchmarks/thread_split_ab.py --models xdeepfm,wide_deep,din --threads 2
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import functools
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from ctrbench import openmp
from ctrbench.cards import resolve_model_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args
from train_throughput import Variant, best_alternating, generated_train_split

SETTINGS = ("one", "every_op", "split")  # 1 thread; N for every op; torch's ops 1, products N


def use(setting: str, threads: int) -> None:
    """Put this process under ``setting`` with a budget of ``threads``."""
    torch.set_num_threads(1 if setting in ("one", "split") else threads)
    openmp.set_split((1, threads) if setting == "split" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="xdeepfm,wide_deep,din")
    parser.add_argument("--threads", type=int, default=2, help="the budget N (at least 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rows", type=int, default=40000)
    add_save_options(parser)
    args = parser.parse_args()
    if args.threads < 2:
        parser.error("--threads must be at least 2 (a budget of one has nothing to split)")
    rows = []
    try:
        with generated_train_split(max(args.rows, 2 * args.batch_size)) as (data, train):
            for name in resolve_model_spec(args.models):
                variant = Variant(data, name, "adam", args.batch_size, train)
                variant.run(20)  # warm-up (allocations, the kernels' build)

                def run_under(setting: str, steps: int, variant=variant) -> float:
                    use(setting, args.threads)
                    return variant.run(steps)

                best = best_alternating({s: functools.partial(run_under, s) for s in SETTINGS},
                                        args.rounds, args.steps, args.batch_size)
                rows.append({"model": name, "batch_size": args.batch_size,
                             "threads": args.threads,
                             **{f"{s}_ms": round(best[s] * 1e3, 3) for s in SETTINGS},
                             "split_over_one": round(best["one"] / best["split"], 3),
                             "split_over_every_op": round(best["every_op"] / best["split"], 3)})
                print(rows[-1], flush=True)
    finally:
        use("one", 1)
    print(tabulate(rows, headers="keys"))
    save_from_args("thread_split_ab", args, rows)


if __name__ == "__main__":
    main()
