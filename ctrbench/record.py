"""The run record: one structured, versioned JSON per (dataset, model, seed), written atomically.

``results/runs/<dataset>/<model>/seed-<k>.json`` plus ``seed-<k>.npz`` with the test scores
(``scores``, ``labels``, ``groups`` and, on synthetic data, ``oracle``), the ``run_id`` that wrote
them, and for models with ``explain()`` its outputs on a seeded sample of test rows
(``explain__<name>``, row indices in ``explain_rows``; part names in
``record.extra["explain_parts"]``). A failed run has no ``.npz``. A record whose ``status``
is not ``"finished"`` never enters a mean. Records of a ``schema_version`` that this code
cannot read are refused with a clear message.

Version 2 adds ``init`` (the initialisation rule of the dense layers, ``train.init``) and
``health`` (:mod:`ctrbench.engine.health`: dead ReLU fractions at init and at the best epoch,
``degenerate`` and ``not_converged`` flags). Version 1 records still load: every version-1 run
used ``torch_default_dense`` and has no health figures (``{}``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ctrbench.errors import CtrbenchError, WriteError
from ctrbench.paths import safe_name

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
V1_INIT = "torch_default_dense"  # the only rule before version 2
STATUSES = ("finished", "failed", "running")
UNREADABLE_HINT = ("re-run it with --force (the file is first moved to replaced/), or read it "
                   "with the ctrbench that wrote it")


@dataclass
class EpochRow:
    """One epoch of training and validation (the paper's Section 4.5 timings)."""

    epoch: int
    train_loss: float  # mean BCE per training sample (no auxiliary or L2 terms)
    train_aux_loss: float  # mean of the model's weighted auxiliary loss terms
    valid_auc: float
    valid_logloss: float
    train_seconds: float
    eval_seconds: float
    train_samples_per_s: float
    eval_samples_per_s: float
    peak_memory_mb: float
    # beside the timings: torch's intra-op threads and the machine's 1-min load average when the
    # epoch's training ended (None in records written before they were kept, or where unknown)
    threads: int | None = None
    load_avg_1m: float | None = None


@dataclass
class RunRecord:
    """Everything a run produced; the unit of every report and check."""

    run_id: str
    dataset: str
    model: str
    seed: int
    status: str  # "finished" | "failed" | "running"
    dataset_config: dict[str, Any]
    dataset_identity: dict[str, Any]  # PreparedData.identity: name, hashes, protocol, version
    model_config: dict[str, Any]  # ModelCard.resolved() after overrides
    model_hash: str
    environment: dict[str, Any]  # ctrbench/torch/python versions, device, git commit + dirty
    epochs: list[EpochRow] = field(default_factory=list)
    best_epoch: int | None = None
    test: dict[str, float] = field(default_factory=dict)  # auc, logloss, gauc, rows
    valid: dict[str, float] = field(default_factory=dict)  # best epoch's valid metrics
    n_parameters: int = 0
    error: str | None = None
    started_at: str = ""
    finished_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    init: str = ""  # initialisation rule of the dense layers (ctrbench.models.init)
    health: dict[str, Any] = field(default_factory=dict)  # ctrbench.engine.health
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> RunRecord:
        """The record in ``data``; a :class:`CtrbenchError` naming ``source`` when it is not a
        JSON object, has a version this code cannot read, or keys its version lacks or needs."""
        if not isinstance(data, Mapping):
            raise CtrbenchError(f"run record {source} is not a JSON object "
                                f"({type(data).__name__})")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise CtrbenchError(
                f"run record {source or data.get('run_id')} has schema_version {version}; "
                f"this ctrbench reads versions {READABLE_VERSIONS}",
                hint=UNREADABLE_HINT,
            )
        data = dict(data)
        if version == 1:
            data.setdefault("init", V1_INIT)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        missing = [f.name for f in fields(cls) if f.name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        problems = ([f"unknown keys for schema_version {version}: {', '.join(unknown)}"]
                    if unknown else [])
        problems += [f"missing keys: {', '.join(missing)}"] if missing else []
        problems += _wrong_types(data)
        if problems:
            raise CtrbenchError(f"run record {source or data.get('run_id')} cannot be read: "
                                + "; ".join(problems), hint=UNREADABLE_HINT)
        data["epochs"] = [EpochRow(**row) for row in data.get("epochs", [])]
        return cls(**data)


#: the JSON type of each key whose value the runner and the reports use as it is (a hand edit
#: that breaks one makes the record unreadable, never a traceback further on)
VALUE_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("run_id", "dataset", "model", "status", "model_hash"), (str,)),
    **dict.fromkeys(("dataset_config", "dataset_identity", "model_config", "environment",
                     "test", "valid", "extra", "health"), (dict,)),
    "seed": (int,), "epochs": (list,), "error": (str, type(None)),
    "best_epoch": (int, type(None)), "n_parameters": (int,),
}


