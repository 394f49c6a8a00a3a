"""What a run produced (:class:`TrainOutcome`), divergence, and the one test evaluation that
trained and fitted models share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ctrbench.analysis.metrics import auc, classification_metrics
from ctrbench.cards import ModelCard, TrainConfig
from ctrbench.data.store import PreparedData
from ctrbench.engine.devices import autocast
from ctrbench.engine.splits import SplitTensors, predict
from ctrbench.errors import CtrbenchError
from ctrbench.models import CTRModel
from ctrbench.record import EpochRow
from ctrbench.schema import GROUP_KEY, LABEL, ORACLE

EXPLAIN_SAMPLE = 256  # test rows whose model.explain() outputs are kept


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
    #: column names of the explain arrays whose columns are named (MIAN's "gim" parts, its
    #: "iuim"/"icim" fields); the runner keeps it as record.extra["explain_parts"]
    explain_parts: dict[str, list[str]] = field(default_factory=dict)
    init: str = ""  # the initialisation rule (train.init) the model was built with
    health: dict = field(default_factory=dict)  # ctrbench.engine.health figures and flags


def diverged(card: ModelCard, epoch: int, step: int, value: float) -> TrainingDiverged:
    """The error for a NaN/inf loss ``value`` at ``epoch``, ``step`` of ``card``'s training."""
    return TrainingDiverged(
        f"training of {card.name!r} diverged: loss {value} at epoch {epoch}, step {step}",
        epoch=epoch, step=step,
        hint=f"lower train.lr (now {card.train.lr:g}) or set train.grad_clip",
    )


def scores_not_finite(card: ModelCard, epoch: int) -> TrainingDiverged:
    """The error for validation scores with a NaN/inf after ``epoch`` (every loss was finite)."""
    return TrainingDiverged(
        f"training of {card.name!r} diverged: its validation scores after epoch {epoch} are "
        "not all finite (every training loss was)",
        epoch=epoch, step=0,
        hint=f"lower train.lr (now {card.train.lr:g}) or set train.grad_clip",
    )


def score_test_split(model: CTRModel, data: PreparedData, dev: torch.device,
                     cfg: TrainConfig, seed: int, inputs: list[str], outcome: TrainOutcome) -> None:
    """Score the test split once with the restored best weights; explain a seeded sample."""
    test = SplitTensors(data, "test", dev, inputs, extras=(LABEL, GROUP_KEY, ORACLE))
    probs = predict(model, test, cfg.eval_batch_size, cfg.precision).numpy()
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
    with torch.inference_mode(), autocast(dev, cfg.precision):
        explained = model.explain(batch)
    outcome.explain = {k: w.values.float().cpu().numpy() for k, w in explained.items()}
    outcome.explain_rows = rows.astype(np.int64)
    outcome.explain_parts = {k: list(w.columns) for k, w in explained.items() if w.columns}
