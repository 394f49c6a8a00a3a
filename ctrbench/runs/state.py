"""What a run's record file holds, judged by one rule, and how a run's outcome is saved.

One rule (:func:`record_state`) decides, for a planned run, what ``seed-<k>.json`` holds: the
same loader (:func:`ctrbench.record.read_record`) and the same checks serve the "skip finished
runs" logic, the refusal to overwrite a finished record of another configuration, and the
closing summary of ``ctrbench run``. A record counts for a run only when its run id, seed,
dataset identity and resolved model configuration are the run's own; a record whose run id is
right but whose content is not (edited by hand) counts for nothing and is never overwritten
silently. A file this ctrbench cannot read (a newer schema version, a key it does not know, a
broken hand edit) may be someone's finished result: it is protected like a finished record of
another configuration. Only a file that is clearly cut short (empty, or a JSON object that
ends early) or says it is a failed record is redone without ``--force``.

Saving (:func:`save_outcome`): a finished record is never destroyed. Without ``--force`` the
runner refuses to replace one (see ``runner.execute``); with ``--force`` the old record and its
scores are first moved to ``replaced/<run_id>.seed-<k>.json`` (``.npz``; ``<run_id>-2`` and so
on when that name is taken). A file that cannot be read is moved there too, byte for byte
(``replaced/unreadable.seed-<k>.json``), never deleted. When the results disk refuses the write
(read-only, full), nothing half-written is left there and the outcome is written under a new,
unique name (run id, UTC time, random suffix) in the first fallback directory that accepts it
(``$CTRBENCH_FALLBACK_DIR``, then ``$CTRBENCH_HOME/unsaved``, then the system temp dir), so
that no rescued result ever overwrites another; the caller reports where it went.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrbench.errors import CtrbenchError, WriteError
from ctrbench.paths import safe_name
from ctrbench.record import (
    RunRecord,
    read_record,
    replaced_path,
    scores_path,
    write_record,
    write_scores,
)

KINDS = ("none", "finished", "failed", "running", "other", "inconsistent", "unreadable",
         "damaged")


@dataclass(frozen=True)
class RecordState:
    """``kind``: none | finished | failed | running (this run's own record), other (another
    configuration's), inconsistent (run id right, content not), unreadable (cannot be read, may
    be a finished result), damaged (cannot be read, but clearly cut short or failed)."""

    kind: str
    record: RunRecord | None = None
    detail: str = ""

    @property
    def protected(self) -> bool:
        """A finished record that is not this run's, or a file that cannot be read and may be
        one: replaced only with ``--force``."""
        if self.kind == "unreadable":
            return True
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


def _cut_short_or_failed(path: Path) -> bool:
    """Whether an unreadable record file is clearly no finished result: empty, a JSON object
    that ends early (what an in-place writer killed midway leaves), or one whose ``status``
    says failed or running. Anything else (a newer schema, a broken hand edit) may be one."""
    try:
        body = path.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    if not body:
        return True
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:  # at the very end, or no closing brace: cut short
        return body.startswith("{") and (exc.pos >= len(body) or not body.endswith("}"))
    return isinstance(data, dict) and data.get("status") in ("failed", "running")


def record_state(spec: Any) -> RecordState:
    """What ``spec.record_file`` holds for ``spec`` (a :class:`ctrbench.runs.runner.RunSpec`)."""
    path = Path(spec.record_file)
    if not path.is_file():
        return RecordState("none")
    try:
        record = read_record(path)
    except Exception as exc:  # bad JSON, a newer schema, keys the schema lacks, wrong types
        reason = str(exc).splitlines()[0]
        if _cut_short_or_failed(path):
            return RecordState("damaged", None, f"a cut-short or failed record ({reason})")
        return RecordState("unreadable", None, f"a file this ctrbench cannot read ({reason})")
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


def _label(name: str, default: str) -> str:
    """``name`` when it can be part of a file name, else ``default``."""
    try:
        return safe_name("run id", name)
    except CtrbenchError:
        return default


def _free(make: Callable[[str], Path], label: str) -> Path:
    """``make(label)``, or ``make(label-2)``, ... : the first whose record and scores are both
    absent, so that nothing kept earlier is overwritten."""
    target, n = make(label), 1
    while target.exists() or scores_path(target).exists():
        n += 1
        target = make(f"{label}-{n}")
    return target


def _archive(record_file: Path) -> None:
    """Before ``record_file`` is overwritten, move it (and its scores) to ``replaced/`` when it
    may be worth keeping: a finished record, or a file that cannot be read (moved as it is). A
    readable failed or running record is simply overwritten."""
    try:
        old = read_record(record_file)
    except Exception:
        label = "unreadable"
    else:
        if old.status != "finished":
            return
        label = _label(old.run_id, "finished")
    target = _free(lambda name: replaced_path(record_file, name), label)
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


def rescue_path(root: Path, relative: Path, run_id: str) -> Path:
    """A new name under ``root`` for an outcome the results disk refused:
    ``<dataset>/<model>/<UTC time>.<run_id>.<random>.seed-<k>.json`` (``relative`` is
    ``<dataset>/<model>/seed-<k>.json``), so that rescued results never overwrite each other."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    label = f"{stamp}.{_label(run_id, 'run')}.{uuid.uuid4().hex[:6]}"
    return _free(lambda name: root / relative.parent / f"{name}.{relative.name}", label)


def _why(path: Path, exc: OSError | WriteError) -> str:
    """One line: the file and the OS error (a WriteError's message names its file already)."""
    if isinstance(exc, WriteError):
        return str(exc).splitlines()[0]
    return f"{path}: {exc.strerror or exc}"


def save_outcome(record_file: Path, record: RunRecord, arrays: dict[str, np.ndarray] | None,
                 relative: Path) -> Saved:
    """Write ``record`` (and ``arrays`` as its scores) at ``record_file``; a finished record or
    an unreadable file already there is moved to ``replaced/`` first. If the disk refuses, write
    under a new name (:func:`rescue_path`) in the first fallback root that accepts it
    (``relative`` is the record's path under the results root). Raises :class:`WriteError` when
    nothing accepted it."""
    errors = []
    try:
        if record_file.is_file():
            _archive(record_file)
        _write_pair(record_file, record, arrays)
        return Saved(record_file)
    except (WriteError, OSError) as exc:
        errors.append(_why(record_file, exc))
        first = exc
    for root in fallback_roots():
        target = root / relative
        try:
            target = rescue_path(root, relative, record.run_id)
            _write_pair(target, record, arrays)
            return Saved(record_file, fallback=target, errors=tuple(errors))
        except (WriteError, OSError) as exc:
            errors.append(_why(target, exc))
    raise WriteError(record_file, first if isinstance(first, OSError)
                     else OSError(first.errno, "; ".join(errors))) from first
