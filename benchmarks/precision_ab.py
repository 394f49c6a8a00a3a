"""Training step time in float32 and under bf16 autocast (``train.precision``), as a ratio in
one run.

For each model card (dense ``adam``), Electronics-shaped generated data
(``train_throughput.generated_train_split``), ``--batch-size``, ``--threads`` (applied as
``ctrbench run --threads N`` applies it): two models built alike, one per precision, take turns
in every round, each figure the best of ``--rounds`` rounds of ``--steps`` steps
(``Variant.run``: the batch slicing and the trainer's whole ``TrainStep``). Two processes minutes
apart cannot give this ratio on a VM whose speed drifts by 1.5x within the hour. Figures only.
Usage:
  python benchmarks/precision_ab.py --models xdeepfm --batch-size 128 --threads 2
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args
from train_throughput import Variant, ab_columns, best_alternating, generated_train_split

from ctrbench.cards import resolve_model_spec
from ctrbench.engine.threads import apply_threads

PRECISIONS = ("float32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="xdeepfm")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rows", type=int, default=40000)
    add_save_options(parser)
    args = parser.parse_args()
    apply_threads(args.threads)  # as ctrbench run --threads gives them
    rows = []
    with generated_train_split(max(args.rows, 2 * args.batch_size)) as (data, train):
        for name in resolve_model_spec(args.models):
            arms = {p: Variant(data, name, "adam", args.batch_size, train, precision=p)
                    for p in PRECISIONS}
            for variant in arms.values():
                variant.run(10)  # warm-up (allocations, the kernels' build)
            best = best_alternating({p: v.run for p, v in arms.items()}, args.rounds,
                                    args.steps, args.batch_size)
            rows.append({"model": name, "batch_size": args.batch_size, "threads": args.threads,
                         **ab_columns(best["float32"], best["bf16"], PRECISIONS)})
            print(rows[-1], flush=True)
            for variant in arms.values():
                variant.step.close()
    print(tabulate(rows, headers="keys"))
    save_from_args("precision_ab", args, rows)


if __name__ == "__main__":
    main()
