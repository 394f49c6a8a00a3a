"""Where one training step's time goes: batch slicing, zeroing, forward, backward, optimiser.

For each model card (the cards' own optimiser unless ``--optimizer``), times ``--steps`` steps
of Electronics-shaped generated data (``train_throughput.generated_store``) phase by phase,
through the phases :class:`ctrbench.engine.train.TrainStep` itself runs: ``take`` (the batch's
index slices), ``zero`` (``TrainStep.zero``), ``forward`` (``TrainStep.losses``: forward_train,
BCE, auxiliary terms, the L2 of plain tables, under the card's autocast), ``backward`` (the
embedding tables' gradient hooks included) and ``optimizer`` (``TrainStep.update``: clipping and
the optimiser step). The same variant's whole ``TrainStep`` is timed in the same rounds, so
the phases' sum can be checked against it. Each figure is the best of ``--rounds`` rounds
(the machine may be shared; on the 2-core VM one vCPU intermittently runs at half speed, which
best-of filters). Figures only.
Usage:
  python benchmarks/step_breakdown.py                          # lr, din, dien, mian at 128
  python benchmarks/step_breakdown.py --models table2 --batch-size 1024 --no-save
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import sys
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args
from train_throughput import Variant, generated_train_split

from ctrbench.cards import load_model_card, resolve_model_spec
from ctrbench.engine.threads import apply_threads
from ctrbench.models import count_parameters

PHASES = ("take", "zero", "forward", "backward", "optimizer")


def phase_times(variant: Variant, steps: int) -> dict[str, float]:
    """Seconds per step of each phase over ``steps`` steps of ``variant`` (TrainStep's order)."""
    step = variant.step
    totals = dict.fromkeys(PHASES, 0.0)
    variant.model.train()
    for _ in range(steps):
        if variant.position + variant.batch_size > variant.train.rows:
            variant.position = 0
        idx = variant.perm[variant.position:variant.position + variant.batch_size]
        variant.position += variant.batch_size
        marks = [time.perf_counter()]
        batch, label = variant.train.take(idx)
        marks.append(time.perf_counter())
        step.zero()
        marks.append(time.perf_counter())
        loss, _, _ = step.losses(batch, label)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        step.update()
        marks.append(time.perf_counter())
        for name, start, end in zip(PHASES, marks, marks[1:]):
            totals[name] += end - start
    return {name: total / steps for name, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="lr,din,dien,mian", help="names, groups or globs")
    parser.add_argument("--optimizer", default=None, help="adam | lazy_adam (default: the card's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="steps per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20_000, help="generated train rows")
    parser.add_argument("--threads", type=int, default=1)
    add_save_options(parser)
    args = parser.parse_args()
    apply_threads(args.threads)  # as ctrbench run --threads gives them
    rows = []
    with generated_train_split(max(args.rows, 2 * args.batch_size)) as (data, train):
        for name in resolve_model_spec(args.models):
            optimizer = args.optimizer or load_model_card(name).train.optimizer
            variant = Variant(data, name, optimizer, args.batch_size, train)
            if count_parameters(variant.model) == 0:  # pop: fitted, never stepped
                print(f"{name}: nothing to train", flush=True)
                continue
            variant.run(10)  # past any first-step set-up
            best = dict.fromkeys(PHASES, float("inf"))
            whole = float("inf")
            for _ in range(args.rounds):
                whole = min(whole, args.batch_size / variant.run(args.steps))
                for phase, seconds in phase_times(variant, args.steps).items():
                    best[phase] = min(best[phase], seconds)
            variant.step.close()
            row = {"model": name, "optimizer": optimizer, "batch_size": args.batch_size,
                   "threads": args.threads, "step_ms": round(whole * 1e3, 4),
                   "samples_per_s": round(args.batch_size / whole, 1),
                   **{f"{p}_ms": round(best[p] * 1e3, 4) for p in PHASES},
                   "phases_sum_ms": round(sum(best.values()) * 1e3, 4)}
            rows.append(row)
            print(f"{name}: step {row['step_ms']:.3f} ms, " + ", ".join(
                f"{p} {row[f'{p}_ms']:.3f}" for p in PHASES), flush=True)
    print(f"\nms per training step, batch {args.batch_size}, {args.threads} thread(s), best of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(tabulate([[r["model"], r["optimizer"], f"{r['step_ms']:.3f}",
                     *(f"{r[f'{p}_ms']:.3f}" for p in PHASES), f"{r['phases_sum_ms']:.3f}"]
                    for r in rows],
                   headers=["model", "optimizer", "whole step", *PHASES, "sum of phases"]))
    save_from_args("step_breakdown", args, rows)


if __name__ == "__main__":
    main()
