"""A model card's ``[search]`` table: validated dimensions, Optuna suggestions, grids, overrides.

A card's search space maps a dotted key to a distribution::

    [search]
    "train.lr" = { type = "float", low = 1e-4, high = 1e-2, log = true }
    "train.batch_size" = { type = "int", low = 64, high = 512, step = 64 }
    "params.embedding_dim" = { type = "categorical", choices = [8, 16, 32] }

Keys are ``train.<TrainConfig field>`` or ``params.<architecture parameter>``. Types:
``float`` (low, high, log | step), ``int`` (low, high, log | step) and ``categorical`` (choices).
A categorical choice may be a list of integers (layer widths such as ``[200, 80]``); Optuna sees
it as the label ``"200-80"`` and trials get the list back. ``optional = true`` marks a shared
dimension (declared once in ``models/_paper.toml``) that applies only to architectures having
that parameter (``params.dropout`` is skipped for LR). Anything else (an unknown type, key or
option, an empty range) is a :class:`CardError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ctrbench.cards import ModelCard, TrainConfig, check_keys
from ctrbench.errors import CardError

if TYPE_CHECKING:
    from ctrbench.models.config import ModelConfig

# Choices of `ctrbench tune` (here, not in tune.py, so that the CLI starts without torch).
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")

SECTIONS = ("params", "train")
_OPTIONS = {
    "float": ("type", "low", "high", "log", "step", "optional"),
    "int": ("type", "low", "high", "log", "step", "optional"),
    "categorical": ("type", "choices", "optional"),
}
Scalar = bool | int | float | str
Choice = Scalar | tuple[int, ...]  # a tuple is a list of widths


def choice_label(choice: Choice) -> Scalar:
    """What Optuna stores for ``choice``: widths ``(200, 80)`` -> ``"200-80"``, else itself."""
    return "-".join(str(w) for w in choice) if isinstance(choice, tuple) else choice


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: ``key`` = ``"<section>.<name>"`` and its distribution."""

    key: str
    type: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Choice, ...] = ()
    optional: bool = False  # skipped for architectures that lack the parameter

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    @property
    def is_discrete(self) -> bool:
        return self.type != "float" or self.step is not None

    def distribution(self) -> BaseDistribution:
        if self.type == "categorical":
            return CategoricalDistribution([choice_label(c) for c in self.choices])
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension."""
        if self.type == "categorical":
            if isinstance(value, list):
                value = tuple(value)
            return any(type(c) is type(value) and c == value for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        offset = (value - self.low) / self.step
        return abs(offset - round(offset)) < 1e-9

    def decode(self, stored: Any) -> Any:
        """The card value for what Optuna stored (a width label back to a list)."""
        if self.type == "categorical":
            for choice in self.choices:
                if isinstance(choice, tuple) and choice_label(choice) == stored:
                    return list(choice)
        return stored

    def encode(self, value: Any) -> Any:
        """What Optuna stores for a card value (a list of widths to its label)."""
        return choice_label(tuple(value)) if isinstance(value, list) else value

    def grid(self) -> list[Scalar]:
        """Every value of a discrete dimension (GridSampler); a continuous one is an error."""
        if self.type == "categorical":
            return [choice_label(c) for c in self.choices]
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise CardError(
                f"search dimension {self.key!r} is continuous: the grid sampler needs a discrete "
                "space",
                hint=f"give {self.key!r} a step (or make it categorical), or use --sampler tpe",
            )
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


def _number(where: str, value: Any, integer: bool) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise CardError(f"{where} must be {kind}, not {value!r}")
    return value


def parse_dimension(key: str, spec: Any) -> Dimension:
    """Validate one ``[search]`` entry."""
    where = f"[search] {key!r}"
    if not isinstance(spec, Mapping):
        raise CardError(f"{where} must be a table such as "
                        '{ type = "float", low = 1e-4, high = 1e-2, log = true }')
    kind = spec.get("type")
    if kind not in _OPTIONS:
        raise CardError(f"{where}: unknown type {kind!r}",
                        hint="type must be 'float', 'int' or 'categorical'")
    check_keys(where, spec, _OPTIONS[kind])
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise CardError(f"{where}: 'optional' must be true or false, not {optional!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise CardError(f"{where}: 'choices' must be a non-empty list")
        parsed: list[Choice] = []
        for choice in choices:
            if isinstance(choice, list) and choice and all(
                    isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in choice):
                parsed.append(tuple(choice))
            elif isinstance(choice, bool | int | float | str):
                parsed.append(choice)
            else:
                raise CardError(f"{where}: choice {choice!r} is not a number, string, boolean "
                                "or non-empty list of positive integers (layer widths)")
        if len({(type(c), c) for c in parsed}) != len(parsed):
            raise CardError(f"{where}: 'choices' has duplicates")
        labels = [choice_label(c) for c in parsed]
        if len(set(map(str, labels))) != len(labels):
            raise CardError(f"{where}: choices {labels} are ambiguous as labels")
        return Dimension(key=key, type=kind, choices=tuple(parsed), optional=optional)
    integer = kind == "int"
    for option in ("low", "high"):
        if option not in spec:
            raise CardError(f"{where}: missing {option!r}")
    low = _number(f"{where} low", spec["low"], integer)
    high = _number(f"{where} high", spec["high"], integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise CardError(f"{where}: 'log' must be true or false")
    step = spec.get("step")
    if step is not None:
        step = _number(f"{where} step", step, integer)
        if step <= 0:
            raise CardError(f"{where}: 'step' must be > 0")
        if log:
            raise CardError(f"{where}: 'log' and 'step' cannot be combined")
    if low > high:
        raise CardError(f"{where}: low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise CardError(f"{where}: a log scale needs low > 0 (got {low})")
    return Dimension(key=key, type=kind, low=low, high=high, log=log, step=step,
                     optional=optional)


def _architecture_config(arch: str) -> type[ModelConfig] | None:
    """``arch``'s typed config class, or None when it is not registered."""
    from ctrbench.errors import UnknownNameError
    from ctrbench.models import config_of

    try:
        return config_of(arch)
    except UnknownNameError:  # unknown architecture: building the model reports it
        return None


