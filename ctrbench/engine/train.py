"""The one training and evaluation loop for every model.

``train_and_evaluate(data, card, seed)`` trains ``card``'s model on the train split with early
stopping on validation AUC, restores the best epoch's weights and evaluates the test split once.
Batches are index slices of the split's tensors (a seeded permutation per epoch; no DataLoader,
no per-sample Python). The model sees only the schema's fields and ``hist_len``: never the label,
``group``, ``oracle`` or any other bookkeeping column.

Loss per step: mean BCE-with-logits + the model's (already weighted) auxiliary terms + the L2
penalty of :mod:`..optim`. ``EpochRow.train_loss`` is the epoch's mean BCE (per sample),
``train_aux_loss`` the mean of the auxiliary terms; the L2 penalty is in neither.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ctrbench.analysis.metrics import auc, classification_metrics, logloss
from ctrbench.cards import ModelCard, TrainConfig
from ctrbench.data.store import PreparedData
from ctrbench.engine.optim import (
    BatchEmbeddingL2,
    build_optimizers,
    clip_grad_norm,
    penalised_tables,
)
from ctrbench.engine.threads import load_average
from ctrbench.errors import CardError, CtrbenchError, DataError
from ctrbench.models import ARCHITECTURES, CTRModel, build_model, count_parameters
from ctrbench.progress import progress as progress_bar
from ctrbench.record import EpochRow
from ctrbench.schema import GROUP_KEY, HIST_LEN, LABEL, ORACLE, Schema
from ctrbench.seeding import seed_everything

EXPLAIN_SAMPLE = 256  # test rows whose model.explain() outputs are kept
CUDA_FIT_FRACTION = 0.5  # keep a split on the GPU when it needs at most this share of free memory
CUDA_CHECK_EVERY = 50  # on CUDA, check the loss for NaN/inf every this many steps (a sync)


class TrainingDiverged(CtrbenchError):
    """The training loss became NaN or infinite."""

    def __init__(self, message: str, epoch: int, step: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.epoch = epoch
        self.step = step


@dataclass
class TrainOutcome:
    """What one training run produced (the runner turns it into a RunRecord)."""

    epochs: list[EpochRow]
    best_epoch: int
    valid: dict[str, float]  # the best epoch's validation auc / logloss
    test: dict[str, float]  # auc, logloss, gauc, rows ({} when evaluate_test=False)
    test_scores: dict[str, np.ndarray]  # scores (probabilities), labels, groups, oracle
    explain: dict[str, np.ndarray]  # model.explain() on explain_rows of the test split
    n_parameters: int
    device: str
    explain_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    explain_parts: dict[str, list[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- devices and memory
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``; ``cuda`` / ``cuda:N`` (must exist)."""
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError):
        raise CtrbenchError(f"unknown device {device!r}",
                            hint="use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CtrbenchError(f"device {device!r} requested but CUDA is not available",
                                hint="use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise CtrbenchError(f"device {device!r} does not exist "
                                f"({torch.cuda.device_count()} CUDA device(s))")
    elif resolved.type != "cpu":
        raise CtrbenchError(f"unsupported device {device!r}", hint="use auto, cpu or cuda[:N]")
    return resolved


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark (CUDA allocator; on Linux also the process's VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM to the current RSS
            fh.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocator bytes, else the process's RSS peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- batches
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


# --------------------------------------------------------------------------- model and step
def build_for_training(card: ModelCard, schema: Schema) -> CTRModel:
    """Build ``card``'s model with ``sparse`` set from the optimizer (lazy_adam -> sparse)."""
    params = dict(card.params)
    want_sparse = card.train.optimizer == "lazy_adam"
    if "sparse" in params and bool(params["sparse"]) != want_sparse:
        raise CardError(f"model {card.name!r}: params.sparse = {params['sparse']} conflicts with "
                        f"train.optimizer = {card.train.optimizer!r}",
                        hint="drop params.sparse; the trainer sets it from train.optimizer")
    accepts = inspect.signature(ARCHITECTURES.get(card.arch).__init__).parameters
    if "sparse" in accepts:
        params["sparse"] = want_sparse
    return build_model(card.arch, schema, params)


class TrainStep:
    """One optimisation step: forward_train, BCE + aux + L2, backward, clip, optimiser step."""

    def __init__(self, model: CTRModel, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.optimizers = build_optimizers(model, cfg)
        tables = penalised_tables(model, cfg)
        self.l2 = BatchEmbeddingL2(tables, cfg.l2) if tables else None

    def __call__(self, batch: dict[str, torch.Tensor], label: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, BCE, aux), detached scalars; ``loss`` = BCE + aux + the L2 of plain
        embedding tables (a fused bank's L2 is a gradient hook, not in the value)."""
        self.optimizers.zero_grad()
        if self.l2 is not None:
            self.l2.clear()
        with _autocast(self.device):
            logits, aux_terms = self.model.forward_train(batch)  # (B,), {name: scalar}
        bce = F.binary_cross_entropy_with_logits(logits.float(), label)
        aux = torch.zeros((), device=bce.device)
        for term in aux_terms.values():
            aux = aux + term.float()
        loss = bce + aux
        if self.l2 is not None:
            penalty = self.l2.penalty()
            if penalty is not None:
                loss = loss + penalty
        loss.backward()
        if self.cfg.grad_clip > 0:
            clip_grad_norm(self.optimizers.params, self.cfg.grad_clip)
        self.optimizers.step()
        return loss.detach(), bce.detach(), aux.detach()

    def close(self) -> None:
        if self.l2 is not None:
            self.l2.remove()


@torch.inference_mode()
def predict(model: CTRModel, split: SplitTensors, batch_size: int) -> torch.Tensor:
    """Click probabilities ``[N]`` (float32, CPU) for a whole split, in row order."""
    model.eval()
    outputs = []
    for batch in split.slices(batch_size):
        with _autocast(split.device):
            logits = model(batch)  # (B,)
        outputs.append(torch.sigmoid(logits.float()))
    return torch.cat(outputs).cpu()


def _diverged(card: ModelCard, epoch: int, step: int, value: float) -> TrainingDiverged:
    return TrainingDiverged(
        f"training of {card.name!r} diverged: loss {value} at epoch {epoch}, step {step}",
        epoch=epoch, step=step,
        hint=f"lower train.lr (now {card.train.lr:g}) or set train.grad_clip",
    )


def _train_epoch(step_fn: TrainStep, train: SplitTensors, cfg: TrainConfig, card: ModelCard,
                 epoch: int, n_epochs: int, generator: torch.Generator, show: bool
                 ) -> tuple[float, float]:
    """One pass over the train split in a seeded order; returns (mean BCE, mean aux)."""
    step_fn.model.train()
    device = train.device
    perm = torch.randperm(train.rows, generator=generator).to(train.storage)
    n_steps = math.ceil(train.rows / cfg.batch_size)
    bce_sum = torch.zeros((), dtype=torch.float64, device=device)
    aux_sum = torch.zeros((), dtype=torch.float64, device=device)
    check_every = CUDA_CHECK_EVERY if device.type == "cuda" else 1
    bar_cm = (progress_bar(f"{card.name} epoch {epoch}/{n_epochs}", total=n_steps, unit="batch")
              if show else contextlib.nullcontext())
    with bar_cm as bar:
        for step in range(n_steps):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            batch, label = train.take(idx)
            loss, bce, aux = step_fn(batch, label)
            n = label.shape[0]
            bce_sum += bce.double() * n
            aux_sum += aux.double() * n
            if (step + 1) % check_every == 0 or step + 1 == n_steps:
                value = float(loss) if check_every == 1 else float(bce_sum + aux_sum)
                if not math.isfinite(value):
                    raise _diverged(card, epoch, step + 1, float(loss))
            if bar is not None:
                bar.update(1)
    return float(bce_sum) / train.rows, float(aux_sum) / train.rows


# --------------------------------------------------------------------------- the loop
def train_and_evaluate(
    data: PreparedData,
    card: ModelCard,
    seed: int,
    *,
    device: str = "auto",
    max_epochs: int | None = None,
    on_epoch: Callable[[EpochRow], None] | None = None,
    evaluate_test: bool = True,
    progress: bool = True,
) -> TrainOutcome:
    """Train ``card`` on ``data`` under ``seed``; early-stop on validation AUC; test once.

    ``on_epoch`` is called with each epoch's row after validation; its exceptions (e.g.
    ``optuna.TrialPruned``) propagate unchanged. With ``evaluate_test=False`` the test split is
    never loaded. Raises :class:`TrainingDiverged` on a NaN/inf loss.
    """
    cfg = card.train
    dev = resolve_device(device)
    n_epochs = cfg.epochs if max_epochs is None else max(1, min(cfg.epochs, int(max_epochs)))
    generators = seed_everything(seed)
    model = build_for_training(card, data.schema).to(dev)
    inputs = model_inputs(data.schema)
    train = SplitTensors(data, "train", dev, inputs)
    valid = SplitTensors(data, "valid", dev, inputs)
    valid_labels = valid.extra_numpy(LABEL)
    step_fn = TrainStep(model, cfg, dev)
    rows: list[EpochRow] = []
    best_epoch, best_auc, best_state = 0, -math.inf, None
    best_valid: dict[str, float] = {}
    try:
        for epoch in range(1, n_epochs + 1):
            reset_peak_memory(dev)
            _synchronize(dev)
            start = time.perf_counter()
            train_loss, aux_loss = _train_epoch(step_fn, train, cfg, card, epoch, n_epochs,
                                                generators.torch, progress)
            _synchronize(dev)
            train_seconds = time.perf_counter() - start
            train_load = load_average()
            start = time.perf_counter()
            scores = predict(model, valid, cfg.eval_batch_size).numpy()
            eval_seconds = time.perf_counter() - start
            if not np.isfinite(scores).all():
                raise _diverged(card, epoch, 0, float("nan"))
            row = EpochRow(
                epoch=epoch, train_loss=train_loss, train_aux_loss=aux_loss,
                valid_auc=auc(valid_labels, scores), valid_logloss=logloss(valid_labels, scores),
                train_seconds=train_seconds, eval_seconds=eval_seconds,
                train_samples_per_s=train.rows / max(train_seconds, 1e-9),
                eval_samples_per_s=valid.rows / max(eval_seconds, 1e-9),
                peak_memory_mb=peak_memory_mb(dev),
                threads=torch.get_num_threads(), load_avg_1m=train_load,
            )
            rows.append(row)
            if best_state is None or row.valid_auc > best_auc:
                best_epoch, best_auc = epoch, row.valid_auc
                best_valid = {"auc": row.valid_auc, "logloss": row.valid_logloss}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_epoch is not None:
                on_epoch(row)
            if epoch - best_epoch >= cfg.patience:
                break
    finally:
        step_fn.close()
    model.load_state_dict(best_state)
    outcome = TrainOutcome(epochs=rows, best_epoch=best_epoch, valid=best_valid, test={},
                           test_scores={}, explain={}, n_parameters=count_parameters(model),
                           device=str(dev))
    if evaluate_test:
        del train
        _evaluate_test(model, data, dev, cfg, seed, inputs, outcome)
    return outcome


def _evaluate_test(model: CTRModel, data: PreparedData, dev: torch.device, cfg: TrainConfig,
                   seed: int, inputs: list[str], outcome: TrainOutcome) -> None:
    """Score the test split once with the restored best weights; explain a seeded sample."""
    test = SplitTensors(data, "test", dev, inputs, extras=(LABEL, GROUP_KEY, ORACLE))
    probs = predict(model, test, cfg.eval_batch_size).numpy()
    labels = test.extra_numpy(LABEL)
    groups = test.extra_numpy(GROUP_KEY)
    outcome.test = classification_metrics(labels, probs, groups)
    outcome.test_scores = {"scores": probs.astype(np.float32), "labels": labels}
    if groups is not None:
        outcome.test_scores["groups"] = groups
    oracle = test.extra_numpy(ORACLE)
    if oracle is not None:
        outcome.test_scores["oracle"] = oracle
        outcome.test["oracle_auc"] = auc(labels, oracle)
    rng = np.random.default_rng([seed, 256])
    rows = np.sort(rng.choice(test.rows, size=min(EXPLAIN_SAMPLE, test.rows), replace=False))
    idx = torch.from_numpy(rows).to(test.storage)
    batch, _ = test.take(idx)
    model.eval()
    with torch.inference_mode(), _autocast(dev):
        explained = model.explain(batch)
    outcome.explain = {k: v.float().cpu().numpy() for k, v in explained.items()}
    outcome.explain_rows = rows.astype(np.int64)
    parts = getattr(model, "GIM_PARTS", None)
    if parts is not None and "gim" in outcome.explain:
        outcome.explain_parts = {"gim": list(parts)}
