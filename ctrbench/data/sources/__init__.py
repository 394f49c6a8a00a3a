"""Source readers: raw files -> :class:`ctrbench.data.canonical.CanonicalTables`.

A reader is ``read(card, files, *, strict) -> CanonicalTables`` where ``files`` maps each source
role of the card (``reviews``, ``meta``, ``archive``, ``interactions`` ...) to a verified local
path (see ``ctrbench.data.download.fetch_sources``). Readers register by the card's ``reader``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path

from ctrbench.cards import DatasetCard
from ctrbench.data.canonical import CanonicalTables, clean_interactions
from ctrbench.registry import Registry

Reader = Callable[..., CanonicalTables]
READERS: Registry[Reader] = Registry("reader")

_MODULES = ("amazon", "movielens", "synthetic", "table")


def _load_all() -> None:
    for name in _MODULES:
        importlib.import_module(f"ctrbench.data.sources.{name}")


def read_source(card: DatasetCard, files: Mapping[str, Path], *, strict: bool = False
                ) -> CanonicalTables:
    """Run the card's reader over its verified files, validate and clean the result
    (:func:`~ctrbench.data.canonical.clean_interactions`: repeated (user, item) events dropped,
    odd times counted)."""
    _load_all()
    tables = READERS.get(card.reader)(card, files, strict=strict)
    tables.validate()
    return clean_interactions(tables)
