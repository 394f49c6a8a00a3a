"""Training step time with and without the deferred Adam of fused tables, as a ratio in one run.

For each model card (dense ``adam``), Electronics-shaped generated data
(``train_throughput.generated_train_split``), batch 128, one thread: two copies of the model
from one seed, one stepped by torch's fused Adam over every parameter
(``deferred_adam.NATIVE = False``), one with its fused embedding table under
:class:`ctrbench.models.fast.deferred_adam.DeferredAdam`. Rounds alternate the two, and each
figure is the best of ``--rounds`` rounds of ``--steps`` steps; the deferred side's time
includes settling every row at the end of each round (``Variant.run``; the trainer does it
before it copies a state dict), so the work dense Adam does every step is all counted. Figures only.
Usage:
  python benchmarks/deferred_adam_ab.py --models lr,wide_deep,dcn,deepfm,din,dien,mian
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args
from train_throughput import Variant, ab_columns, best_alternating, generated_train_split

from ctrbench.cards import resolve_model_spec
from ctrbench.models.fast import deferred_adam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="wide_deep,dcn,deepfm,din,dien,mian")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20000)
    add_save_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with generated_train_split(max(args.rows, 2 * args.batch_size)) as (data, train):
        for name in resolve_model_spec(args.models):
            variants = {}
            for deferred in (False, True):
                deferred_adam.NATIVE = deferred
                variants[deferred] = Variant(data, name, "adam", args.batch_size, train)
                variants[deferred].run(10)  # warm-up (allocations, the kernel's build)
            used = any(type(o).__name__ == "DeferredAdam"
                       for o in variants[True].step.optimizers.optimizers)
            best = best_alternating({d: variants[d].run for d in (False, True)}, args.rounds,
                                    args.steps, args.batch_size)  # run settles at the end
            rows.append({"model": name, "batch_size": args.batch_size, "threads": 1,
                         "deferred_used": used,
                         **ab_columns(best[False], best[True], ("dense", "deferred"))})
            print(rows[-1], flush=True)
    print(tabulate(rows, headers="keys"))
    save_from_args("deferred_adam_ab", args, rows)


if __name__ == "__main__":
    main()
