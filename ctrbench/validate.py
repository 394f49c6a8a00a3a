"""Type and range checks for configuration values, applied when a configuration is resolved.

Every value of a model card's ``[train]`` table (and of ``--set`` / ``--config`` overrides) is
checked here, before any data is prepared or any run starts: a wrong value is one
:class:`~ctrbench.errors.CardError` naming the key, the value and the expected type (exit
status 1), never a traceback at training time. Architecture parameters are checked by each
architecture's typed config (:mod:`ctrbench.models.config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ctrbench.errors import CardError

Check = Callable[[Any], Any]  # returns the normalised value, raises ValueError(expected)


def describe(value: Any) -> str:
    """``'abc' (a string)``: the value and its TOML-ish type, for messages."""
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", tuple: "an array", dict: "a table"}
    kind = next((name for t, name in kinds.items() if type(value) is t), type(value).__name__)
    return f"{value!r} ({kind})"


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError
    return float(value)


def integer(minimum: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return int(value)
    return check


def real(minimum: float = 0.0, strict: bool = False) -> Check:
    expected = f"a finite number {'>' if strict else '>='} {minimum:g}"

    def check(value: Any) -> float:
        try:
            x = _number(value)
        except ValueError:
            raise ValueError(expected) from None
        if not math.isfinite(x) or x < minimum or (strict and x == minimum):
            raise ValueError(expected)
        return x
    return check


def choice(options: Sequence[str]) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError("one of " + ", ".join(repr(o) for o in options))
        return value
    return check


def betas(value: Any) -> tuple[float, float]:
    expected = "two numbers in [0, 1), e.g. [0.9, 0.999]"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(expected)
    try:
        pair = tuple(_number(b) for b in value)
    except ValueError:
        raise ValueError(expected) from None
    if not all(0.0 <= b < 1.0 for b in pair):
        raise ValueError(expected)
    return pair  # type: ignore[return-value]


L2_TARGETS = ("batch_embeddings", "din_frequency", "all", "none")
INIT_RULES = ("torch_default_dense", "paper", "xavier")  # == ctrbench.models.init.INIT_RULES
PRECISIONS = ("auto", "float32", "bf16")  # == ctrbench.engine.devices.PRECISIONS

TRAIN_CHECKS: dict[str, Check] = {
    "optimizer": choice(("adam", "lazy_adam")),
    "lr": real(0.0, strict=True),
    "betas": betas,
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "epochs": integer(1),
    "patience": integer(0),
    "l2": real(0.0),
    "l2_target": choice(L2_TARGETS),
    "init": choice(INIT_RULES),
    "grad_clip": real(0.0),
    "precision": choice(PRECISIONS),
}


def checked(where: str, key: str, value: Any, check: Check) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise CardError(f"{where}: {key} = {describe(value)}: expected {exc}") from None


def validate_train_values(where: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[train]`` values of ``data`` checked and normalised (ints to floats, betas tuple)."""
    return {key: checked(where, key, value, TRAIN_CHECKS[key]) if key in TRAIN_CHECKS else value
            for key, value in data.items()}


def require_table(where: str, value: Any, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CardError(f"{where}: expected a table, got {describe(value)}", hint=f"e.g. {example}")
    return value


