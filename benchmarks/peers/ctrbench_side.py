"""ctrbench's own trainer as a third "library" in ``peer_throughput.py --with-ctrbench``.

Issue 13 asks for ctrbench and the peers measured side by side in one run; this adapter gives
ctrbench the same two figures, in the same rounds and on the same rows as the peers:

- fit: what ``ctrbench run`` does per batch (``SplitTensors.take`` of the batch's rows, then
  the trainer's ``TrainStep``: forward, BCE + aux + L2, backward, optimiser), over the rows in
  order;
- step: ``TrainStep`` alone over batches sliced beforehand.

The model is the registry card with its defaults (dense Adam, L2 on the touched embedding rows,
the card's init), batch ``--batch-size``, float32 on the CPU. Both figures include settling the
rows a deferred Adam left behind at the end of the timed batches (the updates a dense Adam
makes in them, all paid for).

Threads: the harness's count as ``ctrbench run --threads N`` uses it (``apply_threads``: under
the PASSIVE wait policy torch's ops on one thread and the large products on N), put back for
the peers after each call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from train_throughput import Variant  # benchmarks/ is on sys.path (peer_throughput.py)

from ctrbench import openmp
from ctrbench.engine.threads import apply_threads
from ctrbench.engine.train import SplitTensors, model_inputs

CPU = torch.device("cpu")


@contextlib.contextmanager
def ctrbench_threads() -> Iterator[None]:
    """The harness's thread count as ctrbench uses it, torch's plain count again after."""
    budget = torch.get_num_threads()
    apply_threads(budget)
    try:
        yield
    finally:
        torch.set_num_threads(budget)
        openmp.set_split(None)


class CtrbenchRun:
    library = "ctrbench"

    def __init__(self, model: str, data, args) -> None:
        """``data``: the ``PreparedData`` the peers' columns come from (same rows)."""
        split = SplitTensors(data, "train", CPU, model_inputs(data.schema))
        # the card's own optimiser (dense Adam) and settings, built as train_throughput does
        variant = Variant(data, model, "adam", args.batch_size, split)
        self.net, self.train_step, self.split = variant.model, variant.step, split
        self.batch_size = args.batch_size

    def _row_blocks(self, lo: int, hi: int) -> list[torch.Tensor]:
        return [torch.arange(start, min(start + self.batch_size, hi))
                for start in range(lo, hi, self.batch_size)]

    def fit(self, lo: int, hi: int) -> None:
        self.net.train()
        with ctrbench_threads():
            for rows in self._row_blocks(lo, hi):
                self.train_step(*self.split.take(rows))
            self.train_step.optimizers.settle()  # a deferred Adam's late rows: paid for here

    def batches(self, lo: int, hi: int) -> list:
        return [self.split.take(rows) for rows in self._row_blocks(lo, hi)]

    def step(self, batches: list) -> None:
        self.net.train()
        with ctrbench_threads():
            for batch, label in batches:
                self.train_step(batch, label)
            self.train_step.optimizers.settle()
