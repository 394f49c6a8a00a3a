"""A split's columns as tensors (:class:`SplitTensors`) and whole-split prediction."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ctrbench.data.store import PreparedData
from ctrbench.engine.devices import autocast
from ctrbench.errors import DataError
from ctrbench.models import CTRModel
from ctrbench.schema import HIST_LEN, LABEL, Schema

CUDA_FIT_FRACTION = 0.5  # keep a split on the GPU when it needs at most this share of free memory


def model_inputs(schema: Schema) -> list[str]:
    """The columns a model may see: every schema field and ``hist_len``."""
    return [f.name for f in schema.fields] + [HIST_LEN]


class SplitTensors:
    """One split's columns as tensors: on the compute device when they fit, else on the CPU.

    ``inputs`` are handed to the model; ``extras`` (label, group, oracle) stay separate and never
    reach the model. Input columns of the same shape and dtype are packed into one tensor with
    the column as the first axis (``[K, N]`` and ``[K, N, T]``), so that a batch is one
    ``index_select`` per pack plus one widening to int64, and each column of the batch is a
    contiguous view.
    """

    def __init__(self, data: PreparedData, split: str, device: torch.device,
                 inputs: list[str], extras: tuple[str, ...] = (LABEL,)) -> None:
        columns = data.tensors(split, "cpu")
        missing = [name for name in (*inputs, LABEL) if name not in columns]
        if missing:
            raise DataError(f"prepared data {data.path} split {split!r} lacks columns {missing}",
                            hint="rebuild it with `ctrbench prepare NAME --force`")
        self.rows = int(columns[LABEL].shape[0])
        if self.rows == 0:
            raise DataError(f"prepared data {data.path} has an empty {split!r} split")
        self.device = device
        self.storage = device
        wanted = {n: columns[n] for n in (*inputs, *extras) if n in columns}
        if device.type == "cuda":
            need = sum(t.numel() * t.element_size() for t in wanted.values())
            free, _ = torch.cuda.mem_get_info(device)
            if need > CUDA_FIT_FRACTION * free:
                self.storage = torch.device("cpu")
        groups: dict[tuple, list[str]] = {}
        for name in inputs:
            t = wanted[name]
            groups.setdefault((tuple(t.shape[1:]), t.dtype), []).append(name)
        self.packs: list[tuple[list[str], torch.Tensor]] = []
        for names in groups.values():
            packed = torch.stack([wanted[n] for n in names])  # (K, N, ...)
            if self.storage.type == "cpu" and device.type == "cuda":
                packed = packed.pin_memory()
            self.packs.append((names, packed.to(self.storage)))
        self.extras = {n: wanted[n].to(self.storage) for n in extras if n in wanted}
        del columns, wanted

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """Input columns by name (views into the packs)."""
        return {n: packed[k] for names, packed in self.packs for k, n in enumerate(names)}

    def _unpack(self, parts: list[tuple[list[str], torch.Tensor]]) -> dict[str, torch.Tensor]:
        out = {}
        for names, t in parts:
            t = t.to(self.device, non_blocking=True)
            t = t if t.is_floating_point() else t.long()
            out.update((n, t[k]) for k, n in enumerate(names))
        return out

    def take(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Rows ``idx`` (on ``self.storage``): the model batch and the labels ``[B]``."""
        batch = self._unpack([(names, p.index_select(1, idx)) for names, p in self.packs])
        label = self.extras[LABEL].index_select(0, idx).to(self.device, non_blocking=True)
        return batch, label.float()

    def slices(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive model batches of at most ``batch_size`` rows, in row order."""
        for start in range(0, self.rows, batch_size):
            stop = start + batch_size
            yield self._unpack([(names, p[:, start:stop]) for names, p in self.packs])

    def truncate(self, rows: int) -> None:
        """Keep only the first ``rows`` rows (benchmarks)."""
        self.rows = min(self.rows, rows)
        self.packs = [(names, p[:, :self.rows]) for names, p in self.packs]
        self.extras = {n: t[:self.rows] for n, t in self.extras.items()}

    def extra_numpy(self, name: str) -> np.ndarray | None:
        t = self.extras.get(name)
        return None if t is None else t.cpu().numpy()


@torch.inference_mode()
def predict(model: CTRModel, split: SplitTensors, batch_size: int, precision: str = "auto"
            ) -> torch.Tensor:
    """Click probabilities ``[N]`` (float32, CPU) for a whole split, in row order; forward
    passes under ``autocast(split.device, precision)``."""
    model.eval()
    outputs = []
    for batch in split.slices(batch_size):
        with autocast(split.device, precision):
            logits = model(batch)  # (B,)
        # float64 sigmoid, rounded once to float32: equal logits give equal probabilities
        # (float32 sigmoid differs by an ulp between vectorised and tail elements on CPU,
        # which broke ties, e.g. pop's equal counts, by position in the batch)
        outputs.append(torch.sigmoid(logits.double()).float())
    return torch.cat(outputs).cpu()
