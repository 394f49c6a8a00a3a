"""Run records loaded into pandas for reports and checks (one row per record file).

:func:`load_results` reads ``<results>/runs/**/seed-*.json`` into a :class:`ResultSet`: finished,
failed, running and unreadable records alike (only finished ones are ever averaged), per-epoch
curves of finished runs, and lazily the test scores (``.npz``) beside each record.
"""

from __future__ import annotations

import difflib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrbench.cards import config_hash, load_model_card
from ctrbench.errors import CtrbenchError, UnknownNameError
from ctrbench.record import RunRecord, read_record, read_scores

#: the paper's dataset keys (model cards' ``[paper]`` tables)
PAPER_DATASETS = ("books", "electronics", "commercial")

RUN_COLUMNS = (
    "dataset", "model", "seed", "status", "error", "identity", "protocol", "version", "arch",
    "config", "valid_auc", "test_auc", "test_gauc", "test_logloss", "test_rows", "best_epoch",
    "epochs_run",
    "train_s_per_epoch", "eval_s_per_epoch", "train_samples_per_s", "eval_samples_per_s",
    "peak_memory_mb", "n_parameters", "flags", "dead_relu_init", "dead_relu_best", "path",
)
CURVE_COLUMNS = ("dataset", "model", "seed", "epoch", "valid_auc", "train_loss")


# --------------------------------------------------------------------------- cards
@dataclass(frozen=True)
class CardInfo:
    """What a report needs from a model card: its groups and the paper's numbers."""

    groups: tuple[str, ...] = ()
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


class CardBook:
    """Model name -> :class:`CardInfo`, or None for a model without a card (cached)."""

    def __init__(self, cards: Mapping[str, CardInfo | None] | None = None) -> None:
        self._cards: dict[str, CardInfo | None] = dict(cards or {})
        self._fixed = cards is not None

    def get(self, model: str) -> CardInfo | None:
        if model not in self._cards and not self._fixed:
            try:
                card = load_model_card(model)
                self._cards[model] = CardInfo(tuple(card.groups), dict(card.paper))
            except UnknownNameError:
                self._cards[model] = None
        return self._cards.get(model)

    def in_group(self, model: str, group: str) -> bool:
        info = self.get(model)
        return info is not None and group in info.groups


# --------------------------------------------------------------------------- loading
def identity_key(identity: Mapping[str, Any]) -> str:
    """Short stable hash of a record's dataset identity (name, hashes, protocol, version)."""
    return config_hash(dict(identity))


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key in sorted(config):
        value = config[key]
        if isinstance(value, Mapping):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def config_key(config: Mapping[str, Any]) -> str:
    """Short stable hash of a record's resolved model config (params and train settings)."""
    return config_hash(flatten_config(config))


#: seeds are stored as 64-bit integers (pandas, numpy); anything else cannot be a run's seed
MAX_SEED = 2**63 - 1


def checked_seed(seed: object, path: Path) -> int:
    """The record's seed, or a :class:`CtrbenchError` when it is not an integer in
    [0, 2**63 - 1] (a larger one overflowed every table built from the records)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        shown = str(seed) if len(str(seed)) <= 30 else str(seed)[:27] + "..."
        raise CtrbenchError(f"run record {path}: seed {shown} is not an integer in "
                            "[0, 2**63 - 1]")
    return seed


def _run_row(path: Path, rec: RunRecord) -> dict[str, Any]:
    epochs = rec.epochs

    def mean_of(attr: str) -> float:
        vals = [getattr(e, attr) for e in epochs]
        return float(np.mean(vals)) if vals else float("nan")

    ident = rec.dataset_identity or {}
    return {
        "dataset": rec.dataset, "model": rec.model, "seed": checked_seed(rec.seed, path),
        "status": rec.status,
        "error": rec.error or "", "identity": identity_key(ident),
        "protocol": str(ident.get("protocol", "")), "version": str(ident.get("version", "")),
        "arch": str((rec.model_config or {}).get("arch", "")),
        "config": config_key(rec.model_config or {}),
        "valid_auc": float((rec.valid or {}).get("auc", np.nan)),
        "test_auc": float(rec.test.get("auc", np.nan)),
        "test_gauc": float(rec.test.get("gauc", np.nan)),
        "test_logloss": float(rec.test.get("logloss", np.nan)),
        "test_rows": float(rec.test.get("rows", np.nan)),
        "best_epoch": float(rec.best_epoch) if rec.best_epoch is not None else np.nan,
        "epochs_run": float(len(epochs)),
        "train_s_per_epoch": mean_of("train_seconds"),
        "eval_s_per_epoch": mean_of("eval_seconds"),
        "train_samples_per_s": mean_of("train_samples_per_s"),
        "eval_samples_per_s": mean_of("eval_samples_per_s"),
        "peak_memory_mb": max((e.peak_memory_mb for e in epochs), default=float("nan")),
        "n_parameters": int(rec.n_parameters), **health_columns(rec.health or {}),
        "path": str(path),
    }


def health_columns(health: Mapping[str, Any]) -> dict[str, Any]:
    """A record's training-health flags as text, and its largest dead-ReLU fractions."""
    flags = []
    if health.get("degenerate"):
        reasons = "; ".join(str(r) for r in health.get("degenerate_reasons", []))
        flags.append(f"degenerate ({reasons})" if reasons else "degenerate")
    if health.get("not_converged"):
        flags.append("not converged (best epoch = last allowed)")
    dead = health.get("dead_relu", {}) if isinstance(health.get("dead_relu"), Mapping) else {}

    def largest(which: str) -> float:
        values = dead.get(which, {})
        return max(values.values(), default=np.nan) if isinstance(values, Mapping) else np.nan

    return {"flags": ", ".join(flags), "dead_relu_init": largest("init"),
            "dead_relu_best": largest("best")}


