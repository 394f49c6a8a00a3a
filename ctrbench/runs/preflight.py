"""Checks a command makes once, after the dataset is prepared and before any run starts, so
that what every run would find out alone (one failed record per seed) is one message.

``dataset`` is a :class:`ctrbench.runs.runner.DatasetHandle` (its ``name`` and ``data``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ctrbench.cards import ModelCard
from ctrbench.data.store import SPLITS, check_values
from ctrbench.errors import CardError, CtrbenchError, DataError
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
