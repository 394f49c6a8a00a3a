"""Per-epoch training time of MIAN and DIEN relative to DIN (issue 13, part 2; paper §4.5).

Every (model, batch size) keeps its own model copy and optimiser (``train_throughput.Variant``:
the trainer's own TrainStep on Electronics-shaped generated data) and ALL of them take turns in
every round, so that a burst of load from other processes hits DIN and the others alike; the
figure per setting is its best round. ``--clock cpu`` times this process's CPU seconds
(steadier on a shared machine; meaningful with ``--threads 1``), ``wall`` the elapsed time.
Ratio = DIN's samples/s / the model's samples/s = the model's epoch time / DIN's. The paper:
MIAN 3,700 s / DIN 3,143 s = 1.18; DIEN 4,073 / 3,143 = 1.30. Figures only. Usage:
  python benchmarks/ratio_to_din.py --threads 1 --clock cpu
  python benchmarks/ratio_to_din.py --models mian,dien --batch-sizes 128,1024 --rounds 5
  python benchmarks/ratio_to_din.py --models mian,mian_no_transformer --save-as transformer_share
Results: printed, and one JSON under benchmarks/results/.
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import re
import sys
import time
from pathlib import Path

from tabulate import tabulate

from ctrbench.engine.threads import apply_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result
from train_throughput import PAPER_RATIOS, Variant, generated_train_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mian,dien", help="compared with din")
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--rows", type=int, default=50_000, help="generated train rows")
    parser.add_argument("--samples", type=int, default=5120,
                        help="training samples per setting and round (steps = samples / batch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--save-as", default="ratio_to_din",
                        help="result name (file <commit>-NAME.json); another name keeps a side "
                             "measurement, e.g. --models mian,mian_no_transformer, out of the "
                             "README's ratio_to_din table")
    args = parser.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.save_as):
        parser.error(f"--save-as {args.save_as!r}: use letters, digits, '.', '_', '-'")
    apply_threads(args.threads)  # as ctrbench run --threads gives them
    models = ["din", *[m for m in args.models.split(",") if m and m != "din"]]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with generated_train_split(args.rows) as (data, train):
        variants = {(m, b): Variant(data, m, args.optimizer, b, train)
                    for m in models for b in batch_sizes}
        for variant in variants.values():
            variant.clock = clock
            variant.run(3)  # warm-up
        for round_ in range(args.rounds):
            for variant in variants.values():
                variant.run(max(2, args.samples // variant.batch_size))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{m}@{b} {v.best:,.0f}/s" for (m, b), v in variants.items()), flush=True)
    rows, table = [], []
    for batch_size in batch_sizes:
        din = variants["din", batch_size].best
        for model in models[1:]:
            ratio = din / variants[model, batch_size].best
            paper = PAPER_RATIOS.get(model)
            rows.append({"ratio": f"{model}/din", "batch_size": batch_size,
                         "epoch_time_ratio": ratio, "paper": paper,
                         "din_samples_per_s": din,
                         "model_samples_per_s": variants[model, batch_size].best})
            table.append([f"{model.upper()}/DIN", batch_size, f"{ratio:.2f}",
                          "" if paper is None else f"{paper:.2f}"])
    print(f"\nper-epoch train time relative to DIN; {args.optimizer}, threads={args.threads}, "
          f"{args.clock} clock, best of {args.rounds} interleaved rounds")
    print(tabulate(table, headers=["ratio", "batch", "ours", "paper §4.5"]))
    path = write_result(f"{args.save_as}.py", {k: str(v) for k, v in vars(args).items()},
                        rows, args.out)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
