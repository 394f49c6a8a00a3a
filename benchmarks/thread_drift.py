"""How far a seeded run drifts with the torch thread count: per-step training loss of each model
through the trainer's own step (``TrainStep``) on ``synthetic``, one child process per thread
count (OpenMP reads its settings once per process), the same seed and batches in each.

Another thread count changes only the order of float reductions, so the first steps agree to
rounding; what this measures is how much a model's training amplifies that (a model still on a
plateau near chance drifts far more than one that is learning). Figures only. Usage:
  python benchmarks/thread_drift.py                          # din, dien, mian; 1 vs 2 threads
  python benchmarks/thread_drift.py --models mian --steps 500 --threads 1,2
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args

REPORTED_STEPS = (1, 10, 30, 100, 300, 1000, 3000)


def child(model: str, threads: int, steps: int, seed: int) -> list[float]:
    """Run in the child process: the loss of each of the first ``steps`` training steps."""
    import torch

    from ctrbench.cards import load_model_card
    from ctrbench.data.prepare import prepare_dataset
    from ctrbench.engine.train import SplitTensors, TrainStep, build_for_training, model_inputs
    from ctrbench.seeding import seed_everything

    torch.set_num_threads(threads)
    data = prepare_dataset("synthetic")
    card = load_model_card(model)
    generators = seed_everything(seed)
    net = build_for_training(card, data.schema)
    train = SplitTensors(data, "train", torch.device("cpu"), model_inputs(data.schema))
    step = TrainStep(net, card.train, torch.device("cpu"))
    size = card.train.batch_size
    order = torch.randperm(train.rows, generator=generators.torch)
    losses = []
    for k in range(steps):
        batch, label = train.take(order[(k * size) % train.rows:][:size])
        losses.append(float(step(batch, label)[0]))
    return losses


def losses_with(model: str, threads: int, args: argparse.Namespace) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--child", model, str(threads),
                          str(args.steps), str(args.seed)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="din,dien,mian")
    parser.add_argument("--threads", default="1,2", help="thread counts, the first the base")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    add_save_options(parser)
    args = parser.parse_args()
    if args.child:
        model, threads, steps, seed = args.child
        print(json.dumps(child(model, int(threads), int(steps), int(seed))))
        return
    counts = [int(t) for t in args.threads.split(",")]
    rows = []
    for model in args.models.split(","):
        base = losses_with(model, counts[0], args)
        for threads in counts[1:]:
            other = losses_with(model, threads, args)
            first = next((k + 1 for k, (a, b) in enumerate(zip(base, other)) if a != b), None)
            row = {"model": model, "threads": f"{counts[0]} vs {threads}",
                   "first_differing_step": first}
            for k in (s for s in REPORTED_STEPS if s <= args.steps):
                row[f"abs_diff_step_{k}"] = abs(base[k - 1] - other[k - 1])
            row[f"loss_step_{args.steps}"] = base[-1]
            rows.append(row)
    print(tabulate(rows, headers="keys", floatfmt=".2g"))
    save_from_args("thread_drift", args, rows)


if __name__ == "__main__":
    main()
