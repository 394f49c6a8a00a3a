"""Checks a command makes once, after the dataset is prepared and before any run starts, so
that what every run would find out alone (one failed record per seed) is one message.

``dataset`` is a :class:`ctrbench.runs.runner.DatasetHandle` (its ``name`` and ``data``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctrbench.cards import ModelCard
from ctrbench.data.store import SPLITS, check_values
from ctrbench.errors import CardError, CtrbenchError, DataError
from ctrbench.paths import ensure_writable_dir
from ctrbench.runs.lock import RunLock
from ctrbench.schema import LABEL


def check_buildable(cards: Sequence[ModelCard], dataset: Any) -> None:
    """Build each card's model once on ``dataset``'s schema before any run starts: the checks
    that need the schema (MIAN's ``heads`` dividing its width, IUIM without user fields) fail
    the command once, as one CardError naming every model they refuse, not each run."""
    from ctrbench.engine.train import build_for_training

    refused: dict[str, CtrbenchError] = {}
    for card in cards:
        try:
            build_for_training(card, dataset.data.schema)
        except CtrbenchError as exc:
            refused[card.name] = exc
    if refused:
        hints = [exc.hint for exc in refused.values() if exc.hint]
        raise CardError("; ".join(f"model {name!r} cannot be built for dataset {dataset.name!r}: "
                                  f"{exc.args[0]}" for name, exc in refused.items()),
                        hint="; ".join([*dict.fromkeys(hints), "nothing was run"]))


def check_runnable(dataset: Any) -> None:
    """Every split's files and values agree with the store's meta.json, every split has rows,
    and the valid and test splits hold both classes (what each run would otherwise find out
    alone, one failed record per seed)."""
    from ctrbench.engine.train import require_both_classes

    data = dataset.data
    for split in SPLITS:
        columns = data.split(split)  # memory-mapped
        check_values(data, split, columns)
        if not len(columns[LABEL]):
            raise DataError(f"the {split} split of {dataset.name!r} is empty ({data.path})",
                            hint="the dataset is too small for its protocol: every run "
                                 "needs train, valid and test rows")
        if split != "train":
            require_both_classes(np.asarray(columns[LABEL]), data, split)


def check_record_dirs(specs: Sequence[Any]) -> None:
    """Make every record directory of ``specs`` and prove it writable and lockable (probes
    removed) before any training: a folder that refuses is one CtrbenchError naming it (exit
    1), for ``run`` and for ``plan``, whose commands would otherwise all fail."""
    for directory in sorted({s.record_file.parent for s in specs}):
        ensure_writable_dir(directory, "run records")
        _check_locking(directory)


def _check_locking(directory: Path) -> None:
    """Take and release a run lock in ``directory``: a file system without ``flock`` stops the
    command with one message instead of failing every run alike."""
    probe = RunLock(directory / f".ctrbench-lock-probe-{os.getpid()}.lock")
    try:
        probe.acquire()
    except OSError as exc:
        with contextlib.suppress(OSError):  # what filelock created before flock failed
            probe.path.unlink(missing_ok=True)
        raise CtrbenchError(f"cannot lock run records in {directory}: {exc.strerror or exc}",
                            hint="runs need a file system with working flock (local disks, "
                                 "NFSv4, Lustre with flock)") from None
    finally:
        probe.release()
