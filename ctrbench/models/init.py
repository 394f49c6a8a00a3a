"""Initialisation rules, selectable per card (``[train] init = "..."``) for every architecture.

Embedding tables and the models' own score / cross vectors are always truncated normal with
``init_std`` (0.02: the paper's value), set when the model is built. A rule then (re)sets the
dense layers, applied once after construction by :func:`apply_init`:

- ``torch_default_dense``: nothing more; ``nn.Linear`` / ``nn.GRU`` keep PyTorch's defaults
  (Kaiming-uniform weights with ``a = sqrt(5)``, i.e. U(+-1/sqrt(fan_in)), and biases
  U(+-1/sqrt(fan_in))). The rule of every run before record schema version 2.
- ``paper``: the MIAN paper's sentence taken literally ("the parameters are initialized with
  truncated normal with a standard deviation of 0.02"): every weight matrix of ``nn.Linear``,
  ``nn.Conv1d`` and recurrent layers TN(0, 0.02) truncated at 2 std, every bias of those layers 0.
- ``xavier``: Glorot-uniform weights U(+-sqrt(6 / (fan_in + fan_out))), zero biases: the
  default of TensorFlow 1's ``tf.layers.dense`` / ``tf.get_variable`` (``glorot_uniform``
  kernel, ``zeros`` bias), which a TF1 implementation that only sets the embeddings' initialiser
  keeps for its dense layers.

Normalisation layers (LayerNorm gain 1, bias 0), Dice / PReLU slopes and first-order biases are
never touched by a rule. See docs/fidelity.md for why ``paper`` does not train.
"""

from __future__ import annotations

import torch
from torch import nn

from ctrbench.errors import CardError
from ctrbench.validate import INIT_RULES  # ("torch_default_dense", "paper", "xavier")

INIT_STD = 0.02  # the paper's truncated-normal initialisation


def init_truncated_normal(tensor: torch.Tensor, std: float = INIT_STD) -> torch.Tensor:
    """Truncated normal in [-2 std, 2 std] (the paper's initialiser)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


DEFAULT_INIT = "torch_default_dense"  # rule of cards that do not say (and of old records)

_DENSE = (nn.Linear, nn.Conv1d, nn.RNNBase)


def checked_init(rule: str) -> str:
    if rule not in INIT_RULES:
        raise CardError(f"train.init must be one of {INIT_RULES}, got {rule!r}")
    return rule


def dense_weights(model: nn.Module) -> list[tuple[str, nn.Module, nn.Parameter, bool]]:
    """``(name, module, parameter, is_bias)`` of every dense layer parameter a rule sets."""
    out = []
    for module_name, module in model.named_modules():
        if not isinstance(module, _DENSE):
            continue
        for name, param in module.named_parameters(recurse=False):
            out.append((f"{module_name}.{name}", module, param, name.startswith("bias")))
    return out


def apply_init(model: nn.Module, rule: str, std: float = INIT_STD) -> nn.Module:
    """Apply ``rule`` to ``model``'s dense layers in place (seeded by the caller); returns it."""
    checked_init(rule)
    if rule == "torch_default_dense":
        return model
    for _, module, param, is_bias in dense_weights(model):
        if is_bias:
            nn.init.zeros_(param)
        elif rule == "paper":
            init_truncated_normal(param.data, std)
        elif param.dim() < 2:  # xavier needs a fan-in and a fan-out
            init_truncated_normal(param.data, std)
        else:
            _xavier(param, module.hidden_size if isinstance(module, nn.RNNBase) else None)
    return model


def _xavier(param: nn.Parameter, gate_rows: int | None) -> None:
    """Glorot uniform; a recurrent layer's stacked gate matrices ``[G H, in]`` gate by gate."""
    for chunk in param.data.split(gate_rows or param.shape[0], dim=0):
        nn.init.xavier_uniform_(chunk)
