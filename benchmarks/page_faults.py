"""Training step time and minor page faults per step with and without ctrbench's glibc malloc
thresholds (``ctrbench/allocator.py``; ``CTRBENCH_MALLOC=default`` switches them off).

glibc reads its malloc settings once per process, so each (model, batch size, setting) runs in
its own child process, as one ``ctrbench run`` does: the trainer's own step
(``train_throughput.Variant``) on Electronics-shaped generated data, one thread, CPU time,
warm-up steps, then the best of ``--rounds`` rounds and the faults per step of the last round
(``getrusage`` minor faults). The two settings alternate, ``--repeats`` times per model.
Figures only. Usage:
  python benchmarks/page_faults.py                         # table2's sequential models, 1024
  python benchmarks/page_faults.py --models din,lr --batch-sizes 128,1024 --repeats 2
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args

SETTINGS = {"ctrbench": "", "glibc default": "default"}  # CTRBENCH_MALLOC per setting


def child(model: str, batch_size: int, rows: int, steps: int, rounds: int) -> dict:
    """Run in the child process: one model's step time and faults per step."""
    import torch
    from train_throughput import Variant, generated_train_split

    from ctrbench import allocator

    torch.set_num_threads(1)
    with generated_train_split(rows) as (data, train):
        variant = Variant(data, model, "adam", batch_size, train)
        variant.run(steps)  # warm-up: the heap reaches its working size
        best, faults = float("inf"), 0.0
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.process_time()
            variant.run(steps)
            best = min(best, (time.process_time() - start) / steps * 1e3)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps
    return {"malloc": allocator.status, "ms_per_step": round(best, 3),
            "faults_per_step": round(faults, 1)}


def measure(model: str, batch_size: int, setting: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["CTRBENCH_MALLOC"] = SETTINGS[setting]
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import json, page_faults; print(json.dumps(page_faults.child({model!r}, "
            f"{batch_size}, {args.rows}, {args.steps}, {args.rounds})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="din,dien,mian,lr,deepfm")
    parser.add_argument("--batch-sizes", default="1024")
    parser.add_argument("--rows", type=int, default=50_000, help="generated train rows")
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="processes per setting")
    add_save_options(parser)
    args = parser.parse_args()
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for model in args.models.split(","):
            for repeat in range(args.repeats):
                for setting in SETTINGS:
                    result = measure(model, batch_size, setting, args)
                    rows.append({"model": model, "batch_size": batch_size, "setting": setting,
                                 "repeat": repeat + 1, **result})
                    print(f"{model}@{batch_size} {setting}: {result['ms_per_step']:.2f} ms/step, "
                          f"{result['faults_per_step']:.0f} faults/step", flush=True)
    table = []
    for batch_size in sorted({r["batch_size"] for r in rows}):
        for model in dict.fromkeys(r["model"] for r in rows):
            cells = {s: [r for r in rows if r["model"] == model and r["batch_size"] == batch_size
                         and r["setting"] == s] for s in SETTINGS}
            ms = {s: [r["ms_per_step"] for r in c] for s, c in cells.items()}
            faults = {s: [r["faults_per_step"] for r in c] for s, c in cells.items()}
            table.append([model, batch_size,
                          ", ".join(f"{v:.2f}" for v in ms["glibc default"]),
                          ", ".join(f"{v:.2f}" for v in ms["ctrbench"]),
                          f"{min(ms['ctrbench']) / min(ms['glibc default']):.3f}",
                          ", ".join(f"{v:.0f}" for v in faults["glibc default"]),
                          ", ".join(f"{v:.0f}" for v in faults["ctrbench"])])
    print("\nms per training step (one thread, CPU time, best round; one process each), glibc's "
          "default malloc thresholds vs ctrbench's")
    print(tabulate(table, headers=["model", "batch", "default ms", "ctrbench ms",
                                   "best ÷ best", "default faults/step",
                                   "ctrbench faults/step"]))
    save_from_args("page_faults", args, rows)


if __name__ == "__main__":
    main()
