"""A short probe of model cards on a dataset, by VALIDATION AUC only (the test split is never
loaded): for design decisions before the full protocol (issue 10: init rule, eq. 8 per step vs
shared, the mian_bilinear variant).

Each ``--cards`` entry is ``NAME`` or ``NAME:key=value;key=value`` (``params.*`` / ``train.*``
overrides, values parsed as TOML). Prints, per entry and seed, the validation AUC of every epoch,
the best one, the dead-ReLU fractions of the head at init and at the best epoch, and the health
flags. Figures only; nothing is asserted. Usage (the figures in docs/fidelity.md):
  OMP_NUM_THREADS=1 python benchmarks/validation_probe.py --epochs 3 \\
      --cards "din,mian,mian:params.ibim_score='shared',mian_bilinear"
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import time

import numpy as np
import torch

from ctrbench.cards import load_model_card, parse_set_option
from ctrbench.data.prepare import prepare_dataset
from ctrbench.engine.train import train_and_evaluate


def card_of(entry: str):
    name, _, sets = entry.partition(":")
    card = load_model_card(name)
    overrides = parse_set_option([s for s in sets.split(";") if s]) if sets else {}
    return card.with_overrides(overrides) if overrides else card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--cards", default="din,mian,mian_bilinear")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = prepare_dataset(args.dataset)
    for entry in args.cards.split(","):
        card = card_of(entry)
        best = []
        for seed in (int(s) for s in args.seeds.split(",")):
            start = time.perf_counter()
            out = train_and_evaluate(data, card, seed, device="cpu", max_epochs=args.epochs,
                                     evaluate_test=False, progress=False)
            curve = " ".join(f"{row.valid_auc:.4f}" for row in out.epochs)
            dead = out.health["dead_relu"]
            head = {k: f"{dead['init'].get(k, float('nan')):.2f}->{v:.2f}"
                    for k, v in dead["best"].items() if not k.startswith("transformer")}
            print(f"{entry} (init {out.init}) seed {seed}: valid AUC by epoch {curve}; best "
                  f"{out.valid['auc']:.4f} at {out.best_epoch}; dead ReLU {head}; "
                  f"not_converged {out.health['not_converged']}; "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            best.append(out.valid["auc"])
        print(f"== {entry}: best valid AUC mean {np.mean(best):.4f} over {len(best)} seed(s)",
              flush=True)


if __name__ == "__main__":
    main()
