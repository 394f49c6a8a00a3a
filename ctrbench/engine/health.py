"""Training health figures written into every run record (``record.health``).

- ``dead_relu``: for each ``nn.ReLU`` module of the model (the prediction MLPs' hidden layers,
  the transformer's FFN), the fraction of its units whose output is 0 on EVERY row of a fixed
  validation slice (the first :data:`HEALTH_ROWS` rows, eval mode), measured at initialisation
  (``"init"``) and with the best epoch's weights (``"best"``). Keys are module paths
  (``"mlp.net.1"``); a model without ReLU modules has empty dicts.
- ``degenerate`` (with ``degenerate_reasons``): test AUC <= :data:`DEGENERATE_AUC`, constant
  test scores (spread below :data:`CONSTANT_SPREAD`), or a validation AUC never above its first
  epoch's (only decidable with two or more epochs).
- ``not_converged``: the best epoch is the last epoch allowed (training might still improve).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ctrbench.record import EpochRow

HEALTH_ROWS = 2048  # validation rows on which dead units are counted
DEGENERATE_AUC = 0.55
CONSTANT_SPREAD = 1e-6  # max - min of the test scores below this: constant


@torch.no_grad()
def dead_relu_fractions(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{relu module path: fraction of units that output 0 on every row of batch}``.

    A unit is one position of the ReLU's last axis (a sequence FFN's unit is dead when it is 0
    at every step of every row, padded steps included). Runs ``model(batch)`` in eval mode and
    restores the previous mode.
    """
    relus = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not relus:
        return {}
    alive: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            fired = (output.detach() > 0).reshape(-1, output.shape[-1]).any(0)  # (units,)
            alive[name] = fired if name not in alive else alive[name] | fired
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in relus]
    was_training = model.training
    model.eval()
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: float(1.0 - alive[name].float().mean()) for name, _ in relus if name in alive}


def health_flags(epochs: Sequence[EpochRow], best_epoch: int, max_epochs: int,
                 test_auc: float | None = None, test_scores: np.ndarray | None = None
                 ) -> dict[str, object]:
    """``degenerate``, ``degenerate_reasons`` and ``not_converged`` (see the module docstring).
    ``test_auc`` / ``test_scores`` are None when the test split was not evaluated."""
    reasons = []
    if test_auc is not None and not test_auc > DEGENERATE_AUC:  # NaN counts as degenerate
        reasons.append(f"test AUC {test_auc:.4f} <= {DEGENERATE_AUC}")
    if test_scores is not None and len(test_scores) and \
            float(np.ptp(test_scores)) < CONSTANT_SPREAD:
        reasons.append("constant test scores")
    aucs = [row.valid_auc for row in epochs]
    if len(aucs) >= 2 and not max(aucs[1:]) > aucs[0]:
        reasons.append("validation AUC never above its first epoch")
    return {"degenerate": bool(reasons), "degenerate_reasons": reasons,
            "not_converged": bool(epochs) and best_epoch >= max_epochs}
