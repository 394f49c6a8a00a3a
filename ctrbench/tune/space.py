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

Values are checked before any trial: each value by its parameter's rule, then every combination
of the ``params.*`` dimensions' choices and range ends (up to :data:`MAX_CHECKED_POINTS`) by the
architecture's config and, once the dataset is known, by building the model on its schema
(:func:`check_space_on_data`), there over both sections at once, so that a rule across them
counts (``train.optimizer = "adam"`` against ``params.sparse = true``; each section with the
card's own other one where the two together have too many points). A value refused at every
point of the other dimensions is one :class:`CardError` naming the key and the value; a refusal
only some combinations meet is left to the trial that samples it, which stops the study
(``tune.study``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping
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
from ctrbench.errors import CardError, CtrbenchError

if TYPE_CHECKING:
    from ctrbench.data.store import PreparedData
    from ctrbench.models.config import ModelConfig
    from ctrbench.schema import Schema

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
#: combinations of the params.* dimensions' choices and range ends checked before any trial
#: (a larger space leaves its refusals to the first trial that samples one)
MAX_CHECKED_POINTS = 512
#: vocabulary size of the schema models are built on to check a space (the models' checks that
#: need the schema count fields and look at groups; none depends on how many ids a field has)
CHECK_VOCAB = 16
#: one section's values of a point -> why the model refuses them (None: it takes them)
Refusal = Callable[[dict[str, Any]], str | None]


class NothingToTune(CardError):
    """A card with no [search] dimension that applies to its architecture."""


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
    def ends(self) -> tuple[Any, ...]:
        """The values checked before any trial: every choice (widths as lists), or both ends."""
        if self.type == "categorical":
            return tuple(list(c) if isinstance(c, tuple) else c for c in self.choices)
        return (self.low, self.high)

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
    parameter's own rule (a bad one is a CardError naming the card, the [search] key and the
    value); rules across parameters are checked on whole points (:func:`_check_points`)."""
    for value in dim.ends:
        try:
            config.normalised({name: value})
        except ValueError as exc:
            raise CardError(f"model card {card.name!r} [search] {dim.key!r}: {name} {exc}",
                            hint=f"change the choices or range of {dim.key!r}") from None


def _check_train_values(card: ModelCard, name: str, dim: Dimension) -> None:
    """The same for a ``train.*`` dimension, by the ``[train]`` rules (a range or choice the
    trainer refuses made every such trial FAIL at run time, one by one); rules across fields
    are checked on whole points (:func:`check_space_on_data`)."""
    from ctrbench.validate import validate_train_values

    for value in dim.ends:
        validate_train_values(f"model card {card.name!r} [search] {dim.key!r}", {name: value})


def show(value: Any) -> str:
    """A search value as a card spells it (``true``, ``[200, 80]``, ``3``; a float to 6
    significant digits)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _config_refusal(card: ModelCard, config: type[ModelConfig]) -> Refusal:
    """Why ``config`` refuses the card's params with a point's ``params.*`` values (rules
    across fields)."""
    def refusal(point: dict[str, Any]) -> str | None:
        try:
            config.from_params("params", {**card.params, **to_overrides(point).get("params", {})})
        except CardError as exc:
            return str(exc.args[0])
        return None
    return refusal


def _own_values(card: ModelCard, section: str) -> dict[str, Any]:
    """The card's own values of ``section`` (``params``: over the architecture's defaults)."""
    if section == "train":
        return asdict(card.train)
    config = _architecture_config(card.arch)
    own = config().as_params() if config is not None else {}
    own.update(card.params)
    return own


def _check_points(card: ModelCard, space: list[Dimension], refusal: Refusal,
                  where: str = "", sections: tuple[str, ...] = ("params",)) -> bool:
    """Refuse a value that ``refusal`` refuses at every combination of the other dimensions'
    choices and range ends in ``sections`` (a section left out at the card's own values; while
    another value of its own dimension, or the card's own, would be taken), or a space none of
    whose points is taken. ``refusal`` gets a point's values by key (``params.heads``). Returns
    False, checking nothing, where the points are more than :data:`MAX_CHECKED_POINTS`."""
    dims = [d for d in space if d.section in sections]
    if math.prod(len(d.ends) for d in dims) > MAX_CHECKED_POINTS:
        return False  # too many combinations: the first trial that samples a refusal stops
    own = {d.key: _own_values(card, d.section).get(d.name) for d in dims}
    cache: dict[tuple[int, ...], str | None] = {}

    def why(index: tuple[int, ...]) -> str | None:  # index -1: the card's own value
        if index not in cache:
            cache[index] = refusal({d.key: own[d.key] if k < 0 else d.ends[k]
                                    for d, k in zip(dims, index)})
        return cache[index]

    points = list(itertools.product(*(range(len(d.ends)) for d in dims)))
    taken = sum(why(p) is None for p in points)
    if taken == len(points):
        return True
    for i, dim in enumerate(dims):
        refused = _refused_values(i, len(dim.ends), points, why)
        if refused:
            first = next(why(p) for p in points if p[i] == refused[0])
            values = ", ".join(show(dim.ends[k]) for k in refused)
            verb = "is" if len(refused) == 1 else "are"
            raise CardError(f"model card {card.name!r} [search] {dim.key!r}: {values} {verb} "
                            f"refused{where} with every value of the other dimensions: {first}",
                            hint=f"change the choices or range of {dim.key!r}; nothing was tuned")
    if taken:  # only combinations are refused: the trial that samples one stops
        return True
    raise CardError(f"model card {card.name!r}: no point of its [search] space can be "
                    f"built{where}: {why(points[0])}",
                    hint="change the card's [search] table or the [params] it combines with; "
                         "nothing was tuned")


def _refused_values(i: int, count: int, points: list[tuple[int, ...]],
                    why: Callable[[tuple[int, ...]], str | None]) -> list[int]:
    """The values (indices) of dimension ``i`` refused at every point, provided another value
    of it (or the card's own, index -1) is taken somewhere: then they are the cause."""
    refused = [k for k in range(count) if all(why(p) for p in points if p[i] == k)]
    others = [k for k in range(-1, count) if k not in refused]
    if refused and any(why((*p[:i], k, *p[i + 1:])) is None for p in points for k in others):
        return refused
    return []


def check_schema(schema: Schema) -> Schema:
    """``schema`` with every vocabulary cut to :data:`CHECK_VOCAB` ids: the same fields, a model
    built on it in milliseconds whatever the dataset's size."""
    return dataclasses.replace(schema, fields=tuple(
        dataclasses.replace(f, vocab_size=min(f.vocab_size, CHECK_VOCAB)) for f in schema.fields))


def build_refusal(card: ModelCard, schema: Schema) -> str | None:
    """Why ``card``'s model cannot be built on ``schema`` (None: it can), as a run builds it."""
    from ctrbench.engine.train import build_for_training

    try:
        build_for_training(card, schema)
    except CtrbenchError as exc:
        return str(exc.args[0])
    return None


def check_space_on_data(card: ModelCard, data: PreparedData) -> list[Dimension]:
    """:func:`parse_search_space`, then every value checked by building the model on the
    dataset's schema (MIAN's ``heads`` must divide its behaviour width, DIEN's auxiliary loss
    needs negative histories, ``train.optimizer = "adam"`` a card without ``params.sparse =
    true``), on the points of both sections together (each section with the card's own other
    one where together they are too many): a CardError naming the key and the value, before any
    trial."""
    space = parse_search_space(card)
    schema = check_schema(data.schema)
    name = str(data.meta.get("dataset", data.path.name))
    where = f" on dataset {name!r}"
    refusal = _build_refusal(card, schema)
    if not _check_points(card, space, refusal, where, SECTIONS):  # too many points together
        for section in SECTIONS:
            _check_points(card, space, refusal, where, (section,))
    return space


def _build_refusal(card: ModelCard, schema: Schema) -> Refusal:
    """Why ``card``'s model cannot be built on ``schema`` with a point's values
    (``train.optimizer`` against ``params.sparse``: a rule across the two sections)."""
    def refusal(point: dict[str, Any]) -> str | None:
        return build_refusal(card.with_overrides(to_overrides(point)), schema)
    return refusal


def check_spaces_on_data(cards: Iterable[ModelCard], data: PreparedData) -> None:
    """:func:`check_space_on_data` for a group: one CardError naming every refused card (a card
    with nothing to tune is left to the group, which says so)."""
    refused = []
    for card in cards:
        try:
            check_space_on_data(card, data)
        except NothingToTune:
            continue
        except CardError as exc:
            refused.append(str(exc.args[0]))
    if refused:
        raise CardError("; ".join(refused), hint="change those cards' [search] tables (or "
                                                 "leave those models out); nothing was tuned")


def parse_search_space(card: ModelCard) -> list[Dimension]:
    """The card's ``[search]`` table as validated dimensions (sorted by key)."""
    if not card.search:
        raise NothingToTune(f"model card {card.name!r} has no [search] table: nothing to tune",
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
        raise NothingToTune(f"model card {card.name!r}: no [search] dimension applies to its "
                            f"architecture {card.arch!r}: nothing to tune")
    if config is not None:
        _check_points(card, dims, _config_refusal(card, config))
    return dims


def has_search_space(card: ModelCard) -> bool:
    """Whether ``card`` has anything to tune (False for e.g. a model with no parameters); a
    [search] table with a bad value is a CardError, never "nothing to tune"."""
    try:
        parse_search_space(card)
    except NothingToTune:
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
