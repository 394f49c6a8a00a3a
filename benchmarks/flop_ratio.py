"""Matmul arithmetic and op count per training step of MIAN and DIEN against DIN (issue 13).

The paper's §4.5 epoch-time ratios (MIAN/DIN 1.18, DIEN/DIN 1.30, K80 GPUs) are compared here
with what each model computes. ``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of
every matmul (``mm``, ``addmm``, ``bmm``, attention) that one full training step dispatches
through the trainer's own ``TrainStep`` (forward, BCE + auxiliary loss + L2, backward, Adam),
the hand-written backwards of the fast paths included; elementwise ops (activations, softmax,
LayerNorm, Adam) are not counted. A ``TorchDispatchMode`` counts the ATen ops the same step
dispatches (every op, whatever its size: on a CPU at batch 128 each costs microseconds of
dispatch whatever it computes). Averaged over ``--batches`` batches of Electronics-shaped
generated data (``train_throughput.generated_store``; the history lengths vary per batch, and
DIEN per length group and MIAN skip padded steps).

Printed per model and batch size: MFLOP per sample, the ratio to DIN's, the paper's ratio, ATen
ops per step and their ratio to DIN's, and the time those FLOPs take at this CPU's measured
float32 GEMM peak (a 1024^3 matmul, the same thread count). If two models ran their matmuls
equally efficiently, their time ratio would be their FLOP ratio. Figures only. Usage:
  python benchmarks/flop_ratio.py                        # din, dien, dien_no_aux, mian, ...
  python benchmarks/flop_ratio.py --models din,xdeepfm --batch-sizes 128 --no-save
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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args, thread_counts
from cin_floor import gemm_rate
from train_throughput import Variant, generated_train_split

from ctrbench.cards import resolve_model_spec
from ctrbench.engine.train import SplitTensors

PAPER = {"mian": 3700 / 3143, "dien": 4073 / 3143}  # §4.5, seconds per epoch over DIN's
DEFAULT_MODELS = "din,dien,dien_no_aux,mian,mian_no_transformer"


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while active (forward, backward and optimiser)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def step_counts(variant: Variant, train: SplitTensors, batch_size: int, batches: int
                ) -> tuple[float, dict[str, float], float]:
    """Mean matmul FLOPs per sample of one training step (total, per operator) and mean ATen
    ops per step; each batch is stepped twice, once under each counter."""
    total, per_op, ops = 0.0, {}, 0
    for k in range(batches):
        idx = torch.arange(k * batch_size, (k + 1) * batch_size)
        batch, label = train.take(idx)
        with FlopCounterMode(display=False) as counter:
            variant.step(batch, label)
        total += counter.get_total_flops()
        for op, flops in counter.get_flop_counts()["Global"].items():
            per_op[str(op)] = per_op.get(str(op), 0.0) + flops
        with OpCounter() as dispatched:
            variant.step(batch, label)
        ops += dispatched.ops
    samples = batches * batch_size
    return (total / samples, {op: f / samples for op, f in sorted(per_op.items())},
            ops / batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="names, groups or globs; "
                        "DIN (the denominator) is always measured")
    parser.add_argument("--batch-sizes", type=thread_counts, default=[128, 1024])
    parser.add_argument("--batches", type=int, default=4, help="batches averaged per setting")
    parser.add_argument("--rows", type=int, default=20_000, help="generated train rows")
    parser.add_argument("--threads", type=int, default=1)
    add_save_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = resolve_model_spec(args.models)
    if "din" not in models:
        models = ["din", *models]
    peak = gemm_rate(torch.float32, time.perf_counter)
    rows = []
    rows_needed = max(args.rows, args.batches * max(args.batch_sizes))
    with generated_train_split(rows_needed) as (data, train):
        for batch_size in args.batch_sizes:
            measured = {}
            for name in models:
                variant = Variant(data, name, "adam", batch_size, train)
                variant.run(2)  # past any first-step set-up
                measured[name] = step_counts(variant, train, batch_size, args.batches)
                variant.step.close()
            din, din_ops = measured["din"][0], measured["din"][2]
            for name, (flops, per_op, ops) in measured.items():
                base = name.split("_")[0]
                rows.append({"model": name, "batch_size": batch_size,
                             "mflop_per_sample": round(flops / 1e6, 4),
                             "flop_ratio_to_din": round(flops / din, 3),
                             "paper_time_ratio": round(PAPER[base], 3) if base in PAPER else None,
                             "aten_ops_per_step": round(ops, 1),
                             "ops_ratio_to_din": round(ops / din_ops, 3),
                             "us_per_sample_at_gemm_peak": round(flops / peak * 1e6, 3),
                             "gemm_peak_gflops": round(peak / 1e9, 1),
                             **{f"mflop_{op.removeprefix('aten.')}": round(f / 1e6, 4)
                                for op, f in per_op.items()}})
            print(f"batch {batch_size}: " + ", ".join(
                f"{n} {f / 1e6:.3f} MFLOP {o:.0f} ops" for n, (f, _, o) in measured.items()),
                flush=True)
    print(f"\nmatmul FLOPs per training sample (forward + backward; Adam and elementwise ops not "
          f"counted), threads={args.threads}, float32 GEMM peak {peak / 1e9:.1f} GFLOP/s")
    print(tabulate([[r["model"], r["batch_size"], f"{r['mflop_per_sample']:.3f}",
                     f"{r['flop_ratio_to_din']:.2f}",
                     "" if r["paper_time_ratio"] is None else f"{r['paper_time_ratio']:.2f}",
                     f"{r['aten_ops_per_step']:.0f}", f"{r['ops_ratio_to_din']:.2f}",
                     f"{r['us_per_sample_at_gemm_peak']:.1f}"] for r in rows],
                   headers=["model", "batch", "MFLOP/sample", "FLOPs / DIN's",
                            "paper time / DIN's", "ATen ops/step", "ops / DIN's",
                            "µs/sample at peak"]))
    save_from_args("flop_ratio", args, rows)


if __name__ == "__main__":
    main()
