"""MIAN's training step with its transformer block under ``torch.compile`` vs eager.

Issue 13 asks for ``torch.compile`` where eager code is dispatch-bound, "with a measured gain".
MIAN's one transformer block is 55-74% of its step (docs/performance.md §2), so it is the part
to compile. Compiled with ``dynamic=True`` (history lengths and length-group sizes change every
batch; static shapes would recompile per shape) is the attention between the projections,
``MaskedSelfAttention.mix``, per length group (the position-wise parts run once over the valid
steps). Since the CPU attention became ``packed_attention`` (a hand-written backward, nothing
left for the compiler to fuse), both variants here run ``mix`` instead
(``TransformerBlock.PACKED_ATTENTION = False``), the path this benchmark was written for; its
saved results predate that and also compiled the whole block from 512 rows.

An eager and a compiled MIAN (same seed, same data, same order) take turns in every round
through the trainer's own step (``train_throughput.Variant``, Electronics-shaped generated data,
dense Adam, CPU time); the figure per variant is its best round. Also printed: the wall time of
the compiled model's first three steps (compilation included; the eager model's for contrast).
Figures only. Usage:
  python benchmarks/compile_mian.py                     # batches 128 and 1024
  python benchmarks/compile_mian.py --batch-sizes 128 --rounds 3 --no-save
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


def with_mix(variant: Variant) -> Variant:
    """The block's attention as ``mix`` per length group (instance attribute only)."""
    variant.model.transformer.PACKED_ATTENTION = False
    return variant


def compiled(variant: Variant) -> Variant:
    """Compile the block's attention ``mix`` (instance attributes only)."""
    attention = with_mix(variant).model.transformer.attention
    attention.mix = torch.compile(attention.mix, dynamic=True)
    return variant


def first_steps_seconds(variant: Variant, steps: int = 3) -> float:
    start = time.perf_counter()
    variant.run(steps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=thread_counts, default=[128, 1024])
    parser.add_argument("--rows", type=int, default=50_000, help="generated train rows")
    parser.add_argument("--samples", type=int, default=5120,
                        help="training samples per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    add_save_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with generated_train_split(args.rows) as (data, train):
        for batch_size in args.batch_sizes:
            variants = {"eager": with_mix(Variant(data, "mian", "adam", batch_size, train)),
                        "compiled": compiled(Variant(data, "mian", "adam", batch_size, train))}
            first = {}
            for name, variant in variants.items():
                variant.clock = time.process_time
                first[name] = first_steps_seconds(variant)
            for _ in range(args.rounds):
                for variant in variants.values():
                    variant.run(max(4, args.samples // batch_size))
            base = variants["eager"].best
            for name, variant in variants.items():
                rows.append({"batch_size": batch_size, "variant": name,
                             "samples_per_s": round(variant.best, 1),
                             "time_vs_eager": round(base / variant.best, 3),
                             "first_3_steps_wall_s": round(first[name], 2)})
            print(", ".join(f"batch {batch_size} {n}: {v.best:,.0f}/s"
                            for n, v in variants.items()), flush=True)
    print(f"\nMIAN step, transformer block eager vs torch.compile(dynamic=True); adam, "
          f"threads={args.threads}, CPU time, best of {args.rounds} interleaved rounds")
    print(tabulate([[r["batch_size"], r["variant"], f"{r['samples_per_s']:,.0f}",
                     f"{r['time_vs_eager']:.3f}", f"{r['first_3_steps_wall_s']:.1f}"]
                    for r in rows],
                   headers=["batch", "block", "samples/s", "time vs eager",
                            "first 3 steps (s, wall)"]))
    save_from_args("compile_mian", args, rows)


if __name__ == "__main__":
    main()
