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
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ctrbench.analysis.metrics import auc, logloss
from ctrbench.cards import ModelCard, TrainConfig
from ctrbench.data.store import PreparedData
from ctrbench.engine.devices import (
    autocast,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    synchronize,
)
from ctrbench.engine.health import HEALTH_ROWS, dead_relu_fractions, health_flags
from ctrbench.engine.optim import (
    BatchEmbeddingL2,
    build_optimizers,
    clip_grad_norm,
    frequency_scales,
    penalised_tables,
    row_frequencies,
)
from ctrbench.engine.outcome import (
    TrainingDiverged,
    TrainOutcome,
    diverged,
    score_test_split,
    scores_not_finite,
)
from ctrbench.engine.splits import SplitTensors, model_inputs, predict
from ctrbench.engine.threads import load_average, thread_budget
from ctrbench.engine.untrained import fit_and_evaluate
from ctrbench.errors import CardError, DataError, raise_if_signalled, signals_raised
from ctrbench.models import CTRModel, build_model, config_of, count_parameters
from ctrbench.models.config import ModelConfig
from ctrbench.models.fast.embedding_bank import FusedEmbedding
from ctrbench.models.init import apply_init
from ctrbench.progress import progress as progress_bar
from ctrbench.record import EpochRow
from ctrbench.schema import LABEL, Schema
from ctrbench.seeding import seed_everything

# Re-exported: callers and tests import these from here (they live in devices/splits/outcome).
__all__ = ["SplitTensors", "TrainOutcome", "TrainStep", "TrainingDiverged", "build_for_training",
           "model_inputs", "predict", "resolve_device", "train_and_evaluate"]

CUDA_CHECK_EVERY = 50  # on CUDA, check the loss for NaN/inf every this many steps (a sync)


# --------------------------------------------------------------------------- model and step
def build_for_training(card: ModelCard, schema: Schema) -> CTRModel:
    """Build ``card``'s model with ``sparse`` set from the optimizer (lazy_adam -> sparse) and
    initialise its dense layers by ``card.train.init`` (:mod:`ctrbench.models.init`)."""
    model = apply_init(build_model(card.arch, schema, training_config(card)), card.train.init)
    require_banked_tables(model, card.train)
    return model


def require_banked_tables(model: CTRModel, cfg: TrainConfig) -> None:
    """``l2_target = "din_frequency"`` (with ``l2 > 0``) counts ``n_j`` per bank row, so every
    embedding table must be in an EmbeddingBank: a CardError for a model (a plugin
    architecture's plain ``nn.Embedding``) that has another; checked when the model is built,
    so that ``tune`` refuses such a ``[search]`` value before any trial."""
    if (cfg.l2_target == "din_frequency" and cfg.l2 > 0
            and any(not isinstance(m, FusedEmbedding) for m in model.embedding_modules())):
        raise CardError("train.l2_target = 'din_frequency' needs every embedding table "
                        "in an EmbeddingBank (n_j is counted per bank row)",
                        hint="use l2_target = 'batch_embeddings' for this architecture")


def training_config(card: ModelCard) -> ModelConfig:
    """``card``'s typed config with ``sparse`` set from the optimizer; a CardError for a bad
    value or a ``params.sparse`` that contradicts ``train.optimizer`` (the runner calls it
    when it resolves the cards, before any data is touched)."""
    params = dict(card.params)
    want_sparse = card.train.optimizer == "lazy_adam"
    if "sparse" in params and bool(params["sparse"]) != want_sparse:
        raise CardError(f"model {card.name!r}: params.sparse = {params['sparse']} conflicts with "
                        f"train.optimizer = {card.train.optimizer!r}",
                        hint="drop params.sparse; the trainer sets it from train.optimizer")
    return config_of(card.arch).from_params(
        f"model {card.name!r} params (architecture {card.arch!r})",
        {**params, "sparse": want_sparse})


