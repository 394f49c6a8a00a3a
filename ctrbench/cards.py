"""Dataset and model cards: TOML files validated into frozen dataclasses.

A card may ``extends = "<other card>"``: tables are merged key by key (the child wins), so a
variant such as ``mian_wo_iuim`` is a few lines. Unknown keys are errors, never silent defaults.
Precedence when a run resolves its configuration: card < config file < ``--set key=value``.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ctrbench.errors import CardError
from ctrbench.paths import card_dirs
from ctrbench.registry import did_you_mean
from ctrbench.validate import describe, require_table, validate_train_values

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# --------------------------------------------------------------------------- generic loading
def _merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def card_paths(kind: str) -> dict[str, Path]:
    """Card name -> file for ``kind`` ("models" or "datasets"); earlier directories win.

    Cards in subdirectories (``models/tuned/mian@books.toml``) are named by their file stem.
    Names starting with ``_`` are abstract bases: they can be extended but are never listed.
    """
    found: dict[str, Path] = {}
    for directory in card_dirs(kind):
        for path in sorted(directory.rglob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"card {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text; tomllib raises this one raw
        raise CardError(f"{path} is not a TOML file: byte {exc.start} is not UTF-8 text "
                        f"({exc.reason})", hint="save it as UTF-8 text") from None
    except OSError as exc:
        raise CardError(f"cannot read card {path}: {exc}") from None


def load_raw_card(kind: str, name: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The card's table with ``extends`` resolved (no validation)."""
    paths = card_paths(kind)
    singular = kind.rstrip("s")
    if name not in paths:
        raise did_you_mean(singular, name, [n for n in paths if not n.startswith("_")])
    if name in _chain:
        raise CardError(f"{singular} card {name!r} extends itself: {' -> '.join((*_chain, name))}")
    data = _read_toml(paths[name])
    data.setdefault("name", name)
    if data["name"] != name:
        raise CardError(f"card {paths[name]} says name = {data['name']!r}; it must match its file")
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str) or parent not in paths:
            raise CardError(f"{singular} card {name!r} extends {parent!r}, which is no "
                            f"{singular} card ({paths[name]})",
                            hint=did_you_mean(singular, str(parent), paths).hint)
        base = load_raw_card(kind, parent, (*_chain, name))
        for inherited_only in ("name", "groups", "paper", "description"):
            base.pop(inherited_only, None)
        child_search = data.get("search")
        data = _merge(base, data)
        if isinstance(child_search, Mapping):
            # a [search] entry restated by the child replaces the parent's whole (merging
            # {type = "categorical", choices} into {type = "float", low, high, log} is nonsense)
            data["search"] = {**base.get("search", {}), **copy.deepcopy(child_search)}
        data.setdefault("extends_chain", [])
        data["extends_chain"] = [parent, *base.get("extends_chain", [])]
    data["_path"] = str(paths[name])
    return data


def check_keys(where: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Raise a CardError naming any key of ``data`` not in ``allowed``."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise CardError(f"{where}: unknown key(s) {', '.join(hints)}",
                        hint=f"allowed keys: {', '.join(sorted(allowed))}")


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_set_option(items: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "params.use_iuim=false"]`` -> nested dict; values parsed as TOML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise CardError(f"--set {item!r}: expected key=value (e.g. train.lr=0.01)")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CardError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is already set to "
                                f"{describe(node)}, not a table")
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- model cards
def _plain_zero(value: Any) -> Any:
    """``-0.0`` as ``0.0`` (in a tuple too): one number, one spelling in the run id."""
    if isinstance(value, float):
        return value + 0.0
    if isinstance(value, tuple):
        return tuple(_plain_zero(v) for v in value)
    return value


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. The paper's settings are the defaults (MIAN §4.1.4)."""

    optimizer: str = "adam"  # "adam" (dense) | "lazy_adam" (row-wise sparse updates)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 128
    eval_batch_size: int = 8192
    epochs: int = 10
    patience: int = 2  # epochs without a better validation AUC before stopping
    l2: float = 1e-3
    # "batch_embeddings": L2 on the embedding rows a batch touches; "din_frequency": the same,
    # each row scaled by 1/n_j (DIN's mini-batch-aware regulariser, n_j = the id's training
    # frequency); "all": weight decay on every parameter; "none". See ctrbench.engine.optim.
    l2_target: str = "batch_embeddings"
    grad_clip: float = 0.0  # 0 = off
    # initialisation rule of the dense layers (ctrbench.models.init.INIT_RULES)
    init: str = "torch_default_dense"
    # arithmetic of forward passes: "auto" (bf16 autocast on CUDA, float32 on the CPU),
    # "float32", or "bf16" (autocast on either device). See ctrbench.engine.devices.autocast.
    precision: str = "auto"

    def __post_init__(self) -> None:
        checked = validate_train_values("train", asdict(self))
        for key, value in checked.items():
            object.__setattr__(self, key, _plain_zero(value))

    @classmethod
    def from_dict(cls, where: str, data: Mapping[str, Any]) -> TrainConfig:
        if not isinstance(data, Mapping):
            raise CardError(f"{where}: expected a table of training settings, "
                            f"got {describe(data)}", hint="e.g. [train] lr = 0.001")
        check_keys(where, data, [f.name for f in fields(cls)])
        return cls(**validate_train_values(where, data))


