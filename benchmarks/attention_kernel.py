"""MIAN's native attention kernel alone: forward and backward time of its two lane layouts.

``fused_attention.cpp`` runs MIAN's 8 heads of width 4 (and the other pairs it lists) with a
lane per (step, head) ("head lanes"), every other pair with a lane per step, one head at a time
("per head"). This times both on the same packed ``qkv`` of Electronics-shaped history lengths
(geometric, mean ~16, at most 30, as ``train_throughput.generated_store`` draws them) at each
``--batch-sizes``, one thread, the layouts taking turns in each round; each figure is the best
of ``--rounds`` rounds of ``--calls`` calls. Figures only. Usage:
  python benchmarks/attention_kernel.py
  python benchmarks/attention_kernel.py --heads 4 --head-dim 8 --batch-sizes 128 --no-save
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args

from ctrbench.models.fast.fused_attention import (
    attention_backward,
    attention_forward,
    usable,
)

LAYOUTS = {"head lanes": True, "per head": False}


def packed_case(batch_size: int, heads: int, head_dim: int, seed: int = 0):
    """(qkv [N, 3D], offsets [B + 1], grad [N, D]) for Electronics-shaped lengths."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 16, batch_size), 30)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).long()
    gen = torch.Generator().manual_seed(seed)
    steps, width = int(offsets[-1]), heads * head_dim
    return (torch.randn(steps, 3 * width, generator=gen), offsets,
            torch.randn(steps, width, generator=gen))


def best_times(qkv, offsets, grad, heads: int, rounds: int, calls: int) -> dict:
    """Best microseconds per forward and per backward call of each layout."""
    best = {name: [float("inf"), float("inf")] for name in LAYOUTS}
    for _ in range(rounds):
        for name, lanes in LAYOUTS.items():
            start = time.perf_counter()
            for _ in range(calls):
                out, stats = attention_forward(qkv, offsets, heads, head_lanes=lanes)
            middle = time.perf_counter()
            for _ in range(calls):
                attention_backward(qkv, offsets, out, stats, grad, heads, head_lanes=lanes)
            end = time.perf_counter()
            best[name][0] = min(best[name][0], (middle - start) / calls * 1e6)
            best[name][1] = min(best[name][1], (end - middle) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=0,
                        help="calls per round (default: ~25,000 rows' worth)")
    add_save_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        qkv, offsets, grad = packed_case(batch_size, args.heads, args.head_dim)
        if not usable(qkv, args.head_dim):
            parser.error("the native attention kernel is not built here (or the head is too "
                         "wide for it)")
        calls = args.calls or max(5, 25_000 // batch_size)
        best = best_times(qkv, offsets, grad, args.heads, args.rounds, calls)
        (lanes_f, lanes_b), (head_f, head_b) = best["head lanes"], best["per head"]
        rows.append({"batch_size": batch_size, "valid_steps": qkv.shape[0],
                     "heads": args.heads, "head_dim": args.head_dim,
                     "per_head_forward_us": round(head_f, 1),
                     "head_lanes_forward_us": round(lanes_f, 1),
                     "forward_speedup": round(head_f / lanes_f, 2),
                     "per_head_backward_us": round(head_b, 1),
                     "head_lanes_backward_us": round(lanes_b, 1),
                     "backward_speedup": round(head_b / lanes_b, 2)})
        print(rows[-1], flush=True)
    print(tabulate(rows, headers="keys"))
    save_from_args("attention_kernel", args, rows)


if __name__ == "__main__":
    main()
