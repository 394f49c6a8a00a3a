"""Source readers: raw files -> :class:`ctrbench.data.canonical.CanonicalTables`.

A reader is ``read(card, files, *, strict) -> CanonicalTables`` where ``files`` maps each source
role of the card (``reviews``, ``meta``, ``archive``, ``interactions`` ...) to a verified local
path (see ``ctrbench.data.download.fetch_sources``). Readers register by the card's ``reader``.
"""

from __future__ import annotations

import importlib
import lzma
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

from ctrbench.cards import DatasetCard
from ctrbench.data.canonical import CanonicalTables, clean_interactions
from ctrbench.errors import DataError
from ctrbench.registry import Registry

Reader = Callable[..., CanonicalTables]
READERS: Registry[Reader] = Registry("reader")

RATING_NOT_FINITE = "rating not finite"
#: what a damaged compressed file raises while it is read (besides OSError, e.g. BadGzipFile)
DECOMPRESS_ERRORS = (EOFError, zlib.error, zipfile.BadZipFile, lzma.LZMAError)
UTF8_BOM = b"\xef\xbb\xbf"


def cannot_read(path: Path | str, exc: BaseException) -> DataError:
    """The one message for a raw file that cannot be read (no permission, damaged)."""
    if isinstance(exc, PermissionError):
        return DataError(f"cannot read {path}: {exc.strerror}",
                         hint="make it readable by this user (e.g. chmod a+r), then run the "
                              "same command again")
    reason = getattr(exc, "strerror", None) or exc
    return DataError(f"cannot read {path}: {reason}",
                     hint="the file is truncated or corrupt: copy or download it again")

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