def _unreadable_row(path: Path, root: Path, error: str) -> dict[str, Any]:
    rel = path.relative_to(root / "runs").parts
    dataset, model = (rel[0], rel[1]) if len(rel) >= 3 else ("?", "?")
    try:
        seed = int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        seed = -1
    seed = seed if 0 <= seed <= MAX_SEED else -1
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS, np.nan)
    row.update(dataset=dataset, model=model, seed=seed, status="unreadable", error=error,
               identity="", protocol="", version="", arch="", flags="", config="", n_parameters=0,
               path=str(path))
    return row


@dataclass
class ResultSet:
    """All run records under a results root: one row per record, plus per-epoch curves."""

    root: Path
    runs: pd.DataFrame  # RUN_COLUMNS
    curves: pd.DataFrame  # CURVE_COLUMNS (finished runs only)
    explain_parts: dict[str, dict[str, list[str]]]  # record path -> extra["explain_parts"]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> flat model config
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> flat identity
    signatures: dict[str, tuple] = field(default_factory=dict)  # path -> file_signature read
    changed: set[str] = field(default_factory=set)  # records replaced after they were read
    _scores: dict[str, dict[str, np.ndarray] | None] = field(default_factory=dict)

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "finished"]

    @property
    def not_finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "finished"]

    def datasets(self) -> list[str]:
        return sorted(self.runs["dataset"].unique())

    def scores(self, path: str) -> dict[str, np.ndarray] | None:
        """The record's test scores (.npz), or None when missing or unreadable (cached).

        Cached without ``groups`` (the largest array, unused here) to bound memory on
        400k-row test sets; None also when ``scores`` or ``labels`` is missing.
        """
        if path not in self._scores:
            try:
                arrays = read_scores(Path(path))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                arrays = {}
            arrays = arrays if self._unchanged(path) else {}
            arrays.pop("groups", None)
            ok = "scores" in arrays and "labels" in arrays
            self._scores[path] = arrays if ok else None
        return self._scores[path]

    def test_groups(self, path: str) -> np.ndarray | None:
        """The user id of each test row (``groups`` in the record's .npz), or None (not cached:
        read once per test set by the caller)."""
        try:
            groups = read_scores(Path(path)).get("groups")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        return None if groups is None or not self._unchanged(path) else np.asarray(groups)

    def _unchanged(self, path: str) -> bool:
        """Whether the record at ``path`` is still the file that was read (call it after
        reading its scores). `run --force` moves the old record away before it writes the new
        scores, so scores read before this check holds belong to the record that was read;
        else ``path`` joins :attr:`changed`. A path this set did not read is not checked."""
        same = path not in self.signatures or file_signature(Path(path)) == self.signatures[path]
        if not same:
            self.changed.add(path)
        return same


