"""xDeepFM's floor: its CIN's matmul FLOPs per training sample against this CPU's matmul peak.

Measures, in one process and with the same thread count: the single-precision matmul rate of a
large GEMM by torch's matmul (MKL's sgemm) and by oneDNN's matmul (the faster of the two on this
project's AMD CPU, ~2x: the practical peak used for the floor), the same for bf16 (what a CPU
with bf16 units could give), and
xDeepFM's training samples/s through the trainer's TrainStep (Electronics-shaped generated data,
``train_throughput.Variant``). The CIN's FLOPs per sample come from the model's own layer
shapes: layer k multiplies ``[D, m * H_{k-1}]`` by ``[m * H_{k-1}, H_k]`` per sample, 2 FLOPs per
multiply-add, x3 for training (forward, input gradient, weight gradient). Then
``floor samples/s = peak FLOP/s / CIN FLOPs per sample`` (the CIN alone, at peak). Figures only.
  python benchmarks/cin_floor.py --threads 1 --clock cpu
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

from ctrbench.engine.train import SplitTensors, model_inputs
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
    """Training FLOPs per sample of the model's CIN matmuls (x3 for forward + 2 gradients)."""
    cin = model.cin
    dim = model.embedding.dim if hasattr(model, "embedding") else 16
    forward = sum(2 * dim * layer.in_features * layer.out_features for layer in cin.layers)
    return 3.0 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    mkl32 = gemm_rate(torch.float32, clock)
    peak32 = gemm_rate(torch.float32, clock, onednn=True) if onednn_linear.available() else mkl32
    peak16 = gemm_rate(torch.bfloat16, clock)
    rows = [{"what": "gemm", "dtype": "float32", "library": "torch matmul (MKL)",
             "gflops": mkl32 / 1e9},
            {"what": "gemm", "dtype": "float32", "library": "oneDNN", "gflops": peak32 / 1e9},
            {"what": "gemm", "dtype": "bfloat16", "library": "torch matmul",
             "gflops": peak16 / 1e9}]
    print(f"GEMM 1024^3, {args.threads} thread(s), {args.clock} clock: float32 "
          f"{mkl32 / 1e9:.1f} GFLOP/s (torch matmul: MKL), {peak32 / 1e9:.1f} (oneDNN, the peak "
          f"used below), bfloat16 {peak16 / 1e9:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        data = generated_store(Path(tmp), 20_000)
        train = SplitTensors(data, "train", torch.device("cpu"), model_inputs(data.schema))
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            variant = Variant(data, "xdeepfm", "adam", batch_size, train)
            variant.clock = clock
            variant.run(2)
            for _ in range(args.rounds):
                variant.run(max(2, 4096 // batch_size))
            flops = cin_flops_per_sample(variant.model)
            achieved = variant.best * flops
            rows.append({"what": "xdeepfm", "batch_size": batch_size,
                         "train_samples_per_s": variant.best,
                         "cin_train_mflop_per_sample": flops / 1e6,
                         "cin_gflops_achieved": achieved / 1e9,
                         "floor_samples_per_s_float32": peak32 / flops,
                         "floor_samples_per_s_bf16": peak16 / flops})
            print(f"xDeepFM B={batch_size}: {variant.best:,.0f} samples/s; CIN "
                  f"{flops / 1e6:.1f} MFLOP/sample (train) = {achieved / 1e9:.1f} GFLOP/s "
                  f"({achieved / peak32:.0%} of the float32 GEMM peak); the CIN alone at peak: "
                  f"{peak32 / flops:,.0f} samples/s float32, {peak16 / flops:,.0f} bf16")
    path = write_result("cin_floor.py", {k: str(v) for k, v in vars(args).items()}, rows,
                        args.out)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
