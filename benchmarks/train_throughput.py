"""Training and evaluation throughput of every model through ctrbench's one trainer.

For each model card x optimizer (adam | lazy_adam) x batch size, times ``--steps`` full training
steps exactly as ``engine.train`` runs them (seeded permutation, batch = index slices of the
split's tensors, forward_train, BCE + aux + L2, backward, optimiser step) and a full evaluation
pass over ``--eval-rows`` rows, and prints samples/s, peak RSS and parameter counts, next to the
peers' measured train samples/s at batch 128 on this kind of machine (DeepCTR-Torch 0.3.0 /
FuxiCTR 2.3.10; the target is >= 3x the faster peer), and the per-epoch train-time ratios
MIAN/DIN and DIEN/DIN beside the MIAN paper's §4.5 (3,700/3,143 = 1.18; 4,073/3,143 = 1.30).

Data: ``--data generated`` (default) is an in-memory dataset shaped like Amazon Electronics
(200k rows, T = 30, 63,001 items with Zipf popularity, 801 categories, 192,403 users, the
reference schema's other fields), matching the peers' measurement; ``--data synthetic`` uses the
prepared ``synthetic`` card. Embedding width 16 (the cards' default).

Figures only; nothing is asserted. The figure for each setting is the best of ``--rounds``
rounds, a model's settings taking turns in every round; eval samples/s and peak RSS are per
model (all its settings held at once). The machine may be shared: say so when quoting. Usage:
  python benchmarks/train_throughput.py --threads 1,2     # each model at its best of the two
  python benchmarks/train_throughput.py --models din,mian --batch-sizes 128 --steps 30
  python benchmarks/train_throughput.py --models xdeepfm --precision bf16 \
      --save-as train_throughput_bf16          # the opt-in bf16 autocast (train.precision)
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from ctrbench.cards import load_model_card, resolve_model_spec
from ctrbench.data.store import PreparedData, write_store
from ctrbench.engine.devices import PRECISIONS
from ctrbench.engine.threads import apply_threads
from ctrbench.engine.train import (
    SplitTensors,
    TrainStep,
    build_for_training,
    model_inputs,
    peak_memory_mb,
    predict,
    reset_peak_memory,
)
from ctrbench.models import count_parameters
from ctrbench.schema import reference_schema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import (
    BenchResultError,
    machine_name,
    newest_peers,
    peer_rates,
    thread_counts,
)
from results_io import write_result

PAPER_MODELS = "lr,wide_deep,dcn,deepfm,xdeepfm,din,dien,mian"
# Peers' train samples/s at batch 128 (DeepCTR-Torch, FuxiCTR) as the issue quoted them; the
# measured ones come from this machine's newest benchmarks/peer_throughput.py result, plain or
# --with-ctrbench (best of its "fit" and "step" figures and of its thread counts). "vs faster
# peer" divides by the largest.
PEERS_ISSUE = {"lr": (16_700, 25_200), "wide_deep": (4_700, 6_200), "dcn": (3_900, 6_900),
               "deepfm": (3_800, 6_200), "xdeepfm": (2_000, 1_500), "din": (3_300, 4_600),
               "dien": (1_200, 1_300)}
PAPER_RATIOS = {"mian": 3700 / 3143, "dien": 4073 / 3143}


def generated_store(root: Path, rows: int, seed: int = 0) -> PreparedData:
    """An Electronics-shaped random store (ids int32, left-aligned histories)."""
    n_items, n_cates, n_users, T = 63_001, 801, 192_403, 30
    schema = reference_schema(n_items=n_items, n_cates=n_cates, max_len=T, user_fields={
        "user_id": n_users, "hist_len_bucket": 8, "mean_rating_bucket": 7, "fav_cate": n_cates,
        "tenure_bucket": 8})
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items - 1) ** 0.9
    popularity /= popularity.sum()
    item_cate = rng.integers(2, n_cates, n_items)

    def split(n: int) -> dict[str, np.ndarray]:
        hist_len = np.minimum(rng.geometric(1 / 16, n), T)  # mean history ~16 of 30
        mask = np.arange(T)[None, :] < hist_len[:, None]
        cols = {"item_id": rng.choice(n_items - 2, n, p=popularity) + 2,
                "hist_item_id": (rng.choice(n_items - 2, (n, T), p=popularity) + 2) * mask,
                "neg_hist_item_id": rng.integers(2, n_items, (n, T)) * mask}
        cols["cate_id"] = item_cate[cols["item_id"]]
        cols["hist_cate_id"] = item_cate[cols["hist_item_id"]] * mask
        cols["neg_hist_cate_id"] = item_cate[cols["neg_hist_item_id"]] * mask
        for f in schema.user + schema.context:
            cols[f.name] = rng.integers(2, f.vocab_size, n)
        out = {k: v.astype(np.int32) for k, v in cols.items()}
        out["hist_len"] = hist_len.astype(np.int32)
        out["label"] = rng.integers(0, 2, n).astype(np.float32)
        out["group"] = cols["user_id"].astype(np.int64)
        return out

    n_eval = max(1, rows // 10)
    splits = {"train": split(rows), "valid": split(n_eval), "test": split(n_eval)}
    meta = {"dataset": "generated", "card_hash": "benchmark", "data_hash": f"gen-{rows}-{seed}"}
    return write_store(root / "generated", schema, splits, meta)


@contextlib.contextmanager
def generated_train_split(rows: int) -> Iterator[tuple[PreparedData, SplitTensors]]:
    """A temporary :func:`generated_store` of ``rows`` train rows and its train split on the
    CPU (removed on exit)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = generated_store(Path(tmp), rows)
        yield data, SplitTensors(data, "train", torch.device("cpu"), model_inputs(data.schema))


