"""Typed model configurations: one frozen dataclass per architecture, built from a card's
``[params]`` and validated there, before any data is loaded or any model built.

Each field declares its default and its rule with :func:`param`; :meth:`ModelConfig.from_params`
rejects unknown keys (with a did-you-mean), checks every value against its rule and returns the
frozen config (lists of widths become tuples). A config class is the one place an architecture's
parameter names, defaults and allowed values are written: ``build_model``, the runner's
resolve-time check, the trainer's ``sparse`` switch and the tuner's search-space check all read
it (``config_of(arch)``).

Rules that need the dataset's schema (MIAN's ``heads`` must divide the behaviour width, which
depends on the number of item fields; IUIM needs user fields) stay in the model's constructor.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ctrbench.cards import check_keys
from ctrbench.errors import CardError

C = TypeVar("C", bound="ModelConfig")

#: activations ``layers.make_activation`` builds
ACTIVATIONS = ("relu", "prelu", "dice", "sigmoid")


class Rule:
    """A value rule: ``check(value)`` returns the normalised value or raises ``ValueError`` whose
    text says what was expected."""

    expected = "a value"

    def check(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def fail(self, value: Any) -> ValueError:
        return ValueError(f"must be {self.expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Integer(Rule):
    """An integer ``>= low`` (a TOML integer: ``2.0`` and ``true`` are not integers)."""

    def __init__(self, low: int = 0) -> None:
        self.low = low
        self.expected = "a positive integer" if low == 1 else f"an integer >= {low}"

    def check(self, value: Any) -> int:
        if not _is_int(value) or value < self.low:
            raise self.fail(value)
        return int(value)


class PositiveInt(Integer):
    def __init__(self) -> None:
        super().__init__(1)


class Flag(Rule):
    expected = "true or false (a TOML boolean)"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(value)
        return value


class Number(Rule):
    """A finite real number in ``[low, high)`` (``high`` None: unbounded above, but never
    ``inf``); ``low_open`` makes it ``(low, high)``. ``nan`` and ``inf`` are refused."""

    def __init__(self, low: float = 0.0, high: float | None = None, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open
        left = "(" if low_open else "["
        right = f"{high:g})" if high is not None else "inf)"
        self.expected = f"a number in {left}{low:g}, {right}"

    def check(self, value: Any) -> float:
        if not _is_number(value):
            raise self.fail(value)
        value = float(value) + 0.0  # -0.0 -> 0.0: one number, one spelling in the run id
        if not math.isfinite(value):
            raise self.fail(value)
        too_low = value <= self.low if self.low_open else not value >= self.low
        if too_low or (self.high is not None and not value < self.high):
            raise self.fail(value)
        return value


class Widths(Rule):
    """A list of positive integers (layer widths); ``allow_empty`` permits ``[]``."""

    def __init__(self, allow_empty: bool = True) -> None:
        self.allow_empty = allow_empty
        self.expected = ("a list of positive integers"
                         + ("" if allow_empty else " (at least one)"))

    def check(self, value: Any) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise self.fail(value)
        if not all(_is_int(v) and v >= 1 for v in value) or (not value and not self.allow_empty):
            raise self.fail(list(value))
        return tuple(int(v) for v in value)


class OneOf(Rule):
    """One of a fixed set of strings."""

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.expected = f"one of {', '.join(repr(c) for c in self.choices)}"

    def check(self, value: Any) -> str:
        if value not in self.choices or not isinstance(value, str):
            raise self.fail(value)
        return value


def param(default: Any, rule: Rule) -> Any:
    """A config field: its default and the rule every given value must pass."""
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class ModelConfig:
    """The parameters every architecture takes. Subclasses add their own fields with
    :func:`param`; :meth:`check` adds rules that join several fields."""

    #: width of one field's embedding (unused by ``lr`` and ``pop``, accepted so that one
    #: ``--set params.embedding_dim=8`` applies to every model)
    embedding_dim: int = param(16, PositiveInt())
    #: sparse embedding gradients; the trainer sets it from ``train.optimizer`` (lazy_adam)
    sparse: bool = param(False, Flag())

    @classmethod
    def names(cls) -> list[str]:
        """The parameter names a card may set, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls: type[C], where: str, params: Mapping[str, Any]) -> C:
        """Validate a card's ``[params]`` (``where`` names the card in errors) and build the
        config; an unknown key or a bad value is a :class:`CardError` naming the key."""
        check_keys(where, params, cls.names())
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in params:
                continue
            try:
                values[f.name] = f.metadata["rule"].check(params[f.name])
            except ValueError as exc:
                raise CardError(f"{where}: {f.name} {exc}",
                                hint=f"set params.{f.name} in the card or with --set") from None
        config = cls(**values)
        try:
            config.check()
        except ValueError as exc:
            raise CardError(f"{where}: {exc}") from None
        return config

    def check(self) -> None:
        """Rules across fields; raise ``ValueError`` naming the parameters."""

    @classmethod
    def normalised(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Valid ``params`` with each known value in its rule's form (``0`` -> ``0.0`` for a
        number; widths as lists): one configuration, one spelling, so one run id."""
        rules = {f.name: f.metadata["rule"] for f in dataclasses.fields(cls)}
        out = {}
        for key, value in params.items():
            value = rules[key].check(value) if key in rules else value
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def as_params(self) -> dict[str, Any]:
        """Every parameter (defaults included) as plain TOML-like values (tuples -> lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}
