"""Training step time with a native kernel and with its torch path, as a ratio in one run.

For each model card (dense ``adam``), Electronics-shaped generated data
(``train_throughput.generated_train_split``), ``--batch-size``, ``--threads``: one model, whose
kernel ``--kernels`` is switched on and off between rounds (the module's ``native_usable``
answers False when off, so the torch path of the same function runs). Rounds alternate the two,
and each figure is the best of ``--rounds`` rounds of ``--steps`` steps (``Variant.run``: the
batch slicing and the trainer's whole ``TrainStep``, a deferred Adam's settling included).
Kernels: ``dice`` (:mod:`ctrbench.models.fast.dice`: DIN's and DIEN's Dice), ``rows``
(:mod:`ctrbench.models.fast.native_rows`: the dense embedding gradient's row updates),
``block`` (:mod:`ctrbench.models.fast.transformer_block`: MIAN's Pre-LN block as one autograd
node; off: the same block through autograd), ``layer_norm``
(:mod:`ctrbench.models.fast.native_layer_norm`: the LayerNorms inside that node), ``ibim``
(:mod:`ctrbench.models.fast.fused_ibim`: MIAN's IBIM attention), ``fields``
(:mod:`ctrbench.models.fast.fused_fields`: its IUIM and ICIM), ``dien``
(:mod:`ctrbench.models.fast.fused_dien`: DIEN's attention and auxiliary loss), ``relu``
(:mod:`ctrbench.models.fast.native_relu`: the FFN's ReLU backward in MIAN's block), ``onednn``
(:mod:`ctrbench.models.fast.onednn_linear`: xDeepFM's CIN products in oneDNN; off: MKL's),
``outer`` (:mod:`ctrbench.models.fast.native_outer`: the CIN's outer-product backward; off:
torch's batched products), ``pairs`` (:mod:`ctrbench.models.fast.cin`: the CIN's first layer
on the distinct symmetric pairs; off: all ``m * m``), ``cin_blocks``
(:mod:`ctrbench.models.xdeepfm`: the CIN trained on blocks of 128 rows; off: one pass).
Figures only. Usage:
  python benchmarks/native_ab.py --models din,dien,mian,dcn --kernels dice,rows
  python benchmarks/native_ab.py --models din --kernels dice --batch-size 1024 --threads 2
  python benchmarks/native_ab.py --models mian --kernels block,layer_norm --batch-size 1024
  python benchmarks/native_ab.py --models xdeepfm --kernels onednn --threads 2
  python benchmarks/native_ab.py --models xdeepfm --kernels cin_blocks --batch-size 1024
Results: printed, and one JSON under benchmarks/results/ (``--no-save``: none).
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import functools
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import add_save_options, save_from_args
from train_throughput import Variant, ab_columns, best_alternating, generated_train_split

from ctrbench import native
from ctrbench.cards import resolve_model_spec
from ctrbench.engine.threads import apply_threads
from ctrbench.models import xdeepfm
from ctrbench.models.fast import (
    cin,
    dice,
    fused_dien,
    fused_fields,
    fused_ibim,
    native_layer_norm,
    native_outer,
    native_relu,
    native_rows,
    onednn_linear,
)
from ctrbench.models.fast import transformer_block as fused_block

#: kernel -> (module, the module's function that says whether the kernel can run, the native
#: library it needs)
KERNELS = {"dice": (dice, "native_usable", "native_dice"),
           "rows": (native_rows, "native_usable", "native_rows"),
           "block": (fused_block, "usable", "fused_attention"),
           "layer_norm": (native_layer_norm, "usable", "native_layer_norm"),
           "ibim": (fused_ibim, "usable", "fused_ibim"),
           "fields": (fused_fields, "usable", "fused_fields"),
           "dien": (fused_dien, "usable", "fused_dien"),
           "relu": (native_relu, "usable", "native_relu"),
           "outer": (native_outer, "usable", "native_outer"),
           "pairs": (cin, "folds_pairs", None),
           "cin_blocks": (xdeepfm, "trains_cin_in_blocks", None),
           "onednn": (onednn_linear, "usable", None)}  # None: nothing built here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="din,dien,mian,dcn")
    parser.add_argument("--kernels", default="dice,rows")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rows", type=int, default=40000)
    add_save_options(parser)
    args = parser.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    for kernel in kernels:
        if kernel not in KERNELS:
            parser.error(f"unknown kernel {kernel!r} (choose from {', '.join(KERNELS)})")
        stem = KERNELS[kernel][2]
        if ((stem is not None and native.load(stem) is None)
                or (kernel == "onednn" and not onednn_linear.available())):
            parser.error(f"the {kernel} kernel is not available here")
    apply_threads(args.threads)  # as ctrbench run --threads gives them
    rows = []
    with generated_train_split(max(args.rows, 2 * args.batch_size)) as (data, train):
        for name in resolve_model_spec(args.models):
            variant = Variant(data, name, "adam", args.batch_size, train)
            variant.run(20)  # warm-up (allocations, the kernels' build)
            for kernel in kernels:
                module, attribute, _ = KERNELS[kernel]
                native_usable = getattr(module, attribute)

                def run_with(on: bool, steps: int, module=module, attribute=attribute,
                             usable=native_usable, variant=variant) -> float:
                    setattr(module, attribute, usable if on else (lambda *_: False))
                    return variant.run(steps)

                try:
                    best = best_alternating({on: functools.partial(run_with, on)
                                             for on in (True, False)},
                                            args.rounds, args.steps, args.batch_size)
                finally:
                    setattr(module, attribute, native_usable)
                rows.append({"model": name, "kernel": kernel, "batch_size": args.batch_size,
                             "threads": args.threads,
                             **ab_columns(best[False], best[True], ("torch", "native"))})
                print(rows[-1], flush=True)
    print(tabulate(rows, headers="keys"))
    save_from_args("native_ab", args, rows)


if __name__ == "__main__":
    main()
