"""AUGRU speed: ms per forward + backward at B = 128, T = 30, D = H = 32 (DIEN's evolution layer).

Variants:
  naive       input projection inside the time loop, autograd through every step (peers' way)
  hoisted     input projections for all steps at once, autograd through the recurrent loop
  fast        hoisted + hand-written backward (one reverse loop), eager loops (what DIEN uses;
              TorchScript, which compiled these loops before, is deprecated and gone)
  fast-trim   fast on a batch whose histories are all <= T/2: DIEN runs only the steps up to
              the longest history in the batch (the other variants use lengths ~ U[0, T])

Each figure is the best of --rounds rounds of --repeats steps, the variants taking turns in
every round (the machine may be shared).
Figures only; nothing is asserted (also saved as JSON, see benchmarks/bench_results.py). Usage:
  OMP_NUM_THREADS=1 python benchmarks/augru_speed.py [--threads 1] [--repeats 10] \\
      [--rounds 10] [--clock wall|cpu]
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ctrbench.models import sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/
from bench_results import add_save_options, save_from_args


def naive_augru(x: torch.Tensor, attention: torch.Tensor, layer: sequence.AUGRU) -> torch.Tensor:
    """The peers' loop: every step projects its own input and records ops for autograd."""
    h = x.new_zeros(x.shape[0], layer.hidden_dim)
    for t in range(x.shape[1]):
        gx = layer.input_proj(x[:, t])
        gh = layer.hidden_proj(h)
        x_r, x_u, x_n = gx.chunk(3, dim=1)
        h_r, h_u, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        u = torch.sigmoid(x_u + h_u) * attention[:, t : t + 1]
        n = torch.tanh(x_n + r * h_n)
        h = (1 - u) * h + u * n
    return h


def best_times_ms(steps: dict[str, Callable[[], None]], repeats: int, rounds: int,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Best mean per call (ms) over ``rounds``; the variants take turns within each round so
    that a burst of load from other processes hits them all alike."""
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            start = clock()
            for _ in range(repeats):
                step()
            best[name] = min(best[name], (clock() - start) / repeats * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: perf_counter; cpu: this process's CPU time (steadier on a "
                             "shared machine, meaningful with --threads 1)")
    add_save_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    layer = sequence.AUGRU(args.dim, args.dim)
    x = torch.randn(args.batch, args.steps, args.dim, requires_grad=True)
    lengths = torch.randint(0, args.steps + 1, (args.batch,))
    mask = torch.arange(args.steps)[None, :] < lengths[:, None]
    attention = torch.softmax(torch.randn(args.batch, args.steps), 1) * mask
    short = torch.randint(0, args.steps // 2 + 1, (args.batch,))  # the fast-trim batch
    short_attention = attention * (torch.arange(args.steps)[None, :] < short[:, None])
    longest = max(1, int(short.max()))

    def run(kind: str) -> Callable[[], None]:
        def step() -> None:
            layer.zero_grad(set_to_none=True)
            w, b = layer.hidden_proj.weight, layer.hidden_proj.bias
            if kind == "naive":
                out = naive_augru(x, attention, layer)
            elif kind == "hoisted":
                out = sequence.augru_reference(layer.input_proj(x), attention, w, b)
            elif kind == "fast":
                out = sequence.augru_recurrence(layer.input_proj(x), attention, w, b)
            else:  # fast-trim
                gx = layer.input_proj(x[:, :longest])
                out = sequence.augru_recurrence(gx, short_attention[:, :longest], w, b)
            out.sum().backward()

        return step

    print(f"AUGRU forward+backward, B={args.batch} T={args.steps} D=H={args.dim}, "
          f"threads={args.threads}, {args.clock} clock, torch {torch.__version__}")
    kinds = ("naive", "hoisted", "fast", "fast-trim")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = best_times_ms({kind: run(kind) for kind in kinds}, args.repeats, args.rounds, clock)
    baseline = times["naive"]
    for kind, ms in times.items():
        note = f" (longest history {longest})" if kind == "fast-trim" else ""
        print(f"  {kind:<11} {ms:8.2f} ms   x{baseline / ms:4.1f}{note}")
    save_from_args("augru_speed", args, [
        {"variant": kind, "ms": round(ms, 3), "speedup_vs_naive": round(baseline / ms, 2),
         "longest_history": longest if kind == "fast-trim" else args.steps}
        for kind, ms in times.items()])


if __name__ == "__main__":
    main()
