"""Your own interaction log as a dataset: CSV (optionally compressed) or parquet tables.

A card with ``reader = "table"`` names the files as sources (``file`` may be a path relative to
the card's directory, used in place) and maps their columns in ``[reader_params]``:

- source ``interactions`` (required): one row per event, columns ``user_col``, ``item_col``,
  ``time_col`` and optionally ``rating_col``. Time is unix time (numbers; ``time_unit`` "s" by
  default, or "ms", "us", "ns") or a date/time string parsed by pandas (``time_format``: a strftime
  format, also for integer columns; default: inferred once per file, day first or month first,
  whichever reads more of the first dates; when both read them alike, the first date of the
  file that only one reads decides, a warning when none does; time zones are converted to
  UTC, naive times are taken as UTC). Integers of which more than half in the first chunk are
  valid YYYYMMDD dates (20140523; as unix seconds, 1970) are read as dates, with a warning,
  unless ``time_unit`` is set; a number anywhere in the file that is no such date is then a
  DataError naming its line. Read as seconds that the card does not declare, a file holding
  both a YYYYMMDD date and a time from 2001 on (>= 10^9 s) is a DataError naming both lines.
- source ``items`` (optional): ``item_col`` and ``category_col``; every other column is kept as a
  categorical item attribute. Without an items file, ``category_col`` is a column of the
  interactions table (an item's first category is used; a name found in neither is a
  CardError); without ``category_col``, every category is ``<unknown>``.
- source ``users`` (optional): ``user_col`` and any categorical columns (e.g. gender, age group),
  each usable as a user field in the card's ``[fields] user = [...]``.
- ``sep`` (CSV delimiter; default "," or tab for ``.tsv``), ``encoding`` (default utf-8) and
  ``quoting`` ("minimal", the default: ``"`` quotes fields; "none": quotes are plain data).

Files are read in chunks (:mod:`ctrbench.data.sources.table_chunks`), so memory is bounded by
the kept columns. Malformed rows are counted in the :class:`ReadReport` with their file line
(the CSV header is line 1; for parquet the 1-based row) and skipped, or raised with ``strict``:
a missing user/item/time, a non-numeric rating or one that is not finite in float32 (inf, 1e39:
"rating not finite"; an empty rating is kept as NaN), more fields than the header, and a time that
cannot be read: numeric times (the column is numeric when at least half of the first chunk's
values are numbers) that are not numbers, not finite, or outside years 1..9999; date strings
pandas cannot parse. ``line`` in the interactions table is the 0-based data row (file line
minus 2 for CSV).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.cards import DatasetCard, check_keys
from ctrbench.data.canonical import (
    CanonicalTables,
    ReadReport,
    rating_overflows,
)
from ctrbench.data.features import UNKNOWN_CATEGORY
from ctrbench.data.sources import (
    DECOMPRESS_ERRORS,
    RATING_NOT_FINITE,
    READERS,
    cannot_read,
)
from ctrbench.data.sources.table_chunks import Chunk, encoding_hint, is_parquet
from ctrbench.data.sources.table_chunks import iter_chunks as _iter_chunks
from ctrbench.data.sources.table_times import TIME_UNITS, TimeColumn, as_numbers, clean_text
from ctrbench.errors import CardError, DataError

log = logging.getLogger(__name__)

MISSING_VALUE = "<missing>"  # a users/items attribute left empty in the user's table
PARAM_KEYS = ("user_col", "item_col", "time_col", "rating_col", "category_col", "time_unit",
              "time_format", "sep", "encoding", "quoting")
REQUIRED_KEYS = ("user_col", "item_col", "time_col")
QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}


@dataclass(frozen=True)
class TableParams:
    """``[reader_params]`` of a table card, validated."""

    user_col: str
    item_col: str
    time_col: str
    rating_col: str = ""
    category_col: str = ""
    time_unit: str = ""  # "" = "s", not declared: YYYYMMDD integers are then read as dates
    time_format: str = ""
    sep: str = ""
    encoding: str = "utf-8"
    quoting: str = "minimal"

    @classmethod
    def from_card(cls, card: DatasetCard) -> TableParams:
        where = f"dataset card {card.name!r} [reader_params]"
        check_keys(where, card.reader_params, PARAM_KEYS)
        missing = [k for k in REQUIRED_KEYS if not card.reader_params.get(k)]
        if missing:
            raise CardError(f"{where}: the table reader needs {', '.join(missing)}",
                            hint='e.g. user_col = "user_id", item_col = "item_id", '
                                 'time_col = "timestamp"')
        params = cls(**{k: str(v) for k, v in card.reader_params.items()})
        if params.time_unit and params.time_unit not in TIME_UNITS:
            raise CardError(f"{where}: time_unit must be one of {', '.join(TIME_UNITS)}")
        if params.quoting not in QUOTING:
            raise CardError(f"{where}: quoting must be one of {', '.join(QUOTING)}")
        return params


# --------------------------------------------------------------------------- chunked reading
_is_parquet = is_parquet


def _sep(path: Path, params: TableParams) -> str:
    if params.sep:
        return params.sep
    return "\t" if ".tsv" in path.suffixes else ","


def table_columns(path: Path, params: TableParams) -> list[str]:
    """Column names of a CSV or parquet file (reads only the header / schema)."""
    try:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        header = pd.read_csv(path, sep=_sep(path, params), nrows=0, encoding=params.encoding,
                             quoting=QUOTING[params.quoting])
        return [str(c) for c in header.columns]
    except UnicodeDecodeError:
        raise DataError(f"{path.name}: line 1 (the header): not valid {params.encoding} text",
                        hint=encoding_hint(path)) from None
    except (PermissionError, *DECOMPRESS_ERRORS) as exc:
        raise cannot_read(path, exc) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the header of {path}: {exc}") from None
    except ImportError:
        raise DataError(f"{path.name}: reading parquet needs pyarrow",
                        hint="pip install 'ctrbench[parquet]'") from None


def require_columns(path: Path, role: str, needed: Mapping[str, str],
                    params: TableParams) -> list[str]:
    """Check that ``path`` has the columns ``needed`` (param name -> column); return all columns."""
    found = table_columns(path, params)
    missing = {param: col for param, col in needed.items() if col not in found}
    if missing:
        named = ", ".join(f"{col!r} (reader_params.{param})" for param, col in missing.items())
        hint = f"columns found: {', '.join(found) or '(none)'}"
        for sep in (";", "\t", "|", ","):  # one column holding them all: another delimiter
            if len(found) == 1 and all(c in found[0].split(sep) for c in needed.values()):
                hint += (f"; the file looks {sep!r}-separated: set [reader_params] "
                         f"sep = {json.dumps(sep)}")
                break
        raise CardError(f"{role} table {path.name}: missing column(s) {named}", hint=hint)
    return found


def iter_chunks(path: Path, columns: Sequence[str], params: TableParams,
                text_columns: Sequence[str] | None = None) -> Iterator[Chunk]:
    """``columns`` of ``path`` in chunks with their file lines (see ``table_chunks``)."""
    return _iter_chunks(path, columns, sep=_sep(path, params), encoding=params.encoding,
                        quoting=QUOTING[params.quoting], text_columns=text_columns)


def _report_bad(report: ReadReport, rows: list[tuple[int, str]], strict: bool) -> None:
    for line, reason in sorted(rows):  # in file order, so --strict names the first
        report.add_bad(line, reason, strict)


# --------------------------------------------------------------------------- the three tables
def read_interactions(path: Path, params: TableParams, *, strict: bool,
                      category_in_log: bool = False) -> tuple[pd.DataFrame, ReadReport]:
    """The interactions table (canonical columns) and its report; ``category_in_log``: the
    card's ``category_col`` must be a column of this file (there is no items table), a
    CardError names it when it is not."""
    needed = {"user_col": params.user_col, "item_col": params.item_col,
              "time_col": params.time_col}
    if params.rating_col:
        needed["rating_col"] = params.rating_col
    found = require_columns(path, "interactions", needed, params)
    category_here = bool(params.category_col) and params.category_col in found
    if category_in_log and params.category_col and not category_here:
        raise CardError(f"interactions table {path.name}: missing column "
                        f"{params.category_col!r} (reader_params.category_col), and there is "
                        "no items table to take it from",
                        hint=f"columns found: {', '.join(found)}; fix the name, add the items "
                             'table as a source with role = "items", or set category_col = "" '
                             "(every category <unknown>)")
    columns = list(dict.fromkeys([*needed.values(),
                                  *([params.category_col] if category_here else [])]))
    report = ReadReport(file=path.name)
    data_start = 1 if _is_parquet(path) else 2  # the first data row's line number
    frames, times = [], TimeColumn(params, path.name)
    text_columns = [c for c in columns if c not in (params.time_col, params.rating_col)]
    for chunk in iter_chunks(path, columns, params, text_columns):
        frame = chunk.frame
        report.lines += len(frame) + len(chunk.skipped)
        user, item = clean_text(frame[params.user_col]), clean_text(frame[params.item_col])
        raw_time = frame[params.time_col]
        time_present = (raw_time.notna() if pd.api.types.is_numeric_dtype(raw_time)
                        or pd.api.types.is_datetime64_any_dtype(raw_time)
                        else clean_text(raw_time).notna()).to_numpy()
        ts, unparseable, out_of_range = times.read(raw_time, time_present, chunk.lines)
        reason = np.full(len(frame), "", dtype=object)
        if params.rating_col:
            rating, not_number = as_numbers(frame[params.rating_col])
            reason[rating_overflows(rating.to_numpy())] = RATING_NOT_FINITE
            reason[not_number] = "rating is not a number"
        else:
            rating = pd.Series(np.nan, index=frame.index)
        reason[out_of_range] = "time out of range"
        reason[unparseable] = "unparseable time"
        reason[~time_present] = "missing time"
        reason[item.isna().to_numpy()] = "missing item"
        reason[user.isna().to_numpy()] = "missing user"
        bad = reason != ""
        _report_bad(report, [(int(chunk.lines[i]), str(reason[i])) for i in np.flatnonzero(bad)]
                    + chunk.skipped, strict)
        ok = ~bad
        out = pd.DataFrame({
            "user": user[ok].astype(str).to_numpy(dtype=object),
            "item": item[ok].astype(str).to_numpy(dtype=object),
            "ts": ts[ok].astype(np.int64),
            "rating": rating[ok].to_numpy(dtype=np.float32),
            "line": chunk.lines[ok] - data_start,
        })
        if category_here:
            out["category"] = clean_text(frame[params.category_col])[ok].to_numpy(dtype=object)
        times.keep(out, ok)
        frames.append(out)
    times.finish()
    if not frames:
        raise DataError(f"{path.name}: the interactions table has no rows")
    return pd.concat(frames, ignore_index=True), report


def _read_attribute_table(path: Path, role: str, key_param: str, key_col: str,
                          extra_needed: Mapping[str, str], params: TableParams, *, strict: bool,
                          reserved: Sequence[str]) -> tuple[pd.DataFrame, ReadReport]:
    """A users or items table: the key column renamed to ``role``'s key, others as strings."""
    found = require_columns(path, role, {key_param: key_col, **extra_needed}, params)
    clash = [c for c in found if c in reserved and c not in (key_col, *extra_needed.values())]
    if clash:
        raise CardError(f"{role} table {path.name}: column(s) {', '.join(map(repr, clash))} "
                        f"would clash with the canonical {role} columns",
                        hint="rename them in the file")
    report = ReadReport(file=path.name)
    frames = []
    for piece in iter_chunks(path, found, params):
        chunk = piece.frame
        report.lines += len(chunk) + len(piece.skipped)
        key = clean_text(chunk[key_col])
        _report_bad(report, [(int(piece.lines[i]), f"missing {key_col}")
                             for i in np.flatnonzero(key.isna().to_numpy())] + piece.skipped,
                    strict)
        ok = key.notna().to_numpy()
        frame = pd.DataFrame({"key": key[ok].astype(str).to_numpy(dtype=object)})
        for col in found:
            if col != key_col:
                frame[col] = clean_text(chunk[col])[ok].fillna(MISSING_VALUE).astype(str).to_numpy(
                    dtype=object)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"key": []})
    return table.drop_duplicates("key", keep="first"), report


