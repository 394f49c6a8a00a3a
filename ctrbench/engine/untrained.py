"""Models with no trainable parameters (``pop``): fitted from training statistics, evaluated once.

:func:`train_and_evaluate` hands such a model here instead of running the optimisation loop. No
optimiser is built and no step is taken; ``card.train`` (epochs, patience, lr, L2) is ignored.
The record is a normal finished one with exactly one epoch row (``best_epoch = 1``):

- ``train_loss``: the mean BCE of the fitted model's scores on the training split (an
  evaluation, no step); ``train_aux_loss`` = 0;
- ``train_seconds``: the time of ``model.fit_statistics(train)`` (counting), and
  ``train_samples_per_s`` the training rows over it;
- ``valid_auc`` / ``valid_logloss`` / ``eval_seconds`` / ``eval_samples_per_s``: one evaluation
  of the validation split, as for every model;
- the test split is scored once, exactly as for trained models.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ctrbench.analysis.metrics import auc, logloss
from ctrbench.cards import ModelCard
from ctrbench.data.store import PreparedData
from ctrbench.engine.devices import peak_memory_mb, reset_peak_memory, synchronize
from ctrbench.engine.outcome import TrainOutcome, score_test_split, scores_not_finite
from ctrbench.engine.splits import SplitTensors, model_inputs, predict
from ctrbench.models import CTRModel, count_parameters
from ctrbench.record import EpochRow
from ctrbench.schema import LABEL


def fit_and_evaluate(model: CTRModel, data: PreparedData, card: ModelCard, seed: int,
                     dev: torch.device, *, on_epoch: Callable[[EpochRow], None] | None = None,
                     evaluate_test: bool = True) -> TrainOutcome:
    """Fit ``model`` from the training split (if it has ``fit_statistics``), validate, test."""
    cfg = card.train
    inputs = model_inputs(data.schema)
    reset_peak_memory(dev)
    train = SplitTensors(data, "train", dev, inputs)
    synchronize(dev)
    start = time.perf_counter()
    fit = getattr(model, "fit_statistics", None)
    if fit is not None:
        fit({**train.inputs, LABEL: train.extras[LABEL]})
    synchronize(dev)
    train_seconds = time.perf_counter() - start
    train_probs = predict(model, train, cfg.eval_batch_size, cfg.precision).numpy()
    train_loss = logloss(train.extra_numpy(LABEL), train_probs)
    train_rows = train.rows
    del train
    valid = SplitTensors(data, "valid", dev, inputs)
    valid_labels = valid.extra_numpy(LABEL)
    start = time.perf_counter()
    scores = predict(model, valid, cfg.eval_batch_size, cfg.precision).numpy()
    eval_seconds = time.perf_counter() - start
    if not np.isfinite(scores).all():
        raise scores_not_finite(card, 1)
    row = EpochRow(
        epoch=1, train_loss=train_loss, train_aux_loss=0.0,
        valid_auc=auc(valid_labels, scores), valid_logloss=logloss(valid_labels, scores),
        train_seconds=train_seconds, eval_seconds=eval_seconds,
        train_samples_per_s=train_rows / max(train_seconds, 1e-9),
        eval_samples_per_s=valid.rows / max(eval_seconds, 1e-9),
        peak_memory_mb=peak_memory_mb(dev),
    )
    if on_epoch is not None:
        on_epoch(row)
    outcome = TrainOutcome(epochs=[row], best_epoch=1,
                           valid={"auc": row.valid_auc, "logloss": row.valid_logloss},
                           test={}, test_scores={}, explain={},
                           n_parameters=count_parameters(model), device=str(dev))
    if evaluate_test:
        del valid
        score_test_split(model, data, dev, cfg, seed, inputs, outcome)
    return outcome
