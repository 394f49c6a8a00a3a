"""Why MIAN under the paper's literal initialisation does not train: figures per init rule.

For each rule (``ctrbench.models.init``) on the prepared ``synthetic`` data, prints:

1. at initialisation, on one training batch (train mode, seeded): the RMS of every dense layer's
   output in forward order, the logit spread, and for every parameter tensor the RMS and max of
   its gradient of the mean BCE and the share of its elements with ``|g| < eps`` (Adam's
   ``eps = 1e-8``: below it Adam's step ``lr m / (sqrt(v) + eps)`` shrinks to ``~ lr g / eps``);
2. a short training run through the trainer's own step (``--steps`` steps of batch 128, the
   card's L2): the mean BCE every ``--every`` steps and the validation AUC on 2,048 rows at the
   end (validation only, never test). ``--eps`` reruns a rule with another Adam epsilon and ``--l2``
   with another L2 (controls: if a smaller eps or no L2 trains, the gradients sit below eps, or
   the embeddings' L2 gradient, far above the data's, pulls the embeddings to 0).

Figures only; nothing is asserted. Usage (the figures in docs/fidelity.md):
  OMP_NUM_THREADS=1 python benchmarks/init_evidence.py --steps 600
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctrbench.analysis.metrics import auc
from ctrbench.cards import load_model_card
from ctrbench.data.prepare import prepare_dataset
from ctrbench.engine.train import SplitTensors, TrainStep, build_for_training, model_inputs, predict
from ctrbench.schema import LABEL
from ctrbench.seeding import seed_everything


def layer_outputs(model: nn.Module, batch: dict) -> tuple[list[tuple[str, float]], torch.Tensor]:
    """RMS of every Linear output (forward order) and the logits."""
    rms: list[tuple[str, float]] = []
    handles = [m.register_forward_hook(
        lambda mod, args, out, name=name: rms.append((name, float(out.detach().float().pow(2)
                                                                  .mean().sqrt()))))
        for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        logits = model(batch)
    finally:
        for h in handles:
            h.remove()
    return rms, logits


def at_init(card, data, train: SplitTensors, seed: int, eps: float) -> None:
    seed_everything(seed)
    model = build_for_training(card, data.schema)
    model.train()
    idx = torch.arange(1024)
    batch, label = train.take(idx)
    rms, logits = layer_outputs(model, batch)
    print(f"  logits: std {float(logits.std()):.3g}, max |logit| {float(logits.abs().max()):.3g}")
    print("  dense layer output RMS (forward order, MLP head last):")
    for name, value in rms:
        if name.startswith(("mlp", "gim", "transformer.ffn", "transformer.attention.out")):
            print(f"    {name:32s} {value:.3g}")
    F.binary_cross_entropy_with_logits(logits, label).backward()
    print(f"  gradients (eps = {eps:g}): name, RMS |g|, max |g|, share of elements |g| < eps")
    for name, p in model.named_parameters():
        if p.grad is None or p.grad.is_sparse or name.startswith("bank"):
            continue
        g = p.grad.float().abs()
        print(f"    {name:32s} {float(g.pow(2).mean().sqrt()):.3g}  {float(g.max()):.3g}  "
              f"{float((g < eps).float().mean()):.2f}")


def short_training(card, data, train: SplitTensors, valid: SplitTensors, seed: int, eps: float,
                   steps: int, every: int) -> float:
    generators = seed_everything(seed)
    model = build_for_training(card, data.schema)
    step = TrainStep(model, card.train, torch.device("cpu"))
    for opt in step.optimizers.optimizers:
        for group in opt.param_groups:
            group["eps"] = eps
    perm = torch.randperm(train.rows, generator=generators.torch)
    losses = []
    try:
        for k in range(steps):
            model.train()
            idx = perm[(k * 128) % train.rows:][:128]
            batch, label = train.take(idx)
            _, bce, _ = step(batch, label)
            losses.append(float(bce))
            if (k + 1) % every == 0:
                print(f"    step {k + 1:5d}: mean BCE of the last {every} steps "
                      f"{np.mean(losses[-every:]):.5f}")
    finally:
        step.close()
    scores = predict(model, valid, 8192).numpy()
    value = auc(valid.extra_numpy(LABEL), scores)
    print(f"    validation AUC after {steps} steps: {value:.4f} "
          f"(score spread {float(scores.max() - scores.min()):.3g})")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mian")
    parser.add_argument("--rules", default="torch_default_dense,paper,xavier")
    parser.add_argument("--eps", default="1e-8", help="Adam eps values, comma-separated")
    parser.add_argument("--l2", default="card", help="train.l2 values, comma-separated")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = prepare_dataset("synthetic")
    inputs = model_inputs(data.schema)
    train = SplitTensors(data, "train", torch.device("cpu"), inputs)
    valid = SplitTensors(data, "valid", torch.device("cpu"), inputs)
    valid.truncate(2048)
    base = load_model_card(args.model)
    l2s = [base.train.l2] if args.l2 == "card" else [float(v) for v in args.l2.split(",")]
    for rule in args.rules.split(","):
        for l2 in l2s:
            card = dataclasses.replace(base, train=dataclasses.replace(base.train, init=rule,
                                                                       l2=l2))
            for eps in (float(e) for e in args.eps.split(",")):
                print(f"== {args.model}, init = {rule}, l2 = {l2:g}, Adam eps = {eps:g}")
                at_init(card, data, train, args.seed, eps)
                short_training(card, data, train, valid, args.seed, eps, args.steps,
                               args.every)


if __name__ == "__main__":
    main()