def load_results(results_root: Path, datasets: Sequence[str] | None = None) -> ResultSet:
    """Read every ``seed-*.json`` under ``results_root/runs`` (optionally only ``datasets``).

    An unreadable record (bad JSON, not a JSON object, old schema version, a field of the wrong
    type such as ``"auc": "high"``) is kept as status ``unreadable`` with its error, so that it
    is listed rather than silently dropped (and never crashes a report or the gate).
    """
    root = Path(results_root)
    runs_dir = root / "runs"
    if not runs_dir.is_dir():
        raise CtrbenchError(f"no run records under {runs_dir}",
                            hint="run `ctrbench run ...` first, or pass --results DIR")
    rows: list[dict[str, Any]] = []
    curves: list[tuple] = []
    parts: dict[str, dict[str, list[str]]] = {}
    configs: dict[str, dict[str, Any]] = {}
    identities: dict[str, dict[str, Any]] = {}
    signatures: dict[str, tuple] = {}
    for path in sorted(runs_dir.rglob("seed-*.json")):
        if datasets and path.relative_to(runs_dir).parts[0] not in datasets:
            continue
        try:
            read = _read_settled(path)
            if read is None:  # moved away after the listing (`run --force`): not a record now
                continue
            rec, signatures[str(path)] = read
            row = _run_row(path, rec)
            _check_file_seed(path, row["seed"])
            config = flatten_config(rec.model_config or {})
            ident = flatten_config(rec.dataset_identity or {})
            curve = [(rec.dataset, rec.model, int(rec.seed), int(e.epoch), float(e.valid_auc),
                      float(e.train_loss)) for e in rec.epochs]
        except CtrbenchError as exc:
            rows.append(_unreadable_row(path, root, str(exc).splitlines()[0]))
            continue
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # wrong shape or type
            what = f"{type(exc).__name__}: {exc}".splitlines()[0]
            rows.append(_unreadable_row(path, root, f"malformed run record {path}: {what}"))
            continue
        rows.append(row)
        configs[str(path)], identities[str(path)] = config, ident
        if rec.status == "finished":
            curves.extend(curve)
            if isinstance(rec.extra, Mapping) and isinstance(rec.extra.get("explain_parts"),
                                                             Mapping):
                parts[str(path)] = {k: list(v) for k, v in rec.extra["explain_parts"].items()}
    if datasets:
        missing = sorted(set(datasets) - {r["dataset"] for r in rows})
        if missing:
            runs_dir = Path(root) / "runs"
            present = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) \
                if runs_dir.is_dir() else []
            close = [c for m in missing for c in difflib.get_close_matches(m, present, n=1)]
            raise CtrbenchError(f"no run records for dataset(s) {', '.join(missing)} in {root}"
                                + (f" (did you mean: {', '.join(close)}?)" if close else ""),
                                hint=f"datasets with records there: "
                                     f"{', '.join(present) or '(none)'}")
    rows, twice = _refuse_duplicates(rows, root)
    curves = [c for c in curves if c[:3] not in twice]
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    runs = runs.sort_values(["dataset", "model", "seed"], kind="stable").reset_index(drop=True)
    return ResultSet(root, runs, pd.DataFrame(curves, columns=list(CURVE_COLUMNS)), parts,
                     configs, identities, signatures)


def file_signature(path: Path) -> tuple[int, ...] | None:
    """Device, inode, size and modification time of ``path``; None when it is absent. A file
    replaced by a rename (every record write) gets another signature."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_settled(path: Path, tries: int = 3) -> tuple[RunRecord, tuple[int, ...]] | None:
    """The record at ``path`` and the signature of the file read, or None when no file is
    there any more. A record replaced while it was read (a run writing it) is read again, so
    a transient state is never listed as unreadable."""
    for _ in range(tries):
        before = file_signature(path)
        if before is None:
            return None
        try:
            record = read_record(path)
        except CtrbenchError:
            if file_signature(path) == before:
                raise
            continue
        if file_signature(path) == before:
            return record, before
    raise CtrbenchError(f"run record {path} kept changing while it was read (a run writing "
                        "it?)", hint="run the same command again")


def _check_file_seed(path: Path, seed: int) -> None:
    """A record's seed must be its file name's (``seed-<k>.json``): a copy of another seed's
    record under a new name would count that seed twice."""
    if path.stem != f"seed-{seed}":
        raise CtrbenchError(f"run record {path}: holds seed {seed} but its file name says "
                            f"{path.stem.removeprefix('seed-')!r} (a copy of another seed's "
                            "record?): not counted")


def _refuse_duplicates(rows: list[dict[str, Any]], root: Path
                       ) -> tuple[list[dict[str, Any]], set[tuple]]:
    """Records that claim the same (dataset, model, seed) (a model directory copied under
    another name) are all made unreadable: none of them is averaged twice, or chosen.
    Returns the rows and the (dataset, model, seed) keys refused."""
    seen: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        if r["status"] != "unreadable":
            seen.setdefault((r["dataset"], r["model"], r["seed"]), []).append(i)
    out, twice = list(rows), {key for key, where in seen.items() if len(where) > 1}
    for (ds, model, seed) in twice:
        where = seen[(ds, model, seed)]
        files = ", ".join(Path(rows[i]["path"]).relative_to(root).as_posix() for i in where)
        for i in where:
            out[i] = _unreadable_row(Path(rows[i]["path"]), root,
                                     f"{ds}/{model} seed {seed} is in more than one record "
                                     f"({files}): none counted")
    return out, twice


def finite_auc(runs: pd.DataFrame) -> pd.Series:
    """Rows whose test AUC is a finite number (a finished record may hold nan or inf)."""
    return pd.Series(np.isfinite(runs["test_auc"].to_numpy(dtype=float)), index=runs.index)


def markdown_safe(shown: pd.DataFrame) -> pd.DataFrame:
    """``shown`` (strings) with ``|`` escaped in cells and headers, for Markdown tables."""
    def esc(x: Any) -> Any:
        return x.replace("|", "\\|") if isinstance(x, str) else x

    return shown.rename(columns=esc).map(esc)


# --------------------------------------------------------------------------- paper datasets
def paper_dataset(name: str, mapping: Mapping[str, str] | None = None) -> str | None:
    """The paper's dataset for one of ours: explicit mapping first, then the name itself, then
    a name token (``books-dien`` -> ``books``, ``amazon-electronics`` -> ``electronics``)."""
    if mapping and name in mapping:
        return mapping[name]
    if name in PAPER_DATASETS:
        return name
    tokens = name.replace("_", "-").split("-")
    found = [t for t in tokens if t in PAPER_DATASETS]
    return found[0] if len(found) == 1 else None
