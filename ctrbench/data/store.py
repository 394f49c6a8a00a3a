"""The prepared store: the only thing models see.

Layout: ``<prepared_root>/<card-name>-<hash>/`` holding ``meta.json`` and one directory per split
(``train``, ``valid``, ``test``) with one ``.npy`` per column. A store is written under a temporary
name and renamed when complete, so a directory with the final name is always finished; opening
it checks the train and valid columns' headers against ``meta.json`` (the test split's when it
is first loaded: tuning never touches it), and loading a split for training checks its ids
against the vocabularies (a store damaged afterwards is named, never used).

Columns: every schema field (int32 ids; ``[N]`` or ``[N, T]``), ``hist_len`` (int32), ``label``
(float32), ``group`` (int64 raw user index, for gAUC), and on synthetic data ``oracle`` (float32,
the generator's true click probability).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrbench.errors import DISK_ERRNOS, DataError, WriteError
from ctrbench.paths import is_safe_name
from ctrbench.schema import HIST_LEN, LABEL, Schema

SPLITS = ("train", "valid", "test")
OPENED_SPLITS = ("train", "valid")  # checked on opening; the test split when it is loaded
STORE_FORMAT = 1
WRITING = ".writing"  # locked by the writer of a temporary store folder (see `abandoned`)
SWAP_LOCK = ".swap.lock"  # in the stores' folder: held to mark a store complete and rename it


@dataclass
class PreparedData:
    """An opened store: its schema, its meta, and lazy (memory-mapped) column arrays."""

    path: Path
    meta: dict[str, Any]
    schema: Schema
    _checked: set[str] = field(default_factory=set, repr=False, compare=False)

    def columns(self, split: str) -> list[str]:
        return sorted(p.stem for p in (self.path / split).glob("*.npy"))

    def split(self, split: str, mmap: bool = True) -> dict[str, np.ndarray]:
        """Column name -> array for ``split`` (memory-mapped unless ``mmap=False``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        self.check_split(split)
        mode = "r" if mmap else None
        return {c: np.load(self.path / split / f"{c}.npy", mmap_mode=mode)
                for c in self.columns(split)}

    def tensors(self, split: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The whole split as tensors on ``device`` (ids int32 or int64, labels float32), after
        :func:`check_values` (an id beyond its vocabulary never reaches a model)."""
        columns = self.split(split, mmap=False)
        check_values(self, split, columns)
        out = {}
        for name, arr in columns.items():
            out[name] = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
        return out

    def num_rows(self, split: str) -> int:
        return int(self.meta["splits"][split]["rows"])

    def check_split(self, split: str) -> None:
        """Raise :class:`DamagedStoreError` unless every column of ``split`` agrees with
        ``meta.json`` (once per split; only the columns' headers are read)."""
        if split not in self._checked:
            check_split(self, split)
            self._checked.add(split)

    @property
    def identity(self) -> dict[str, Any]:
        """What a result must match to be comparable: name, version, protocol, hashes."""
        keys = ("dataset", "card_hash", "data_hash", "protocol", "version", "raw_sha256",
                "code_version")
        return {k: self.meta.get(k) for k in keys}


class DamagedStoreError(DataError):
    """A finished store whose files no longer agree with its ``meta.json`` (or that lacks one)."""


def open_store(path: str | os.PathLike) -> PreparedData:
    """Open a finished store, checking its meta and every column's header (no data is read).

    Raises :class:`DamagedStoreError` naming the file when a column is missing, cut short, of
    another dtype, length or width than ``meta.json`` says, or the meta itself is broken; a
    store of another :data:`STORE_FORMAT` is a plain :class:`DataError`.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file() and not recover_swap(path):
        raise DataError(f"{path} is not a finished prepared store (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except OSError as exc:
        raise DataError(f"cannot read {meta_path}: {exc}") from None
    except ValueError as exc:  # not JSON, not UTF-8
        raise damaged(path, {}, "meta.json", f"not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise damaged(path, {}, "meta.json", "not a JSON object")
    if meta.get("store_format") != STORE_FORMAT:
        raise DataError(f"{path} was written by an incompatible ctrbench (store format "
                        f"{meta.get('store_format')}, expected {STORE_FORMAT})",
                        hint="run `ctrbench prepare NAME --force` to rebuild it")
    data = PreparedData(path=path, meta=meta, schema=_meta_schema(path, meta))
    for split in OPENED_SPLITS:
        data.check_split(split)
    return data


def damaged(path: Path, meta: Mapping, where: str, problem: str) -> DamagedStoreError:
    """The error for store ``path`` whose ``where`` (a file in it) has ``problem``."""
    names = (meta.get("dataset"), path.name.rpartition("-")[0])  # the card: <name>-<key>
    name = next((n for n in names if is_safe_name(n)), "NAME")
    return DamagedStoreError(f"prepared store {path} is damaged: {where}: {problem}",
                             hint=f"rebuild it with `ctrbench prepare {name} --force`")


def _meta_schema(path: Path, meta: Mapping) -> Schema:
    """The schema of ``meta.json``, after checking it and the per-split row counts."""
    try:
        schema = Schema.from_dict(meta["schema"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise damaged(path, meta, "meta.json", f"no valid schema ({type(exc).__name__}: "
                                               f"{exc})") from None
    for f in schema.fields:
        if not is_safe_name(f.name):
            raise damaged(path, meta, "meta.json", f"field name {f.name!r} is no file name")
        if not _count(f.vocab_size) or f.vocab_size < 1:
            raise damaged(path, meta, "meta.json",
                          f"field {f.name!r} has vocab_size {f.vocab_size!r}")
    if schema.max_len < 1:
        raise damaged(path, meta, "meta.json", f"schema max_len {schema.max_len} < 1")
    splits = meta.get("splits")
    for split in SPLITS:
        rows = splits.get(split, {}).get("rows") if isinstance(splits, dict) else None
        if not _count(rows) or rows < 0:
            raise damaged(path, meta, "meta.json", f"no row count for the {split} split")
    return schema


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expected_columns(schema: Schema) -> dict[str, tuple[str, int | None]]:
    """Column -> (dtype kinds allowed, width or None) that every split must hold."""
    sequences = {f.name for f in (*schema.behavior, *schema.neg_behavior)}
    out = {f.name: ("iu", schema.max_len if f.name in sequences else None)
           for f in schema.fields}
    out.update({HIST_LEN: ("iu", None), LABEL: ("f", None)})
    return out


def check_split(data: PreparedData, split: str) -> None:
    """Every column of ``split`` is present and readable, with the dtype and shape expected."""
    folder = data.path / split
    if not folder.is_dir():
        raise damaged(data.path, data.meta, split, "the split's folder is missing")
    rows = data.num_rows(split)
    expected = expected_columns(data.schema)
    for name in sorted({*expected, *data.columns(split)}):
        where = f"{split}/{name}.npy"
        try:
            arr = np.load(folder / f"{name}.npy", mmap_mode="r")
        except FileNotFoundError:
            raise damaged(data.path, data.meta, where, "missing") from None
        except (OSError, ValueError, EOFError) as exc:
            raise damaged(data.path, data.meta, where,
                          f"unreadable, cut short or no .npy ({exc})") from None
        kinds, width = expected.get(name, ("", None))
        want = (rows,) if width is None else (rows, width)
        if kinds and arr.dtype.kind not in kinds:
            raise damaged(data.path, data.meta, where, f"dtype {arr.dtype}, expected "
                                                       f"{'integer' if 'i' in kinds else 'float'}")
        if arr.shape[:1] != (rows,) or (kinds and arr.shape != want):
            raise damaged(data.path, data.meta, where, f"shape {arr.shape}, but meta.json says "
                                                       f"{want} ({rows} rows)")
        del arr  # unmap before the next


def check_values(data: PreparedData, split: str, columns: Mapping[str, np.ndarray]) -> None:
    """Ids within their vocabulary, ``hist_len`` within ``max_len``, labels in [0, 1]."""
    bounds = {f.name: (0, f.vocab_size - 1,
                       f"its vocabulary {f.vocab!r} of {f.vocab_size} ids (meta.json)")
              for f in data.schema.fields}
    bounds[HIST_LEN] = (0, data.schema.max_len, f"max_len {data.schema.max_len} (meta.json)")
    bounds[LABEL] = (0, 1, "[0, 1]")
    for name, (low, high, what) in bounds.items():
        arr = columns.get(name)
        if arr is None or not arr.size:
            continue
        least, most = arr.min(), arr.max()
        if not (low <= least and most <= high):  # NaN labels fail too
            raise damaged(data.path, data.meta, f"{split}/{name}.npy",
                          f"values {least}..{most} beyond {what}")


def ensure_directory(path: Path, what: str) -> None:
    """Create directory ``path`` (and its parents), or raise :class:`DataError` naming the file
    that stands where a directory must be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise DataError(f"cannot create the {what} {path}: {blocker} is a file, not a directory",
                        hint="move that file away, or choose another folder"
                        ) from None


def write_store(
    final_path: str | os.PathLike,
    schema: Schema,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    meta: Mapping[str, Any],
    *,
    replace: bool = False,
) -> PreparedData:
    """Write a complete store atomically: temporary directory, then one rename.

    ``meta`` gets ``schema``, ``store_format`` and per-split ``rows``/``positive_rate`` added.
    A finished store already at ``final_path`` (a concurrent writer's) is kept, unless
    ``replace``: then it is swapped out only once the new store is complete, so readers never
    find the path empty (after a kill between the two renames, :func:`recover_swap` puts a
    complete store back). A disk that refuses a write is a :class:`WriteError` naming the
    store; nothing half-written is left (a killed writer's folder is found by
    :func:`abandoned`).
    """
    final_path = Path(final_path)
    ensure_directory(final_path.parent, "prepared-data folder")
    tmp = final_path.with_name(f".{final_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        with _flocked(tmp / WRITING):  # see `abandoned`
            _write_files(tmp, schema, splits, meta)
            with _flocked(final_path.parent / SWAP_LOCK):
                (tmp / WRITING).unlink()  # complete from here: see `recover_swap`
                _install(tmp, final_path, replace)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise WriteError(final_path, exc) from None
        raise
    return open_store(final_path)


def _write_files(tmp: Path, schema: Schema, splits: Mapping[str, Mapping[str, np.ndarray]],
                 meta: Mapping[str, Any]) -> None:
    """Every split's columns, then ``meta.json``, into the folder ``tmp``."""
    split_meta = {}
    for split, columns in splits.items():
        (tmp / split).mkdir()
        rows = None
        for name, arr in columns.items():
            arr = np.asarray(arr)
            if rows is None:
                rows = len(arr)
            elif len(arr) != rows:
                raise ValueError(f"{split}/{name} has {len(arr)} rows, expected {rows}")
            np.save(tmp / split / f"{name}.npy", arr)
        labels = np.asarray(columns["label"])
        split_meta[split] = {"rows": int(rows or 0),
                             "positive_rate": float(labels.mean()) if len(labels) else 0.0}
    full_meta = dict(meta)
    full_meta.update(store_format=STORE_FORMAT, schema=schema.to_dict(), splits=split_meta)
    (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str))


@contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """Hold an OS lock (``flock``, gone with its process) on file ``path``, created if missing."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def abandoned(tmp: Path) -> bool:
    """Whether ``tmp`` is a temporary store folder whose writer died (killed mid-write): its
    ``WRITING`` file is there and nobody holds its lock."""
    try:
        fd = os.open(tmp / WRITING, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # a live writer holds it
        return False
    finally:
        os.close(fd)


def recover_swap(final_path: Path) -> bool:
    """Put back at ``final_path``, when nothing is there, the store that a writer killed in
    :func:`write_store` left under a temporary name: its new store if complete (no ``WRITING``
    file, which the writer removes only once ``meta.json`` is written), else the old one its
    forced swap had moved aside. The other complete ones go, as the swap would have removed
    them. Under the swap lock, so never while a live writer renames. True when a
    store is at ``final_path`` afterwards; False when none was complete or the folder is
    read-only."""
    final_path = Path(final_path)
    if os.path.lexists(final_path) or not _complete_aside(final_path):
        return False
    try:
        with _flocked(final_path.parent / SWAP_LOCK):
            aside = _complete_aside(final_path)
            if aside and not os.path.lexists(final_path):
                os.replace(aside[0], final_path)
                for old in aside[1:]:
                    shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return False
    return (final_path / "meta.json").is_file()


def _complete_aside(final_path: Path) -> list[Path]:
    """Complete stores under ``final_path``'s temporary names: the new ones of
    :func:`write_store` (``.<name>.tmp-<8 hex>``) first, then the old ones its swap moved
    aside (``.<name>.tmp-old-<8 hex>``)."""
    name = re.compile(rf"\.{re.escape(final_path.name)}\.tmp-(old-)?[0-9a-f]{{8}}")
    found = [(bool(match.group(1)), path.name, path) for path in final_path.parent.glob(".*.tmp-*")
             if (match := name.fullmatch(path.name)) and _complete(path)]
    return [path for _, _, path in sorted(found)]


def _complete(folder: Path) -> bool:
    """Whether ``folder`` is a store folder that its writer finished (see :func:`write_store`)."""
    return (folder.is_dir() and not folder.is_symlink() and (folder / "meta.json").is_file()
            and not os.path.lexists(folder / WRITING))


def _install(tmp: Path, final_path: Path, replace: bool) -> None:
    """Rename the complete store ``tmp`` to ``final_path`` (see :func:`write_store`)."""
    if not (final_path.exists() or final_path.is_symlink()):
        try:
            os.replace(tmp, final_path)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if not replace and (final_path / "meta.json").is_file():  # a concurrent writer finished
        shutil.rmtree(tmp)
        return
    trash = final_path.with_name(f".{final_path.name}.tmp-old-{uuid.uuid4().hex[:8]}")
    os.replace(final_path, trash)
    try:
        os.replace(tmp, final_path)
    except BaseException:
        os.replace(trash, final_path)
        raise
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)
