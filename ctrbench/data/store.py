"""The prepared store: the only thing models see.

Layout: ``<prepared_root>/<card-name>-<hash>/`` holding ``meta.json`` and one directory per split
(``train``, ``valid``, ``test``) with one ``.npy`` per column. A store is written under a temporary
name and renamed when complete, so a directory with the final name is always finished.

Columns: every schema field (int32 ids; ``[N]`` or ``[N, T]``), ``hist_len`` (int32), ``label``
(float32), ``group`` (int64 raw user index, for gAUC), and on synthetic data ``oracle`` (float32,
the generator's true click probability).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrbench.errors import DataError
from ctrbench.schema import Schema

SPLITS = ("train", "valid", "test")
STORE_FORMAT = 1


@dataclass
class PreparedData:
    """An opened store: its schema, its meta, and lazy (memory-mapped) column arrays."""

    path: Path
    meta: dict[str, Any]
    schema: Schema

    def columns(self, split: str) -> list[str]:
        return sorted(p.stem for p in (self.path / split).glob("*.npy"))

    def split(self, split: str, mmap: bool = True) -> dict[str, np.ndarray]:
        """Column name -> array for ``split`` (memory-mapped unless ``mmap=False``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        mode = "r" if mmap else None
        return {c: np.load(self.path / split / f"{c}.npy", mmap_mode=mode)
                for c in self.columns(split)}

    def tensors(self, split: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The whole split as tensors on ``device`` (ids int32 or int64, labels float32)."""
        out = {}
        for name, arr in self.split(split, mmap=False).items():
            out[name] = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
        return out

    def num_rows(self, split: str) -> int:
        return int(self.meta["splits"][split]["rows"])

    @property
    def identity(self) -> dict[str, Any]:
        """What a result must match to be comparable: name, version, protocol, hashes."""
        keys = ("dataset", "card_hash", "data_hash", "protocol", "version", "raw_sha256",
                "code_version")
        return {k: self.meta.get(k) for k in keys}


def open_store(path: str | os.PathLike) -> PreparedData:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{path} is not a finished prepared store (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {meta_path}: {exc}") from None
    if meta.get("store_format") != STORE_FORMAT:
        raise DataError(f"{path} was written by an incompatible ctrbench (store format "
                        f"{meta.get('store_format')}, expected {STORE_FORMAT})",
                        hint="run `ctrbench prepare NAME --force` to rebuild it")
    return PreparedData(path=path, meta=meta, schema=Schema.from_dict(meta["schema"]))


def ensure_directory(path: Path, what: str) -> None:
    """Create directory ``path`` (and its parents), or raise :class:`DataError` naming the file
    that stands where a directory must be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise DataError(f"cannot create the {what} {path}: {blocker} is a file, not a directory",
                        hint="move that file away (or point CTRBENCH_HOME / --out elsewhere)"
                        ) from None


def write_store(
    final_path: str | os.PathLike,
    schema: Schema,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    meta: Mapping[str, Any],
) -> PreparedData:
    """Write a complete store atomically: temporary directory, then one rename.

    ``meta`` gets ``schema``, ``store_format`` and per-split ``rows``/``positive_rate`` added.
    """
    final_path = Path(final_path)
    ensure_directory(final_path.parent, "prepared-data folder")
    tmp = final_path.with_name(f".{final_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
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
        if final_path.exists():  # a concurrent writer finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_store(final_path)