MODEL_CARD_KEYS = ("name", "arch", "description", "groups", "params", "train", "paper", "search",
                   "extends_chain", "_path", "tuned_from")


@dataclass(frozen=True)
class ModelCard:
    """A registry name: an architecture, its parameters, training settings, paper numbers."""

    name: str
    arch: str
    description: str
    groups: tuple[str, ...]
    params: Mapping[str, Any]
    train: TrainConfig
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    search: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    path: str = ""
    extends_chain: tuple[str, ...] = ()
    tuned_from: Mapping[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """What defines the model in a run record (and its hash): no paper numbers, no paths.
        ``train.precision`` is left out at its default ``auto``, so the run ids of records made
        before the setting existed stay valid."""
        train = asdict(self.train)
        if train["precision"] == "auto":
            del train["precision"]
        return {"name": self.name, "arch": self.arch, "params": dict(self.params),
                "train": train}

    def with_overrides(self, overrides: Mapping[str, Any]) -> ModelCard:
        """Apply ``{"params": {...}, "train": {...}}`` overrides (config file or --set)."""
        where = f"overrides for model {self.name!r}"
        check_keys(where, require_table(where, overrides, "train.lr=0.01"), ["params", "train"])
        params = _merge(self.params, require_table(f"{where}: params",
                                                   overrides.get("params", {}),
                                                   "params.embedding_dim=8"))
        train = TrainConfig.from_dict(
            f"model {self.name!r} train",
            _merge(asdict(self.train), require_table(f"{where}: train",
                                                     overrides.get("train", {}), "train.lr=0.01"))
        )
        return replace(self, params=params, train=train)


def model_card_from_dict(data: Mapping[str, Any]) -> ModelCard:
    where = f"model card {data.get('_path', data.get('name'))}"
    check_keys(where, data, MODEL_CARD_KEYS)
    for key in ("name", "arch"):
        if key not in data:
            raise CardError(f"{where}: missing required key {key!r}")
    for key in ("name", "arch", "description"):
        if key in data and not isinstance(data[key], str):
            raise CardError(f"{where}: {key} = {describe(data[key])}: expected a string")
    for key in ("params", "train", "paper", "search", "tuned_from"):
        require_table(f"{where} [{key}]", data.get(key, {}), f"[{key}] ...")
    groups = data.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise CardError(f"{where}: groups = {describe(groups)}: expected an array of strings")
    return ModelCard(
        name=data["name"],
        arch=data["arch"],
        description=data.get("description", ""),
        groups=tuple(data.get("groups", ())),
        params=dict(data.get("params", {})),
        train=TrainConfig.from_dict(f"{where} [train]", data.get("train", {})),
        paper=dict(data.get("paper", {})),
        search=dict(data.get("search", {})),
        path=data.get("_path", ""),
        extends_chain=tuple(data.get("extends_chain", ())),
        tuned_from=dict(data.get("tuned_from", {})),
    )


def load_model_card(name: str) -> ModelCard:
    refuse_abstract("model", name, model_names())
    return model_card_from_dict(load_raw_card("models", name))


def refuse_abstract(kind: str, name: str, concrete: Sequence[str]) -> None:
    """An abstract card (``_name``: settings other cards extend) named as a card to use is an
    unknown name, answered with the concrete ones (abstract names are never listed)."""
    if name.startswith("_"):
        raise did_you_mean(kind, name, concrete)


def model_names() -> list[str]:
    return sorted(n for n in card_paths("models") if not n.startswith("_"))


_REPORTED: set[str] = set()  # broken cards already reported in this process


def report_broken_card(error: CardError) -> None:
    """Say once per process (on stderr) that a card could not be read and was skipped."""
    text = str(error)
    if text not in _REPORTED:
        _REPORTED.add(text)
        sys.stderr.write(f"warning: skipped a card that cannot be read: {text}\n")
        sys.stderr.flush()


def load_model_cards(names: Sequence[str]) -> tuple[list[ModelCard], list[CardError]]:
    """The named model cards that load, and the errors of those that do not (one each)."""
    cards, errors = [], []
    for name in names:
        try:
            cards.append(load_model_card(name))
        except CardError as exc:
            errors.append(exc)
    return cards, errors


def model_groups() -> dict[str, list[str]]:
    """Group name -> model names, from the cards' ``groups``; ``all`` holds every card.

    A card that cannot be read (bad TOML, bad value) cannot say its groups: it is skipped and
    reported once on stderr, so that one broken card does not break every group selection.
    """
    groups: dict[str, list[str]] = {"all": []}
    cards, errors = load_model_cards(model_names())
    for error in errors:
        report_broken_card(error)
    for card in cards:
        groups["all"].append(card.name)
        for group in card.groups:
            groups.setdefault(group, []).append(card.name)
    return groups


def tuned_group(group: str, dataset: str, names: Sequence[str],
                groups: Mapping[str, list[str]]) -> list[str]:
    """``table2@books`` -> every model of ``table2`` as its tuned card ``<model>@books``.

    A model with nothing to tune (an empty ``[search]``) stands as itself; a missing tuned card
    is an error naming every missing one and the command that writes them.
    """
    out, missing = [], []
    for model in groups[group]:
        tuned = f"{model}@{dataset}"
        if tuned in names:
            out.append(tuned)
        elif not load_model_card(model).search:
            out.append(model)
        else:
            missing.append(tuned)
    if missing:
        raise CardError(f"group {group!r} has no tuned card on {dataset!r} for: "
                        f"{', '.join(missing)}",
                        hint=f"ctrbench tune --models {group} --dataset {dataset} writes them")
    return out


def resolve_model_spec(spec: str | Sequence[str]) -> list[str]:
    """``"mian,dien"``, ``"table2"``, ``"mian*"``, ``"table2@books"`` -> ordered, de-duplicated
    model names (``GROUP@DATASET``: the group's tuned cards)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = model_names()
    groups: dict[str, list[str]] | None = None
    out: list[str] = []
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        if any(ch in raw for ch in "*?["):
            matched = fnmatch.filter(names, raw)
            if not matched:
                raise did_you_mean("model pattern", raw, names)
            selected = matched
        elif raw in names:
            selected = [raw]
        elif "@" in raw and raw.rpartition("@")[0] in (groups := groups or model_groups()):
            group, _, dataset = raw.rpartition("@")
            selected = tuned_group(group, dataset, names, groups)
        else:
            groups = groups if groups is not None else model_groups()
            if raw not in groups:
                raise did_you_mean("model or group", raw, [*names, *groups], "models and groups")
            selected = groups[raw]
        out.extend(n for n in selected if n not in out)
    if not out:
        raise CardError("no models selected", hint="e.g. --models mian,dien or --models table2")
    return out


# --------------------------------------------------------------------------- dataset cards
SOURCE_KEYS = ("role", "file", "url", "mirrors", "sha256", "md5", "size", "lines", "members",
               "member_lines")
DATASET_CARD_KEYS = ("name", "description", "reader", "protocol", "version", "license",
                     "citation", "homepage", "sources", "reader_params", "protocol_params",
                     "fields", "expected", "extends_chain", "_path", "notes")


@dataclass(frozen=True)
class SourceSpec:
    """One raw file: where it comes from and how to verify it."""

    role: str  # e.g. "reviews", "meta", "archive", "interactions", "items", "users"
    file: str  # file name in the raw cache (or relative path for user tables)
    url: str = ""
    mirrors: tuple[str, ...] = ()
    sha256: str = ""
    md5: str = ""
    size: int = 0
    lines: int = 0
    members: tuple[str, ...] = ()  # files inside an archive, when role == "archive"
    # published line counts of an archive's members (checked when it is given extracted)
    member_lines: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DatasetCard:
    """A dataset: its sources, reader, protocol and parameters, fields and expected statistics."""

    name: str
    description: str
    reader: str  # "amazon" | "movielens" | "synthetic" | "table"
    protocol: str  # "din" | "dien"
    version: int
    sources: tuple[SourceSpec, ...]
    reader_params: Mapping[str, Any]
    protocol_params: Mapping[str, Any]
    fields: Mapping[str, Any]
    expected: Mapping[str, Any]
    license: str = ""
    citation: str = ""
    homepage: str = ""
    path: str = ""
    extends_chain: tuple[str, ...] = ()
    notes: str = ""

    def resolved(self) -> dict[str, Any]:
        """What defines the prepared data (and its hash): no descriptions or expectations."""
        return {
            "name": self.name, "reader": self.reader, "protocol": self.protocol,
            "version": self.version,
            "sources": [{"role": s.role, "file": s.file, "sha256": s.sha256, "md5": s.md5}
                        for s in self.sources],
            "reader_params": dict(self.reader_params),
            "protocol_params": dict(self.protocol_params), "fields": dict(self.fields),
        }

    def source(self, role: str) -> SourceSpec | None:
        for s in self.sources:
            if s.role == role:
                return s
        return None


def dataset_card_from_dict(data: Mapping[str, Any]) -> DatasetCard:
    where = f"dataset card {data.get('_path', data.get('name'))}"
    check_keys(where, data, DATASET_CARD_KEYS)
    for key in ("name", "reader"):
        if key not in data:
            raise CardError(f"{where}: missing required key {key!r}")
    for key in ("reader_params", "protocol_params", "fields", "expected"):
        require_table(f"{where} [{key}]", data.get(key, {}), f"[{key}] ...")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CardError(f"{where}: version = {describe(version)}: expected an integer >= 1")
    if not isinstance(data.get("sources", []), list):
        raise CardError(f"{where}: sources = {describe(data['sources'])}: expected an array of "
                        "tables ([[sources]])")
    sources = []
    for i, src in enumerate(data.get("sources", [])):
        require_table(f"{where} sources[{i}]", src, "[[sources]] role = ..., file = ...")
        check_keys(f"{where} sources[{i}]", src, SOURCE_KEYS)
        if "role" not in src or "file" not in src:
            raise CardError(f"{where} sources[{i}]: 'role' and 'file' are required")
        src = dict(src)
        src["mirrors"] = tuple(src.get("mirrors", ()))
        src["members"] = tuple(src.get("members", ()))
        lines = src.get("member_lines", {})
        if not isinstance(lines, dict) or not all(isinstance(v, int) for v in lines.values()):
            raise CardError(f"{where} sources[{i}]: member_lines must be a table of "
                            'member name = line count, e.g. {"u.data" = 100000}')
        src["member_lines"] = tuple(sorted(lines.items()))
        sources.append(SourceSpec(**src))
    return DatasetCard(
        name=data["name"],
        description=data.get("description", ""),
        reader=data["reader"],
        protocol=data.get("protocol", "din"),
        version=version,
        sources=tuple(sources),
        reader_params=dict(data.get("reader_params", {})),
        protocol_params=dict(data.get("protocol_params", {})),
        fields=dict(data.get("fields", {})),
        expected=dict(data.get("expected", {})),
        license=data.get("license", ""),
        citation=data.get("citation", ""),
        homepage=data.get("homepage", ""),
        path=data.get("_path", ""),
        extends_chain=tuple(data.get("extends_chain", ())),
        notes=data.get("notes", ""),
    )


def load_dataset_card(name: str) -> DatasetCard:
    refuse_abstract("dataset", name, dataset_names())
    return dataset_card_from_dict(load_raw_card("datasets", name))


def dataset_names() -> list[str]:
    return sorted(n for n in card_paths("datasets") if not n.startswith("_"))
