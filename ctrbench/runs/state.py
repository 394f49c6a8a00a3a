"""What a run's record file holds, judged by one rule, and how a run's outcome is saved.

One rule (:func:`record_state`) decides, for a planned run, what ``seed-<k>.json`` holds: the
same loader (:func:`ctrbench.record.read_record`) and the same checks serve the "skip finished
runs" logic, the refusal to overwrite a finished record of another configuration, and the
closing summary of ``ctrbench run``. A record counts for a run only when its run id, seed,
dataset identity and resolved model configuration are the run's own; a record whose run id is
right but whose content is not (edited by hand) counts for nothing and is never overwritten
silently.

Saving (:func:`save_outcome`): a finished record is never destroyed. Without ``--force`` the
runner refuses to replace one (see ``runner.execute``); with ``--force`` the old record and its
scores are first moved to ``replaced/<run_id>.seed-<k>.json`` (``.npz``). When the results disk
refuses the write (read-only, full), nothing half-written is left there and the outcome is
written to the first fallback directory that accepts it (``$CTRBENCH_FALLBACK_DIR``, then
``$CTRBENCH_HOME/unsaved``, then the system temp dir); the caller reports where it went.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrbench.errors import WriteError
from ctrbench.record import (
    RunRecord,
    read_record,
    replaced_path,
    scores_path,
    write_record,
    write_scores,
)

KINDS = ("none", "finished", "failed", "running", "other", "inconsistent", "unreadable")


@dataclass(frozen=True)
class RecordState:
    """``kind``: none | finished | failed | running (this run's own record), other (another
    configuration's), inconsistent (run id right, content not), unreadable."""

    kind: str
    record: RunRecord | None = None
    detail: str = ""

    @property
    def protected(self) -> bool:
        """A finished record that is not this run's: replaced only with ``--force``."""
        return (self.kind in ("other", "inconsistent") and self.record is not None
                and self.record.status == "finished")


def _json(obj: Any) -> Any:
    """``obj`` as it reads back from a record (tuples -> lists, odd types -> str)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _differences(expected: Mapping[str, Any], found: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key, "<absent>"), found.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key} {b!r} (this run: {a!r})")
    return out


def record_state(spec: Any) -> RecordState:
    """What ``spec.record_file`` holds for ``spec`` (a :class:`ctrbench.runs.runner.RunSpec`)."""
    path = Path(spec.record_file)
    if not path.is_file():
        return RecordState("none")
    try:
        record = read_record(path)
    except Exception as exc:  # bad JSON, old schema, keys the schema lacks
        return RecordState("unreadable", None, str(exc).splitlines()[0])
    model = _json(spec.card.resolved())
    identity = _json(dict(getattr(spec, "identity", {}) or {}))
    differ = _differences(model, record.model_config or {}, "model.")
    if identity:
        differ += _differences(identity, record.dataset_identity or {}, "dataset.")
    if int(record.seed) != int(spec.seed):
        differ.append(f"seed {record.seed} (this run: {spec.seed})")
    shown = "; ".join(differ[:4]) + ("; ..." if len(differ) > 4 else "")
    if record.run_id != spec.run_id:
        return RecordState("other", record, f"a {record.status} record of another "
                                            f"configuration (run id {record.run_id}): {shown}")
    if differ:
        return RecordState("inconsistent", record, "its content does not match its run id "
                                                   f"(edited by hand?): {shown}")
    kind = record.status if record.status in ("finished", "failed", "running") else "other"
    return RecordState(kind, record)


# --------------------------------------------------------------------------- saving
def fallback_roots() -> list[Path]:
    """Where an outcome goes when the results disk refuses it, in order of preference."""
    from ctrbench.paths import cache_root

    roots = [Path(p) for p in [os.environ.get("CTRBENCH_FALLBACK_DIR")] if p]
    roots.append(cache_root() / "unsaved")
    roots.append(Path(tempfile.gettempdir()) / "ctrbench-unsaved")
    return roots


@dataclass
class Saved:
    """Where a run's outcome was written: at its place (``fallback`` None) or elsewhere."""

    record_file: Path
    fallback: Path | None = None
    errors: tuple[str, ...] = ()


def _archive_finished(record_file: Path) -> None:
    """Move a finished record (and its scores) to ``replaced/`` before it is overwritten."""
    try:
        old = read_record(record_file)
    except Exception:
        return
    if old.status != "finished":
        return
    target = replaced_path(record_file, old.run_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    if scores_path(record_file).is_file():
        os.replace(scores_path(record_file), scores_path(target))
    os.replace(record_file, target)


def _write_pair(record_file: Path, record: RunRecord, arrays: dict[str, np.ndarray] | None) -> None:
    """Scores (when given) then the record; on failure neither is left at ``record_file``."""
    new_scores = False
    try:
        if arrays is not None:
            write_scores(scores_path(record_file), **arrays)
            new_scores = True
        else:
            scores_path(record_file).unlink(missing_ok=True)
        write_record(record_file, record)
    except (WriteError, OSError):
        if new_scores:  # the record did not follow: these scores belong to nothing here
            try:
                scores_path(record_file).unlink(missing_ok=True)
            except OSError:
                pass
        raise


def save_outcome(record_file: Path, record: RunRecord, arrays: dict[str, np.ndarray] | None,
                 relative: Path) -> Saved:
    """Write ``record`` (and ``arrays`` as its scores) at ``record_file``; a finished record
    already there is archived first. If the disk refuses, try each fallback root (``relative``
    is the record's path under the results root). Raises :class:`WriteError` when nothing
    accepted it."""
    errors = []
    try:
        if record_file.is_file():
            _archive_finished(record_file)
        _write_pair(record_file, record, arrays)
        return Saved(record_file)
    except (WriteError, OSError) as exc:
        errors.append(f"{record_file}: {getattr(exc, 'strerror', None) or exc}")
        first = exc
    for root in fallback_roots():
        target = root / relative
        try:
            _write_pair(target, record, arrays)
            return Saved(record_file, fallback=target, errors=tuple(errors))
        except (WriteError, OSError) as exc:
            errors.append(f"{target}: {getattr(exc, 'strerror', None) or exc}")
    raise WriteError(record_file, first if isinstance(first, OSError)
                     else OSError(first.errno, "; ".join(errors))) from first