def _check_search_values(card: ModelCard, config: type[ModelConfig], name: str,
                         dim: Dimension) -> None:
    """Every choice of a categorical dimension, or both ends of a range, must pass the
    parameter's rule (a bad one is a CardError naming the card and the [search] key)."""
    values = dim.choices if dim.type == "categorical" else (dim.low, dim.high)
    for value in values:
        config.from_params(f"model card {card.name!r} [search] {dim.key!r}", {name: value})


def _check_train_values(card: ModelCard, name: str, dim: Dimension) -> None:
    """The same for a ``train.*`` dimension, by the ``[train]`` rules (a range or choice the
    trainer refuses made every such trial FAIL at run time, one by one)."""
    from ctrbench.validate import validate_train_values

    values = dim.choices if dim.type == "categorical" else (dim.low, dim.high)
    for value in values:
        validate_train_values(f"model card {card.name!r} [search] {dim.key!r}",
                              {name: list(value) if isinstance(value, tuple) else value})


def parse_search_space(card: ModelCard) -> list[Dimension]:
    """The card's ``[search]`` table as validated dimensions (sorted by key)."""
    if not card.search:
        raise CardError(f"model card {card.name!r} has no [search] table: nothing to tune",
                        hint='add e.g. [search] "train.lr" = { type = "float", low = 1e-4, '
                             "high = 1e-2, log = true } to the card")
    train_keys = [f.name for f in fields(TrainConfig)]
    config = _architecture_config(card.arch)
    arch_keys = None if config is None else config.names()
    dims = []
    for key in sorted(card.search):
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise CardError(f"model card {card.name!r} [search]: key {key!r} must be "
                            "'params.<name>' or 'train.<name>'")
        allowed = train_keys if section == "train" else arch_keys
        dim = parse_dimension(key, card.search[key])
        if dim.optional and allowed is not None and name not in allowed:
            continue  # a shared dimension this architecture does not have
        if allowed is not None:
            check_keys(f"model card {card.name!r} [search] {section}", {name: None}, allowed)
        if section == "params" and config is not None:
            _check_search_values(card, config, name, dim)
        elif section == "train":
            _check_train_values(card, name, dim)
        dims.append(dim)
    if not dims:
        raise CardError(f"model card {card.name!r}: no [search] dimension applies to its "
                        f"architecture {card.arch!r}: nothing to tune")
    return dims


def has_search_space(card: ModelCard) -> bool:
    """Whether ``card`` has anything to tune (False for e.g. a model with no parameters)."""
    try:
        parse_search_space(card)
    except CardError:
        return False
    return True


def distributions(space: list[Dimension]) -> dict[str, BaseDistribution]:
    return {d.key: d.distribution() for d in space}


def suggest(trial: optuna.Trial, space: list[Dimension]) -> dict[str, Any]:
    """Sample every dimension for ``trial``: key -> value."""
    values: dict[str, Any] = {}
    for d in space:
        if d.type == "categorical":
            label = trial.suggest_categorical(d.key, [choice_label(c) for c in d.choices])
            values[d.key] = d.decode(label)
        elif d.type == "int":
            values[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high),
                                              step=int(d.step or 1), log=d.log)
        else:
            values[d.key] = trial.suggest_float(d.key, float(d.low), float(d.high),
                                                step=d.step, log=d.log)
    return values


def decode(space: list[Dimension], stored: Mapping[str, Any]) -> dict[str, Any]:
    """Card values for a trial's stored ``params`` (width labels back to lists)."""
    by_key = {d.key: d for d in space}
    return {k: by_key[k].decode(v) if k in by_key else v for k, v in stored.items()}


def grid(space: list[Dimension]) -> dict[str, list[Scalar]]:
    """The full grid for optuna's GridSampler (every dimension must be discrete)."""
    return {d.key: d.grid() for d in space}


def to_overrides(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"train.lr": 0.01, "params.embedding_dim": 8}`` -> ``ModelCard.with_overrides`` input."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def card_values_outside(card: ModelCard, space: list[Dimension]) -> list[str]:
    """``key = value`` for each card value that is not a point of its dimension (so that
    :func:`card_values` is None: the card itself is never a trial)."""
    train = asdict(card.train)
    outside = []
    for d in space:
        source = card.params if d.section == "params" else train
        if d.name not in source:
            outside.append(f"{d.key} not set")
        elif not d.contains(source[d.name]):
            outside.append(f"{d.key} = {source[d.name]!r}")
    return outside


def card_values(card: ModelCard, space: list[Dimension]) -> dict[str, Any] | None:
    """The card's own values for ``space`` (to evaluate the untuned card first).

    None when a value is missing from the card or lies outside its dimension.
    """
    train = asdict(card.train)
    values: dict[str, Any] = {}
    for d in space:
        source = card.params if d.section == "params" else train
        if d.name not in source or not d.contains(source[d.name]):
            return None
        values[d.key] = d.encode(source[d.name])
    return values
