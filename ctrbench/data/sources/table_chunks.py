"""Chunked reading of the ``table`` reader's CSV and parquet files, with real line numbers.

CSV files go through pandas' C parser in chunks of ``CHUNK_ROWS`` rows: the ``text_columns`` as
text, the others typed by the parser (a numeric column stays numbers unless a chunk holds a
value that is not one). Every column of the file is parsed (so that rows with extra fields are
seen), only ``columns`` are kept.
A row with more fields than the header is skipped by the parser, which says so in a warning
naming its line; these are returned as malformed lines (``expected 3 fields, found 4``), so
``strict`` fails on them too. Rows with fewer fields get empty cells (reported by the caller as
missing values). Blank lines are dropped without being counted as malformed. Each chunk comes
with the 1-based file line of every row (the header is line 1), so messages name the real line;
a quoted field that spans lines counts as one line from there on.

A file that is not valid text in ``encoding`` or that has an unterminated quote is a
:class:`~ctrbench.errors.DataError` naming the line and the ``reader_params`` setting to try; one
that cannot be read (no permission, a truncated or corrupt compressed file) is one naming the file.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.data.sources import DECOMPRESS_ERRORS, cannot_read
from ctrbench.errors import DataError

CHUNK_ROWS = 500_000
PARQUET_SUFFIXES = (".parquet", ".pq")
_SKIPPED_RE = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")
_EOF_QUOTE_RE = re.compile(r"EOF inside string starting at row (\d+)")


@dataclass
class Chunk:
    """Rows of one chunk, the file line of each, and the lines the parser skipped."""

    frame: pd.DataFrame
    lines: np.ndarray  # int64 [N] 1-based file line of each row (parquet: 1-based row)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _opener(path: Path):
    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)


def encoding_hint(path: Path) -> str:
    """The hint for a file that is not text in the card's encoding: ``utf-16`` when it starts
    with a UTF-16 byte-order mark (Excel's "Unicode Text" export), else ``latin-1``."""
    try:
        with _opener(path)(path, "rb") as fh:
            head = fh.read(2)
    except (OSError, *DECOMPRESS_ERRORS):
        head = b""
    if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return 'the file is UTF-16: set [reader_params] encoding = "utf-16"'
    return ('set the file\'s encoding in the card, e.g. [reader_params] encoding = "latin-1" '
            '(or "cp1252")')


def _first_undecodable_line(path: Path, encoding: str) -> tuple[int, str]:
    """(1-based line, offending bytes) of the first line that is not ``encoding`` text."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with _opener(path)(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as exc:
                return number, raw[exc.start:exc.end + 3].hex(" ")
    return 0, ""


def _encoding_error(path: Path, encoding: str) -> DataError:
    try:
        line, sample = _first_undecodable_line(path, encoding)
    except (OSError, *DECOMPRESS_ERRORS) as exc:  # damaged, not mis-encoded
        return cannot_read(path, exc)
    where = f"line {line}: " if line else ""
    return DataError(f"{path.name}: {where}not valid {encoding} text (bytes {sample})",
                     hint=encoding_hint(path))


def _parser_error(path: Path, exc: Exception) -> DataError:
    m = _EOF_QUOTE_RE.search(str(exc))
    if m:
        return DataError(f"{path.name}: line {int(m.group(1)) + 1}: a quoted field is never "
                         "closed (a \" opens it and the file ends first)",
                         hint='fix the quote in that line, or, if quotes are plain data in this '
                              'file, set [reader_params] quoting = "none"')
    return DataError(f"cannot read {path}: {exc}")


def _csv_chunks(path: Path, columns: Sequence[str], sep: str, encoding: str,
                quoting: int, text_columns: Sequence[str]) -> Iterator[Chunk]:
    reader = pd.read_csv(path, sep=sep, dtype={c: str for c in text_columns},
                         keep_default_na=False, na_values=[""],
                         chunksize=CHUNK_ROWS, encoding=encoding, low_memory=False,
                         on_bad_lines="warn", skip_blank_lines=False, quoting=quoting)
    next_line = 2  # the header is line 1
    with reader:
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                try:
                    frame = next(reader)
                except StopIteration:
                    return
            skipped = [(int(m.group(1)), f"expected {m.group(2)} fields, found {m.group(3)}")
                       for w in caught for m in _SKIPPED_RE.finditer(str(w.message))]
            skipped_lines = {n for n, _ in skipped}
            total = len(frame) + len(skipped_lines)
            candidates = np.arange(next_line, next_line + total, dtype=np.int64)
            lines = candidates[~np.isin(candidates, list(skipped_lines))][:len(frame)]
            next_line += total
            blank = frame.isna().all(axis=1).to_numpy()
            yield Chunk(frame.loc[~blank, list(columns)].reset_index(drop=True), lines[~blank],
                        sorted(skipped))


def iter_chunks(path: Path, columns: Sequence[str], *, sep: str, encoding: str,
                quoting: int = 0, text_columns: Sequence[str] | None = None
                ) -> Iterator[Chunk]:
    """``columns`` of ``path`` in chunks (see the module docstring). CSV: ``text_columns``
    (default: all of ``columns``) are text; parquet columns keep their stored types."""
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq

            start = 1
            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS,
                                                           columns=list(columns)):
                frame = batch.to_pandas()
                yield Chunk(frame, np.arange(start, start + len(frame), dtype=np.int64))
                start += len(frame)
            return
        yield from _csv_chunks(path, columns, sep, encoding, quoting,
                               columns if text_columns is None else text_columns)
    except UnicodeDecodeError:
        raise _encoding_error(path, encoding) from None
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc) from None
    except (PermissionError, *DECOMPRESS_ERRORS) as exc:
        raise cannot_read(path, exc) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    except SystemError as exc:  # pandas' C parser warned while a read error was pending
        pending = exc.__context__
        if not isinstance(pending, (OSError, *DECOMPRESS_ERRORS)):
            raise
        raise cannot_read(path, pending) from None
