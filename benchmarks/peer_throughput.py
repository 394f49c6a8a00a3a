"""Training throughput of the peers, DeepCTR-Torch 0.3.0 and FuxiCTR 2.3.10, side by side.

Run with a SCRATCH virtual environment that holds the peers (never a dependency of ctrbench; see
``benchmarks/peers/README.md`` for the exact install commands and every shim):

  /work/peers-venv/bin/python benchmarks/peer_throughput.py --threads 1,2
  /work/peers-venv/bin/python benchmarks/peer_throughput.py --models din,dien --train-rows 2560
  /work/peers-venv/bin/python benchmarks/peer_throughput.py --threads 1,2 --with-ctrbench

``--with-ctrbench`` adds ctrbench's own trainer as a third library in the same rounds, on the
same rows (``peers/ctrbench_side.py``), prints ctrbench's fit figure over the faster peer's
best figure per model (each side at its best thread count), and saves the run as
``side_by_side`` (the README's peer table keeps reading ``peer_throughput``).

Data: exactly ``benchmarks/train_throughput.py``'s ``generated_store(root, rows)`` (200k
Electronics-shaped train rows by default: item_id, cate_id, hist_item_id / hist_cate_id [B, 30]
left-aligned with hist_len, 5 user fields, 4 context fields; neg_hist_* only for DIEN's auxiliary
loss), converted to each library's feature definitions with embedding width 16 and the history
sharing the candidate's item / category tables.

Models: LR, Wide&Deep, DCN, DeepFM, xDeepFM, DIN, DIEN (AUGRU + auxiliary loss), with the towers,
dropout, activations, CIN sizes, cross layers and attention units of ctrbench's cards
(models/*.toml), Adam lr 1e-3, batch 128, L2 ``--l2`` on the embedding tables (both peers
penalise the WHOLE tables every step; ctrbench only the rows a batch touches). DeepCTR-Torch ships
every model; FuxiCTR's pip package ships only layers, so its models are built here from its own
layers on its ``BaseModel`` (training loop, loss, regulariser, optimiser), as its model zoo does;
its DIEN's AUGRU is written here (the pip package has none). The README lists what differs.

Two figures per library x model, train samples/s after a warm-up of ``--warmup-steps`` steps:
- fit: the library's own training loop over ``--train-rows`` rows as a user runs it, validation
  off (DeepCTR-Torch ``model.fit(x, y, batch_size, epochs=1, verbose=0)``, the whole call timed;
  FuxiCTR ``model.train_epoch(loader)``, the body of its ``fit`` without evaluation and
  checkpoint reload, over its npz ``RankDataLoader`` built beforehand);
- step: forward + loss (+ regulariser + aux) + backward + optimizer.step in a tight loop over
  batches pre-sliced from tensors (no DataLoader): the model compute without loader overhead.
  DeepCTR-Torch: the body of its fit loop; FuxiCTR: its ``model.train_step(batch)`` (which also
  clips the gradient norm, as its fit does).
Each figure is the best of ``--rounds`` rounds; within a model the libraries take turns.
Figures only; the machine may be shared: say so when quoting.

This file is the driver (measuring, the table); the models are built in ``benchmarks/peers/``:
``deepctr.py`` (the library's own models + shims), ``fuxictr.py`` (models composed from FuxiCTR's
layers), ``common.py`` (the card hyperparameters and the data both share).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import contextlib
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the peers package
from bench_results import add_save_options, save_from_args, thread_counts
from peers.common import LABELS, LIBRARIES, MODELS, count_parameters, generated_store
from peers.deepctr import DeepCTRRun
from peers.fuxictr import FuxiCTRRun


def measure(model: str, libraries: list[str], data, cols, args, root: Path,
            flip: bool) -> dict[str, dict]:
    """Warm up, then ``rounds`` x (fit, step) per library, the libraries taking turns."""
    warm = args.warmup_steps * args.batch_size
    lo, hi = warm, warm + args.train_rows
    schema = data.schema
    runs = []
    for library in libraries:
        if library == "deepctr":
            runs.append(DeepCTRRun(model, schema, cols, args))
        elif library == "ctrbench":
            from peers.ctrbench_side import CtrbenchRun

            runs.append(CtrbenchRun(model, data, args))
        else:
            runs.append(FuxiCTRRun(model, schema, cols, args, root / model))
    fit_inputs, step_inputs = {}, {}
    for run in runs:
        if run.library == "fuxictr":
            run.fit(run.loader(0, warm))
            fit_inputs[run.library] = run.loader(lo, hi)
        else:
            run.fit(0, warm)
            fit_inputs[run.library] = (lo, hi)
        run.step(run.batches(0, warm))
        step_inputs[run.library] = run.batches(lo, hi)
    best = {run.library: {"fit": 0.0, "step": 0.0, "params": count_parameters(run.net)}
            for run in runs}
    rows = hi - lo
    for r in range(args.rounds):
        order = runs[::-1] if (r % 2 == 1) ^ flip else runs
        for run in order:
            arg = fit_inputs[run.library]
            start = time.perf_counter()
            if isinstance(arg, tuple):
                run.fit(*arg)
            else:
                run.fit(arg)
            fit_rate = rows / (time.perf_counter() - start)
            start = time.perf_counter()
            run.step(step_inputs[run.library])
            step_rate = rows / (time.perf_counter() - start)
            b = best[run.library]
            b["fit"], b["step"] = max(b["fit"], fit_rate), max(b["step"], step_rate)
            print(f"{model:>10} {label(run.library):>14} round {r + 1}: fit {fit_rate:>8,.0f}/s "
                  f"step {step_rate:>8,.0f}/s", flush=True)
    return best


def label(library: str) -> str:
    return LABELS.get(library, library)


def side_by_side(results: dict, models: list[str]) -> list[dict]:
    """Per model: ctrbench's best fit figure over the faster peer's best fit-or-step figure,
    each at its best thread count (the README's rule)."""
    rows = []
    for model in models:
        ours, peer = (0.0, 0), (0.0, 0, "")
        for (m, threads), per_lib in results.items():
            if m != model:
                continue
            for lib, r in per_lib.items():
                if lib == "ctrbench":
                    ours = max(ours, (r["fit"], threads))
                else:
                    peer = max(peer, (max(r["fit"], r["step"]), threads, label(lib)))
        rows.append({"model": model, "ctrbench_fit_samples_per_s": round(ours[0], 1),
                     "ctrbench_threads": ours[1], "faster_peer": peer[2],
                     "peer_samples_per_s": round(peer[0], 1), "peer_threads": peer[1],
                     "ratio": round(ours[0] / peer[0], 3) if peer[0] else None})
    return rows


def library_version(dist: str) -> str | None:
    from importlib.metadata import version

    with contextlib.suppress(Exception):
        return version(dist)
    return None


def versions() -> str:
    from importlib.metadata import version

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"numpy {np.__version__}"]
    for dist in ("deepctr-torch", "fuxictr", "pandas"):
        with contextlib.suppress(Exception):
            parts.append(f"{dist} {version(dist)}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--rows", type=int, default=200_000, help="generated train rows")
    parser.add_argument("--train-rows", type=int, default=25_600, help="timed rows per figure")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--l2", type=float, default=1e-3, help="embedding L2 (0: none)")
    parser.add_argument("--threads", type=thread_counts, default="2",
                        help="torch.set_num_threads; a comma list (1,2) measures each in turn "
                             "(one row per thread count; the README takes each peer's best)")
    parser.add_argument("--with-ctrbench", action="store_true",
                        help="also ctrbench's trainer in the same rounds; saved as side_by_side")
    parser.add_argument("--fuxictr-workers", type=int, default=0,
                        help="num_workers of FuxiCTR's npz loader (its default is 1)")
    add_save_options(parser)
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    libraries = [lib for lib in args.libraries.split(",") if lib]
    for name in models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    for name in libraries:
        if name not in (*LIBRARIES, "ctrbench"):
            parser.error(f"unknown library {name!r} (choose from {', '.join(LIBRARIES)})")
    if args.with_ctrbench and "ctrbench" not in libraries:
        libraries.append("ctrbench")
    needed = args.warmup_steps * args.batch_size + args.train_rows
    if needed > args.rows:
        parser.error(f"--rows must be at least warm-up + train rows = {needed}")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generated_store(root / "store", args.rows)
        cols = {k: np.asarray(v) for k, v in data.split("train", mmap=False).items()}
        print(f"{versions()}\ndata: {args.rows:,} generated rows "
              f"({time.perf_counter() - began:.0f} s); threads {args.threads}", flush=True)
        results = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            for i, model in enumerate(models):
                here = root / f"threads-{threads}"
                (here / model).mkdir(parents=True)
                results[model, threads] = measure(model, libraries, data, cols, args,
                                                  here, i % 2 == 1)
    table = [[label(lib), model, f"{r['fit']:,.0f}", f"{r['step']:,.0f}", threads,
              f"{r['params']:,}"]
             for (model, threads), per_lib in results.items() for lib, r in per_lib.items()]
    print(f"\nbatch {args.batch_size}, {args.train_rows:,} timed rows per figure after "
          f"{args.warmup_steps} warm-up steps, best of {args.rounds} rounds, L2 {args.l2:g}, "
          f"FuxiCTR loader workers {args.fuxictr_workers}; "
          f"total {time.perf_counter() - began:.0f} s")
    print(tabulate(table, headers=["library", "model", "fit samples/s", "step samples/s",
                                   "torch threads", "params"]))
    dists = {"deepctr": "deepctr-torch", "fuxictr": "fuxictr", "ctrbench": "ctrbench"}
    rows = [
        {"library": label(lib), "library_version": library_version(dists[lib]), "model": model,
         "fit_samples_per_s": round(r["fit"], 1), "step_samples_per_s": round(r["step"], 1),
         "torch_threads": threads, "params": r["params"]}
        for (model, threads), per_lib in results.items() for lib, r in per_lib.items()]
    if "ctrbench" not in libraries:
        save_from_args("peer_throughput", args, rows)
        return
    ratios = side_by_side(results, models)
    print("\nctrbench (fit, the trainer's loop) over the faster peer (best of fit and step), "
          "each at its best thread count, measured in the same rounds:")
    print(tabulate([[r["model"], f"{r['ctrbench_fit_samples_per_s']:,.0f}",
                     r["ctrbench_threads"], r["faster_peer"],
                     f"{r['peer_samples_per_s']:,.0f}", r["peer_threads"],
                     "no peer" if r["ratio"] is None else f"{r['ratio']:.2f}x"]
                    for r in ratios],
                   headers=["model", "ctrbench /s", "threads", "faster peer", "peer /s",
                            "threads", "ctrbench / peer"]))
    save_from_args("side_by_side", args, rows + [{"ratio_row": True, **r} for r in ratios])


if __name__ == "__main__":
    main()
