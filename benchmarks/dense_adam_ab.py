"""The dense optimiser's step and the whole training step with torch's fused Adam and with
:class:`ctrbench.engine.dense_adam.DenseAdam`'s fast path, as ratios in one run.

For each model card (dense ``adam``), Electronics-shaped generated data
(``train_throughput.generated_train_split``), one thread: two copies of the model from one
seed, one whose dense optimiser runs torch's own step (``fast_path = False``), one with the fast
path. Rounds alternate the two; each figure is the best of ``--rounds`` rounds of ``--steps``
training steps. Then the dense optimiser's step alone (gradients left from the last training
step, ``--steps`` steps per round, alternating). Both arms compute the same bits
(``tests/test_dense_adam.py``). Figures only.
Usage:
  python benchmarks/dense_adam_ab.py --models lr,din,dien,mian
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
from bench_results import add_save_options, save_from_args
from train_throughput import Variant, ab_columns, best_alternating, generated_train_split

from ctrbench.cards import resolve_model_spec
from ctrbench.engine.dense_adam import DenseAdam


def dense_optimizer(variant: Variant) -> DenseAdam | None:
    """The variant's dense optimiser (None: all its parameters are elsewhere)."""
    found = [o for o in variant.step.optimizers.optimizers if isinstance(o, DenseAdam)]
    return found[0] if found else None


def optimizer_seconds(opt: DenseAdam, steps: int) -> float:
    """Seconds per ``opt.step()`` over ``steps`` steps on the gradients left in place."""
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lr,din,dien,mian")
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
            variants = {fast: Variant(data, name, "adam", args.batch_size, train)
                        for fast in (False, True)}
            opts = {fast: dense_optimizer(v) for fast, v in variants.items()}
            if opts[True] is None:
                print(f"{name}: no dense optimiser", flush=True)
                continue
            for fast, variant in variants.items():
                opts[fast].fast_path = fast
                variant.run(10)  # warm-up (allocations, kernels' builds)
            best = best_alternating({f: variants[f].run for f in (False, True)}, args.rounds,
                                    args.steps, args.batch_size)
            alone = dict.fromkeys(opts, float("inf"))
            for _ in range(args.rounds):
                for fast, opt in opts.items():
                    alone[fast] = min(alone[fast], optimizer_seconds(opt, args.steps))
            group = opts[True].param_groups[0]["params"]
            row = {"model": name, "batch_size": args.batch_size, "threads": 1,
                   "dense_tensors": len(group), "dense_values": sum(p.numel() for p in group),
                   "torch_adam_us": round(alone[False] * 1e6, 1),
                   "dense_adam_us": round(alone[True] * 1e6, 1),
                   **ab_columns(best[False], best[True], ("torch_step", "dense_step"))}
            rows.append(row)
            print(row, flush=True)
            for variant in variants.values():
                variant.step.close()
    print(f"\nms per training step and us per dense optimiser step, batch {args.batch_size}, "
          f"1 thread, best of {args.rounds} alternating rounds")
    print(tabulate(rows, headers="keys"))
    save_from_args("dense_adam_ab", args, rows)


if __name__ == "__main__":
    main()