class Variant:
    """One (optimizer, batch size) setting of a model: its own model copy and optimiser."""

    def __init__(self, data: PreparedData, name: str, optimizer: str, batch_size: int,
                 train: SplitTensors, precision: str = "auto") -> None:
        self.card = load_model_card(name).with_overrides(
            {"train": {"optimizer": optimizer, "batch_size": batch_size,
                       "precision": precision}})
        torch.manual_seed(0)
        self.model = build_for_training(self.card, data.schema)
        self.step = TrainStep(self.model, self.card.train, torch.device("cpu"))
        self.train = train
        self.batch_size = batch_size
        self.perm = torch.randperm(train.rows, generator=torch.Generator().manual_seed(0))
        self.position = 0
        self.best = 0.0
        self.clock = time.perf_counter  # benchmarks/ratio_to_din.py may use CPU time

    def run(self, steps: int) -> float:
        """Train ``steps`` steps; returns samples/s (and keeps the best). The time includes
        settling the rows a deferred Adam left behind (``Optimizers.settle``): every update a
        dense Adam makes in these steps is paid for in them."""
        self.model.train()
        start = self.clock()
        for _ in range(steps):
            if self.position + self.batch_size > self.train.rows:
                self.position = 0
            idx = self.perm[self.position:self.position + self.batch_size]
            self.position += self.batch_size
            batch, label = self.train.take(idx)
            self.step(batch, label)
        self.step.optimizers.settle()
        rate = steps * self.batch_size / (self.clock() - start)
        self.best = max(self.best, rate)
        return rate


def best_alternating(arms: dict, rounds: int, steps: int, batch_size: int) -> dict:
    """Best seconds per step of each arm over ``rounds`` rounds in which the arms take turns
    (``arms``: key -> a function that trains ``steps`` steps and returns samples/s, e.g.
    :meth:`Variant.run`); a burst of load hits every arm alike. The A/B scripts' loop."""
    best = dict.fromkeys(arms, float("inf"))
    for _ in range(rounds):
        for key, run in arms.items():
            best[key] = min(best[key], batch_size / run(steps))
    return best


def ab_columns(before: float, after: float, names: tuple[str, str]) -> dict[str, float]:
    """An A/B row's figures from two best seconds per step: ``<name>_ms`` of each and the
    speed-up ``before / after``."""
    return {f"{names[0]}_ms": round(before * 1e3, 3), f"{names[1]}_ms": round(after * 1e3, 3),
            "speedup": round(before / after, 3)}