def _items_table(inter: pd.DataFrame, files: Mapping[str, Path], params: TableParams,
                 strict: bool, reports: list[ReadReport]) -> pd.DataFrame:
    items = pd.DataFrame({"item": pd.unique(inter["item"])})
    if "items" in files:
        if not params.category_col:
            raise CardError("an items table needs reader_params.category_col")
        table, report = _read_attribute_table(
            Path(files["items"]), "items", "item_col", params.item_col,
            {"category_col": params.category_col}, params, strict=strict,
            reserved=("item", "category"))
        reports.append(report)
        table = table.rename(columns={"key": "item", params.category_col: "category"})
        if len(items) and not items["item"].isin(table["item"]).any():
            table_ids = table["item"][:2].tolist()
            raise DataError(
                f"no item of the interactions is in the items table ({len(table):,} rows"
                + (f", ids like {table_ids}" if table_ids else "")
                + f"; the interactions' ids look like {items['item'][:2].tolist()})",
                hint="check the items table's file and its item id column "
                     "(every category would be <unknown>)")
        items = items.merge(table, on="item", how="left")
    elif "category" in inter.columns:
        first = inter.dropna(subset=["category"]).drop_duplicates("item", keep="first")
        items = items.merge(first[["item", "category"]], on="item", how="left")
    else:
        if not params.category_col:
            log.warning("no items table and no category column: every category is %s",
                        UNKNOWN_CATEGORY)
        items["category"] = UNKNOWN_CATEGORY
    items["category"] = items["category"].fillna(UNKNOWN_CATEGORY).replace(
        MISSING_VALUE, UNKNOWN_CATEGORY)
    return items.fillna(MISSING_VALUE)


