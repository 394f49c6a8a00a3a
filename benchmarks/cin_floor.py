"""xDeepFM's floor: its CIN's matmul FLOPs per training sample against this CPU's matmul peak.

Measures, in one process, with the thread count as ``ctrbench run --threads N`` applies it
(:func:`~ctrbench.engine.threads.apply_threads`: under the PASSIVE wait policy the large
products on N threads, torch's other ops on one):

- the matmul rate of a ``1024^3`` GEMM on the products' threads: float32 by torch's matmul
  (MKL's sgemm) and by oneDNN (the CIN's path, ~2x MKL on this project's AMD CPU: the practical
  peak used for the floor), bf16 by torch's matmul and by oneDNN (what a CPU with bf16 units
  could give);
- xDeepFM's training samples/s through the trainer's ``TrainStep`` (Electronics-shaped generated
  data, ``train_throughput.Variant``), and how a step's wall time divides between the CIN's
  oneDNN products (each call timed) and everything else.

The CIN's FLOPs per sample are those it runs: layer k multiplies ``[D, in_k]`` by ``[in_k, H_k]``
per sample, with ``in_1`` the first layer's distinct pairs ``m (m + 1) / 2`` when it folds them
(:func:`~ctrbench.models.fast.cin.folds_pairs`) and ``m * H_{k-1}`` after; 2 FLOPs per
multiply-add, x3 for training (forward, input gradient, weight gradient). Then
``floor samples/s = peak FLOP/s / CIN FLOPs per sample`` (the CIN's products alone, at peak),
and ``products at peak + the rest as measured`` is what a perfect GEMM would leave. Figures only.
  python benchmarks/cin_floor.py --threads 1
  python benchmarks/cin_floor.py --threads 2
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result
from train_throughput import Variant, generated_store

from ctrbench import openmp
from ctrbench.engine.threads import apply_threads
from ctrbench.engine.train import SplitTensors, model_inputs
from ctrbench.models.fast import cin as fast_cin
from ctrbench.models.fast import onednn_linear


def gemm_rate(dtype: torch.dtype, clock, n: int = 1024, repeats: int = 5,
              onednn: bool = False) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matmul (best of ``repeats``): torch's ``matmul``
    (MKL's sgemm for float32), or oneDNN's matmul (``onednn``, the CIN's path)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)

    def product() -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "") if onednn else a @ b

    product()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        product()
        best = min(best, clock() - start)
    return 2 * n ** 3 / best


def cin_flops_per_sample(model) -> float:
    """Training FLOPs per sample of the CIN's matmuls as they run (x3: forward + 2 gradients;
    the first layer on its distinct pairs where :func:`~ctrbench.models.fast.cin.folds_pairs`)."""
    cin = model.cin
    dim = model.embedding.dim if hasattr(model, "embedding") else 16
    m = cin.num_fields
    forward = 0
    for k, layer in enumerate(cin.layers):
        inputs = m * (m + 1) // 2 if k == 0 and fast_cin.folds_pairs() else layer.in_features
        forward += 2 * dim * inputs * layer.out_features
    return 3.0 * forward


class ProductTimer:
    """Wall seconds spent in :func:`onednn_linear._matmul` (the CIN's products) while active."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._inner = onednn_linear._matmul

    def _timed(self, x, weight, bias):
        start = time.perf_counter()
        try:
            return self._inner(x, weight, bias)
        finally:
            self.seconds += time.perf_counter() - start

    def __enter__(self) -> ProductTimer:
        self.seconds = 0.0
        onednn_linear._matmul = self._timed
        return self

    def __exit__(self, *exc) -> None:
        onednn_linear._matmul = self._inner


def products_share(variant: Variant, steps: int, rounds: int) -> tuple[float, float]:
    """(step ms, products ms) by wall clock, from the round with the fastest step."""
    best = (float("inf"), 0.0)
    for _ in range(rounds):
        with ProductTimer() as timer:
            start = time.perf_counter()
            variant.run(steps)
            whole = time.perf_counter() - start
        best = min(best, (whole / steps * 1e3, timer.seconds / steps * 1e3))
    return best


def product_rates(clock) -> dict[str, float]:
    """GFLOP/s of the 1024^3 GEMM on the products' threads (the split's N, else torch's)."""
    split = openmp.product_split()
    if split is not None:
        torch.set_num_threads(split[1])
    try:
        rates = {"float32 torch matmul (MKL)": gemm_rate(torch.float32, clock),
                 "bfloat16 torch matmul": gemm_rate(torch.bfloat16, clock)}
        if onednn_linear.available():
            rates["float32 oneDNN"] = gemm_rate(torch.float32, clock, onednn=True)
            rates["bfloat16 oneDNN"] = gemm_rate(torch.bfloat16, clock, onednn=True)
    finally:
        if split is not None:
            torch.set_num_threads(split[0])
    return {name: rate / 1e9 for name, rate in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="wall",
                        help="for the GEMMs and samples/s (cpu: one thread only)")
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    apply_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    gflops = product_rates(clock)
    peak32 = gflops.get("float32 oneDNN", gflops["float32 torch matmul (MKL)"]) * 1e9
    peak16 = max(v for k, v in gflops.items() if k.startswith("bfloat16")) * 1e9
    rows = [{"what": "gemm", "dtype": name.split()[0], "library": name.split(" ", 1)[1],
             "gflops": round(rate, 1)} for name, rate in gflops.items()]
    split = openmp.thread_split()  # {"torch_ops": 1, "large_products": N} or None
    if split is not None:
        split = f"torch ops {split['torch_ops']}, products {split['large_products']}"
    print(f"GEMM 1024^3 on {args.threads} thread(s) ({args.clock} clock), GFLOP/s: "
          + ", ".join(f"{name} {rate:.1f}" for name, rate in gflops.items())
          + f"; thread split {split}")
    with tempfile.TemporaryDirectory() as tmp:
        data = generated_store(Path(tmp), 20_000)
        train = SplitTensors(data, "train", torch.device("cpu"), model_inputs(data.schema))
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            variant = Variant(data, "xdeepfm", "adam", batch_size, train)
            variant.clock = clock
            steps = max(2, 4096 // batch_size)
            variant.run(2)
            for _ in range(args.rounds):
                variant.run(steps)
            step_ms, products_ms = products_share(variant, steps, args.rounds)
            flops = cin_flops_per_sample(variant.model)
            achieved = variant.best * flops
            peak_products_ms = flops * batch_size / peak32 * 1e3
            rest_ms = step_ms - products_ms
            rows.append({"what": "xdeepfm", "batch_size": batch_size, "threads": args.threads,
                         "thread_split": split,
                         "train_samples_per_s": round(variant.best, 1),
                         "cin_train_mflop_per_sample": round(flops / 1e6, 3),
                         "cin_gflops_achieved": round(achieved / 1e9, 1),
                         "step_ms": round(step_ms, 3), "products_ms": round(products_ms, 3),
                         "products_gflops": round(flops * batch_size / products_ms / 1e6, 1),
                         "rest_ms": round(rest_ms, 3),
                         "floor_samples_per_s_float32": round(peak32 / flops, 1),
                         "floor_samples_per_s_bf16": round(peak16 / flops, 1),
                         "products_at_peak_plus_rest_samples_per_s":
                             round(batch_size / (peak_products_ms + rest_ms) * 1e3, 1)})
            row = rows[-1]
            ceiling = row["products_at_peak_plus_rest_samples_per_s"]
            print(f"xDeepFM B={batch_size}: {variant.best:,.0f} samples/s; CIN "
                  f"{flops / 1e6:.1f} MFLOP/sample (train). Step {step_ms:.2f} ms = CIN products "
                  f"{products_ms:.2f} ms ({row['products_gflops']:.0f} GFLOP/s) + the rest "
                  f"{rest_ms:.2f} ms. The products alone at the float32 peak: "
                  f"{peak32 / flops:,.0f} samples/s (bf16: {peak16 / flops:,.0f}); at the peak "
                  f"with the rest as measured: {ceiling:,.0f}")
    path = write_result("cin_floor.py", {k: str(v) for k, v in vars(args).items()}, rows,
                        args.out)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