class TrainStep:
    """One optimisation step: forward_train, BCE + aux + L2, backward, clip, optimiser step."""

    def __init__(self, model: CTRModel, cfg: TrainConfig, device: torch.device,
                 train: SplitTensors | None = None) -> None:
        """``train``: the training split, needed for ``l2_target = "din_frequency"``."""
        self.model, self.cfg, self.device = model, cfg, device
        scales = None
        if cfg.l2_target == "din_frequency" and cfg.l2 > 0:
            if train is None:
                raise CardError("train.l2_target = 'din_frequency' needs the training split")
            require_banked_tables(model, cfg)
            scales = frequency_scales(row_frequencies(model, model.schema, train.inputs))
        self.optimizers = build_optimizers(model, cfg, scales)
        tables = penalised_tables(model, cfg)
        self.l2 = BatchEmbeddingL2(tables, cfg.l2, scales) if tables else None

    def __call__(self, batch: dict[str, torch.Tensor], label: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, BCE, aux), detached scalars; ``loss`` = BCE + aux + the L2 of plain
        embedding tables (a fused bank's L2 is a gradient hook, not in the value)."""
        self.zero()
        loss, bce, aux = self.losses(batch, label)
        loss.backward()
        self.update()
        return loss.detach(), bce.detach(), aux.detach()

    # The phases of one step, in order (benchmarks/step_breakdown.py times them one by one).
    def zero(self) -> None:
        """Zero the gradients (a dense fused table in place) and the L2's touched rows."""
        self.optimizers.zero_grad()
        if self.l2 is not None:
            self.l2.clear()

    def losses(self, batch: dict[str, torch.Tensor], label: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward under the card's autocast: (loss with graph, BCE, aux)."""
        with autocast(self.device, self.cfg.precision):
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
        return loss, bce, aux

    def update(self) -> None:
        """Clip (``grad_clip > 0``) and step the optimisers."""
        if self.cfg.grad_clip > 0:
            clip_grad_norm(self.optimizers.params, self.cfg.grad_clip)
        self.optimizers.step()

    def close(self) -> None:
        """Training is over: deferred tables settled and detached, hooks removed."""
        self.optimizers.release()
        if self.l2 is not None:
            self.l2.remove()


def _train_epoch(step_fn: TrainStep, train: SplitTensors, cfg: TrainConfig, card: ModelCard,
                 epoch: int, n_epochs: int, generator: torch.Generator, show: bool,
                 seed: int = 0, signals_before: int | None = None) -> tuple[float, float]:
    """One pass over the train split in a seeded order; returns (mean BCE, mean aux).
    ``signals_before``: :func:`signals_raised` when training began; a signal raised since then
    stops the pass at the next step even if its exception was dropped (raised inside a
    finalizer)."""
    since = signals_raised() if signals_before is None else signals_before
    step_fn.model.train()
    device = train.device
    perm = torch.randperm(train.rows, generator=generator).to(train.storage)
    n_steps = math.ceil(train.rows / cfg.batch_size)
    bce_sum = torch.zeros((), dtype=torch.float64, device=device)
    aux_sum = torch.zeros((), dtype=torch.float64, device=device)
    check_every = CUDA_CHECK_EVERY if device.type == "cuda" else 1
    bar_cm = (progress_bar(f"{card.name} seed {seed} epoch {epoch}/{n_epochs}", total=n_steps,
                           unit="batch")
              if show else contextlib.nullcontext())
    with bar_cm as bar:
        for step in range(n_steps):
            raise_if_signalled(since)
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            batch, label = train.take(idx)
            loss, bce, aux = step_fn(batch, label)
            n = label.shape[0]
            bce_sum += bce.double() * n
            aux_sum += aux.double() * n
            if (step + 1) % check_every == 0 or step + 1 == n_steps:
                value = float(loss) if check_every == 1 else float(bce_sum + aux_sum)
                if not math.isfinite(value):
                    raise diverged(card, epoch, step + 1, float(loss))
            if bar is not None:
                bar.update(1)
    return float(bce_sum) / train.rows, float(aux_sum) / train.rows


# --------------------------------------------------------------------------- the loop
def stop_early(epoch: int, best_epoch: int, patience: int) -> bool:
    """Stop after ``patience`` epochs without a better validation AUC; an epoch that improved
    never stops the run (``patience = 0``: stop at the first epoch that does not improve)."""
    return epoch != best_epoch and epoch - best_epoch >= patience


def require_both_classes(labels: np.ndarray, data: PreparedData, split: str = "valid") -> None:
    """Refuse a validation or test split with one class: its AUC is undefined, so no epoch
    can be chosen by it (every epoch's AUC would be NaN and epoch 1 "best" by accident), or
    the run would train in full for a NaN test AUC."""
    classes = np.unique(labels)
    if len(classes) == 1:  # an empty split is SplitTensors' error
        name, why = (("test", "the run's test AUC cannot be measured") if split == "test" else
                     ("validation", "early stopping cannot choose an epoch"))
        raise DataError(
            f"the {name} split of {data.identity.get('dataset', 'the dataset')!r} has one "
            f"class only ({len(labels)} rows, all {classes[0]:g}): its AUC is undefined, so "
            f"{why}",
            hint=f"the dataset needs positives and negatives in its {name} split")


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
    never loaded. Raises :class:`TrainingDiverged` on a NaN/inf loss, and before any step a
    ``DataError`` for a validation (or scored test) split with one class.
    """
    cfg = card.train
    signals_before = signals_raised()  # a signal whose exception a finalizer dropped still stops
    dev = resolve_device(device)
    n_epochs = cfg.epochs if max_epochs is None else max(1, min(cfg.epochs, int(max_epochs)))
    generators = seed_everything(seed)
    model = build_for_training(card, data.schema).to(dev)
    if evaluate_test:
        require_both_classes(data.split("test")[LABEL], data, "test")
    if count_parameters(model) == 0:  # fitted from training statistics (pop): no steps
        return fit_and_evaluate(model, data, card, seed, dev, on_epoch=on_epoch,
                                evaluate_test=evaluate_test)
    inputs = model_inputs(data.schema)
    train = SplitTensors(data, "train", dev, inputs)
    valid = SplitTensors(data, "valid", dev, inputs)
    valid_labels = valid.extra_numpy(LABEL)
    require_both_classes(valid_labels, data)
    health_batch, _ = valid.take(torch.arange(min(HEALTH_ROWS, valid.rows),
                                              device=valid.storage))
    dead_at_init = dead_relu_fractions(model, health_batch)
    step_fn = TrainStep(model, cfg, dev, train if cfg.l2_target == "din_frequency" else None)
    rows: list[EpochRow] = []
    best_epoch, best_auc, best_state = 0, -math.inf, None
    best_valid: dict[str, float] = {}
    try:
        for epoch in range(1, n_epochs + 1):
            reset_peak_memory(dev)
            synchronize(dev)
            start = time.perf_counter()
            train_loss, aux_loss = _train_epoch(step_fn, train, cfg, card, epoch, n_epochs,
                                                generators.torch, progress, seed,
                                                signals_before)
            synchronize(dev)
            train_seconds = time.perf_counter() - start
            train_load = load_average()
            start = time.perf_counter()
            scores = predict(model, valid, cfg.eval_batch_size, cfg.precision).numpy()
            eval_seconds = time.perf_counter() - start
            raise_if_signalled(signals_before)
            if not np.isfinite(scores).all():
                raise scores_not_finite(card, epoch)
            row = EpochRow(
                epoch=epoch, train_loss=train_loss, train_aux_loss=aux_loss,
                valid_auc=auc(valid_labels, scores), valid_logloss=logloss(valid_labels, scores),
                train_seconds=train_seconds, eval_seconds=eval_seconds,
                train_samples_per_s=train.rows / max(train_seconds, 1e-9),
                eval_samples_per_s=valid.rows / max(eval_seconds, 1e-9),
                peak_memory_mb=peak_memory_mb(dev),
                threads=thread_budget(), load_avg_1m=train_load,
            )
            rows.append(row)
            if best_state is None or row.valid_auc > best_auc:
                best_epoch, best_auc = epoch, row.valid_auc
                best_valid = {"auc": row.valid_auc, "logloss": row.valid_logloss}
                step_fn.optimizers.settle()  # every row up to date before it is copied
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_epoch is not None:
                on_epoch(row)
            if stop_early(epoch, best_epoch, cfg.patience):
                break
    finally:
        step_fn.close()
    model.load_state_dict(best_state)
    outcome = TrainOutcome(epochs=rows, best_epoch=best_epoch, valid=best_valid, test={},
                           test_scores={}, explain={}, n_parameters=count_parameters(model),
                           device=str(dev), init=cfg.init)
    dead_at_best = dead_relu_fractions(model, health_batch)
    del health_batch
    if evaluate_test:
        del train
        score_test_split(model, data, dev, cfg, seed, inputs, outcome)
    raise_if_signalled(signals_before)
    outcome.health = {
        "dead_relu": {"init": dead_at_init, "best": dead_at_best},
        **health_flags(rows, best_epoch, n_epochs, outcome.test.get("auc"),
                       outcome.test_scores.get("scores")),
    }
    return outcome