def read_table(files: Mapping[str, Path], params: TableParams, *, strict: bool = False
               ) -> CanonicalTables:
    """Canonical tables from the ``interactions`` (+ ``items``, ``users``) files."""
    if "interactions" not in files:
        raise CardError("the table reader needs a source with role 'interactions'",
                        hint=f"sources given: {', '.join(sorted(files)) or '(none)'}")
    inter, report = read_interactions(Path(files["interactions"]), params, strict=strict,
                                      category_in_log="items" not in files)
    reports = [report]
    items = _items_table(inter, files, params, strict, reports)
    inter = inter.drop(columns=["category"], errors="ignore")
    users = None
    if "users" in files:
        table, users_report = _read_attribute_table(Path(files["users"]), "users", "user_col",
                                                    params.user_col, {}, params, strict=strict,
                                                    reserved=("user",))
        reports.append(users_report)
        users = table.rename(columns={"key": "user"})
        users = users[users["user"].isin(pd.unique(inter["user"]))].reset_index(drop=True)
    for r in reports:
        log.info("%s", r.summary())
    return CanonicalTables(interactions=inter, items=items, users=users, reports=reports)


@READERS.register("table")
def read(card: DatasetCard, files: Mapping[str, Path], *, strict: bool = False
         ) -> CanonicalTables:
    """The registered reader: the card's sources by role, columns from ``[reader_params]``."""
    return read_table(files, TableParams.from_card(card), strict=strict)