def _wrong_types(data: Mapping[str, Any]) -> list[str]:
    """One problem per value of the wrong JSON type (``true`` is no integer here)."""
    wrong = [key for key, types in VALUE_TYPES.items() if key in data
             and (not isinstance(data[key], types)
                  or (isinstance(data[key], bool) and bool not in types))]
    if isinstance(data.get("epochs"), list) and not all(isinstance(row, dict)
                                                         for row in data["epochs"]):
        wrong.append("epochs")
    return [f"{key} has the wrong type ({type(data[key]).__name__}: {data[key]!r:.40})"
            for key in dict.fromkeys(wrong)]


def record_path(results_root: Path, dataset: str, model: str, seed: int) -> Path:
    """``<results>/runs/<dataset>/<model>/seed-<k>.json``; names are checked path components."""
    return (Path(results_root) / "runs" / safe_name("dataset", dataset)
            / safe_name("model", model) / f"seed-{int(seed)}.json")


def replaced_path(record_file: Path, run_id: str) -> Path:
    """Where a finished record goes when ``--force`` replaces it: ``replaced/<run_id>.seed-k``
    beside it (never matched by ``seed-*.json``, so reports never read it)."""
    record_file = Path(record_file)
    return record_file.parent / "replaced" / f"{safe_name('run id', run_id)}.{record_file.name}"


def scores_path(record_file: Path) -> Path:
    return Path(record_file).with_suffix(".npz")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a unique temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    finally:
        _remove_quietly(tmp)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[Path]:
    """Wait for, then hold, an OS lock (``flock``) on the hidden ``.<name>.lock`` beside
    ``path`` while inside; yields the lock file. Processes that rewrite ``path`` (or the set
    of files it stands for) under it never interleave, and a read-then-write sees the last
    writer's file; a killed holder's lock dies with it. The holder removes the lock file
    while it still holds it (a waiter that opened it sees it unlinked and tries again, as for
    the run locks), so none is left behind."""
    from filelock import FileLock

    path = Path(path)
    lock_file = path.with_name(f".{path.name}.lock")
    lock = FileLock(str(lock_file))
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        held = os.stat(lock_file)
    except OSError as exc:
        lock.release()
        raise WriteError(lock_file, exc) from exc
    try:
        yield lock_file
    finally:
        try:
            now = os.stat(lock_file)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                lock_file.unlink()
        except OSError:
            pass  # a read-only directory: the kernel lock still goes
        finally:
            lock.release()


#: a temporary name of this module's writers: ``.<name>.tmp-<8 hex>[.<suffix>]``
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.tmp-[0-9a-f]{8}(?P<suffix>\.[A-Za-z0-9]+)?")


def remove_stale_temporaries(directory: Path, keep: Path | None = None,
                             names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files and folders that writers killed mid-write left in
    ``directory`` (never under a final name), except ``keep``; with ``names``, only those of
    these final file names. Call it holding the :func:`exclusive` lock of every writer of
    what it removes."""
    finals = None if names is None else set(names)
    stale = []
    for path in Path(directory).glob(".*.tmp-*"):
        match = _TEMPORARY.fullmatch(path.name)
        final = match and match["stem"] + (match["suffix"] or "")
        if match and path != keep and (finals is None or final in finals):
            stale.append(path)
    for tmp in sorted(stale):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _remove_quietly(tmp)
    return sorted(stale)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only directory: there is nothing of ours to remove anyway
        pass


def write_record(path: Path, record: RunRecord) -> None:
    text = json.dumps(record.to_dict(), indent=2, sort_keys=True, allow_nan=True, default=str)
    atomic_write_text(path, text + "\n")


def write_scores(path: Path, **arrays: np.ndarray) -> None:
    """Test scores beside the record (``.npz``), atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    finally:
        _remove_quietly(tmp)


def read_record(path: Path) -> RunRecord:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CtrbenchError(f"cannot read run record {path}: {exc}") from None
    return RunRecord.from_dict(data, source=str(path))


def read_scores(record_file: Path) -> dict[str, np.ndarray]:
    with np.load(scores_path(record_file)) as npz:
        return {k: npz[k] for k in npz.files}


def iter_records(results_root: Path) -> Iterable[tuple[Path, RunRecord]]:
    """Every readable record under ``results_root/runs`` (sorted by path)."""
    for path in sorted((Path(results_root) / "runs").rglob("seed-*.json")):
        yield path, read_record(path)