def measure_model(data: PreparedData, name: str, optimizers: list[str], batch_sizes: list[int],
                  steps: int, rounds: int, train: SplitTensors, valid: SplitTensors,
                  precision: str = "auto") -> dict[str, object]:
    """Best train samples/s per (optimizer, batch) with the settings taking turns in every
    round (a burst of load from other processes hits them alike); eval samples/s; peak RSS."""
    device = torch.device("cpu")
    reset_peak_memory(device)
    variants = {(o, b): Variant(data, name, o, b, train, precision)
                for o in optimizers for b in batch_sizes}
    for variant in variants.values():
        variant.run(3)  # warm-up
    for _ in range(rounds):
        for variant in variants.values():
            variant.run(steps)
    first = next(iter(variants.values()))
    best_eval = 0.0
    for _ in range(max(1, rounds // 2)):
        start = time.perf_counter()
        predict(first.model, valid, first.card.train.eval_batch_size, precision)
        best_eval = max(best_eval, valid.rows / (time.perf_counter() - start))
    out = {"train": {key: v.best for key, v in variants.items()}, "eval": best_eval,
           "rss": peak_memory_mb(device), "params": count_parameters(first.model)}
    for variant in variants.values():
        variant.step.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=PAPER_MODELS, help="names, groups or globs")
    parser.add_argument("--data", choices=("generated", "synthetic"), default="generated")
    parser.add_argument("--rows", type=int, default=200_000, help="generated train rows")
    parser.add_argument("--eval-rows", type=int, default=20_000)
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--optimizers", default="adam,lazy_adam")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=thread_counts, default="2",
                        help="intra-op threads; a comma list (1,2) measures each in turn")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the cards' train.precision (auto = float32 on the CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder for the JSON (default benchmarks/results/)")
    parser.add_argument("--save-as", default="train_throughput",
                        help="result name; the README renders train_throughput only")
    args = parser.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.save_as):
        parser.error(f"--save-as {args.save_as!r}: use letters, digits, '.', '_', '-'")
    models = resolve_model_spec(args.models)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    optimizers = args.optimizers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if args.data == "generated":
            data = generated_store(Path(tmp), args.rows)
        else:
            from ctrbench.data.prepare import prepare_dataset

            data = prepare_dataset("synthetic")
        inputs = model_inputs(data.schema)
        train = SplitTensors(data, "train", torch.device("cpu"), inputs)
        valid = SplitTensors(data, "valid", torch.device("cpu"), inputs)
        valid.truncate(args.eval_rows)
        per_threads: dict[tuple[str, str, int, int], dict[str, float]] = {}
        for threads in args.threads:
            apply_threads(threads)  # as ctrbench run --threads gives them
            for name in models:
                measured = measure_model(data, name, optimizers, batch_sizes, args.steps,
                                         args.rounds, train, valid, args.precision)
                for (optimizer, batch_size), rate in measured["train"].items():
                    per_threads[name, optimizer, batch_size, threads] = {
                        "train": rate, "eval": measured["eval"], "rss": measured["rss"],
                        "params": measured["params"]}
                    print(f"{name:>12} {optimizer:>9} B={batch_size:<5} threads {threads} "
                          f"train {rate:>9,.0f}/s eval {measured['eval']:>9,.0f}/s", flush=True)
    results: dict[tuple[str, str, int], dict[str, float]] = {}  # the best thread count's
    for (name, optimizer, batch_size, _), r in per_threads.items():
        best = results.get((name, optimizer, batch_size))
        if best is None or r["train"] > best["train"]:
            results[name, optimizer, batch_size] = r
    ratios = print_tables(results, models, optimizers, batch_sizes, args)
    rows = [{"model": name, "optimizer": optimizer, "batch_size": batch_size, "threads": threads,
             "train_samples_per_s": r["train"], "eval_samples_per_s": r["eval"],
             "peak_rss_mb": r["rss"], "params": r["params"]}
            for (name, optimizer, batch_size, threads), r in per_threads.items()]
    path = write_result(f"{args.save_as}.py", {k: str(v) for k, v in vars(args).items()},
                        rows + ratios, args.out)
    print(f"\nwritten: {path}")


def measured_peers(out: Path | None) -> dict[str, tuple[float, float]]:
    """(DeepCTR-Torch, FuxiCTR) train samples/s per model from this machine's newest
    peer_throughput or side_by_side result, or {} when there is none."""
    try:
        rates = peer_rates(newest_peers(out, machine_name()))
    except BenchResultError:
        return {}
    return {m: (per.get("DeepCTR-Torch", 0.0), per.get("FuxiCTR", 0.0))
            for m, per in rates.items()}


def print_tables(results, models, optimizers, batch_sizes, args) -> list[dict[str, object]]:
    """Print the throughput and ratio tables; returns the ratio rows (for the JSON)."""
    peers = measured_peers(args.out)
    rows = []
    for (name, optimizer, batch_size), r in results.items():
        base = name.split("@")[0]
        issue = PEERS_ISSUE.get(base) if batch_size == 128 else None
        here = peers.get(base) if batch_size == 128 else None
        versus = f"{r['train'] / max(*issue, *here):.1f}x" if issue and here else ""
        rows.append([name, optimizer, batch_size, f"{r['train']:,.0f}", f"{r['eval']:,.0f}",
                     f"{r['rss']:,.0f}", f"{r['params']:,}",
                     f"{issue[0]:,} / {issue[1]:,}" if issue else "",
                     f"{here[0]:,.0f} / {here[1]:,.0f}" if here else "", versus])
    print(f"\nthreads={args.threads}, data={args.data}, best of {args.rounds} rounds x "
          f"{args.steps} steps")
    print(tabulate(rows, headers=["model", "optimizer", "batch", "train samples/s",
                                  "eval samples/s", "peak RSS MB", "params",
                                  "peers @128 issue (DeepCTR/Fuxi)", "peers @128 measured",
                                  "vs faster peer"]))
    ratio_rows, data_rows = [], []
    for optimizer in optimizers:
        for batch_size in batch_sizes:
            din = results.get(("din", optimizer, batch_size))
            for name, paper in PAPER_RATIOS.items():
                other = results.get((name, optimizer, batch_size))
                if din and other:
                    ratio = din["train"] / other["train"]
                    ratio_rows.append([f"{name.upper()}/DIN", optimizer, batch_size,
                                       f"{ratio:.2f}", f"{paper:.2f}"])
                    data_rows.append({"ratio": f"{name}/din", "optimizer": optimizer,
                                      "batch_size": batch_size, "epoch_time_ratio": ratio,
                                      "paper": paper})
    if ratio_rows:
        print("\nper-epoch train time relative to DIN (paper §4.5); the models ran one after "
              "another, so on a shared machine prefer benchmarks/ratio_to_din.py (interleaved)")
        print(tabulate(ratio_rows, headers=["ratio", "optimizer", "batch", "ours", "paper"]))
    return data_rows


if __name__ == "__main__":
    main()
