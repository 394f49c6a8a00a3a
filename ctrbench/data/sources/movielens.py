"""MovieLens reader (GroupLens ml-100k and ml-1m), straight from the published zip archive.

The layout is detected from the archive's members (``ml-100k/u.data`` or ``ml-1m/ratings.dat``);
members are streamed through :mod:`zipfile` (nothing is extracted to disk). An extracted directory
works too. Files are latin-1 text; lines are parsed in chunks with vectorised pandas string
operations, and malformed lines (wrong field count, non-numeric id/rating/time, a rating that is
not finite in float32, a time outside years 1..9999) are counted in a :class:`ReadReport` with
their line numbers and skipped (``strict`` raises at the first). An empty or corrupt member is
one :class:`~ctrbench.errors.DataError` naming it.

- interactions: ``u.data`` (``user<TAB>item<TAB>rating<TAB>unix``) or ``ratings.dat``
  (``UserID::MovieID::Rating::Timestamp``); ``line`` is the 0-based line in that file.
- items: ``u.item`` (``id|title|release|video|url|`` + 19 genre flags) or ``movies.dat``
  (``MovieID::Title::Genres``, ``|``-separated; the id is the first field, the genres the
  last, the title everything between, ``::`` included). Category = the first listed genre
  (for ml-100k the first flag set, in the order of ``u.genre``); items without genre:
  ``<unknown>``.
- users: ``u.user`` (``id|age|gender|occupation|zip``) or ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip``) -> columns gender, age, occupation, zip (first 3
  characters), all strings. In ml-1m, age and occupation are the published codes.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from ctrbench.cards import DatasetCard, check_keys
from ctrbench.data.canonical import MAX_TS, MIN_TS, RATING_MAX, CanonicalTables, ReadReport
from ctrbench.data.features import UNKNOWN_CATEGORY
from ctrbench.data.sources import (
    DECOMPRESS_ERRORS,
    RATING_NOT_FINITE,
    READERS,
    cannot_read,
)
from ctrbench.errors import DataError

log = logging.getLogger(__name__)

ENCODING = "latin-1"
CHUNK_LINES = 200_000

# ml-100k u.genre, in flag order
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)


@dataclass(frozen=True)
class Layout:
    """Where a MovieLens variant keeps its three files, and how they are delimited."""

    name: str
    ratings: str
    items: str
    users: str
    sep: str  # of the ratings file
    meta_sep: str  # of the items and users files


ML_100K = Layout("ml-100k", "u.data", "u.item", "u.user", "\t", "|")
ML_1M = Layout("ml-1m", "ratings.dat", "movies.dat", "users.dat", "::", "::")


# --------------------------------------------------------------------------- archive access
class _Archive:
    """Members of a zip file (or of an extracted directory) by base name."""

    def __init__(self, path: Path, wanted: Sequence[str] = ()) -> None:
        self.path = path
        self.wanted = tuple(wanted)
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.members = {p.name: str(p) for p in sorted(path.rglob("*")) if p.is_file()}
            self._prefer(wanted, {f"{path.name}/{p.relative_to(path).as_posix()}": str(p)
                                  for p in sorted(path.rglob("*")) if p.is_file()})
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except PermissionError as exc:
                raise cannot_read(path, exc) from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{path.name} is not a readable zip archive: {exc}",
                                hint="delete it from the cache and run `ctrbench download` "
                                     "again") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
            self.members = {Path(n).name: n for n in names}
            self._prefer(wanted, {n: n for n in names})

    def _prefer(self, wanted: Sequence[str], found: Mapping[str, str]) -> None:
        """Where a base name occurs more than once (a folder holding ml-100k/ and ml-1m/, a
        backup copy), the file at the card's member path (``ml-1m/ratings.dat``) wins."""
        for member in wanted:
            for rel, where in found.items():
                if ("/" + rel).endswith("/" + member.strip("/")):
                    self.members[Path(member).name] = where

    @property
    def is_zip(self) -> bool:
        return self._zip is not None

    def layout(self) -> Layout:
        """The card's layout (its members name the ratings file) first, else the first found."""
        wanted = {Path(m).name for m in self.wanted}
        for layout in sorted((ML_100K, ML_1M), key=lambda lay: lay.ratings not in wanted):
            if layout.ratings in self.members:
                missing = [m for m in (layout.items, layout.users) if m not in self.members]
                if missing:
                    raise DataError(f"{self.path.name}: {layout.name} layout without "
                                    f"{', '.join(missing)}")
                return layout
        raise DataError(
            f"{self.path.name}: neither an ml-100k (u.data) nor an ml-1m (ratings.dat) archive",
            hint=f"members found: {', '.join(sorted(self.members)[:12]) or '(none)'}",
        )

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        member = self.members[name]
        if self._zip is None:
            with open(member, "rb") as fh:
                yield fh
        else:
            with self._zip.open(member) as fh:
                yield fh

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


# --------------------------------------------------------------------------- chunked parsing
def _line_chunks(stream: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
    """(0-based index of the first line, lines) in chunks of CHUNK_LINES."""
    text = io.TextIOWrapper(stream, encoding=ENCODING, newline=None)
    start = 0
    while lines := list(itertools.islice(text, CHUNK_LINES)):
        yield start, lines
        start += len(lines)


FIELD_SEP = "\x1f"  # ASCII unit separator: the parser's one-character delimiter
END_MARK = "\x1e"  # appended to every line: the column it lands in is the line's field count
SEP_MASK = "\x1d"  # a separator inside a free-text field (a title), restored after parsing
EXTRA_FIELDS = 8  # surplus columns that let the parser keep lines with too many fields
INT64_RANGE = (-(2.0**63), float(np.nextafter(2.0**63, 0)))  # floats that fit in an int64
FLOAT64_MAX = float(np.finfo(np.float64).max)
# column -> (lowest, highest, reason) of the MovieLens ratings file
RATING_RANGES = {"ts": (MIN_TS, MAX_TS, "time out of range"),
                 "rating": (-RATING_MAX, RATING_MAX, RATING_NOT_FINITE)}


def _mask_middle(line: str, sep: str, k: int, at: int) -> str:
    """``line`` with field ``at`` taken as free text: the first ``at`` and the last
    ``k - 1 - at`` separators split it (joined by FIELD_SEP), those inside field ``at`` are
    masked (ml-1m ``1::Star Wars:: Episode IV::Action``). A line with too few is left as is."""
    head = line.split(sep, at)
    if len(head) <= at:
        return line
    tail = head[at].rsplit(sep, k - 1 - at)
    if len(tail) < k - at:
        return line
    return FIELD_SEP.join([*head[:at], tail[0].replace(sep, SEP_MASK), *tail[1:]])


def _parse_with_marks(lines: Sequence[str], sep: str, names: Sequence[str],
                      text_columns: Sequence[str]) -> pd.DataFrame | None:
    """pandas' C parser over the chunk; ``None`` if it dropped a line (far too many fields)."""
    text = "".join(lines)
    if not text.endswith("\n"):
        text += "\n"
    text = text.replace(sep, FIELD_SEP).replace("\n", FIELD_SEP + END_MARK + "\n")
    frame = pd.read_csv(
        io.StringIO(text), sep=FIELD_SEP, header=None, engine="c", quoting=csv.QUOTE_NONE,
        names=range(len(names) + EXTRA_FIELDS + 1), skip_blank_lines=False, low_memory=False,
        dtype={i: str for i, n in enumerate(names) if n in text_columns},
        keep_default_na=False, na_values=[""], on_bad_lines="skip",
    )
    return frame if len(frame) == len(lines) else None


def parse_delimited(lines: Sequence[str], start: int, *, sep: str, names: Sequence[str],
                    integer: Sequence[str] = (), numeric: Sequence[str] = (),
                    ranges: Mapping[str, tuple[float, float, str]] | None = None,
                    free_text: str = "", report: ReadReport, strict: bool) -> pd.DataFrame:
    """Split ``lines`` on ``sep`` into columns ``names`` with pandas' C parser (no Python loop
    over lines unless the chunk has a line with more than ``EXTRA_FIELDS`` surplus fields).

    Lines with another field count, a non-numeric value in an ``integer``/``numeric`` column, an
    ``integer`` beyond int64, or a value outside ``ranges[col] = (low, high, reason)`` (inf and
    -inf included) are recorded in ``report`` (1-based line numbers) and dropped; blank lines
    are skipped.
    ``free_text``: a text column that may hold ``sep`` itself (the fields before it end at the
    first separators, those after it at the last ones).
    The result has a ``line`` column (0-based line number) and the ``names`` columns: text
    columns as str (NaN when empty), ``integer`` ones as int64 and ``numeric`` ones as float64.
    """
    report.lines += len(lines)
    k = len(names)
    if free_text:
        at = list(names).index(free_text)
        lines = [_mask_middle(line, sep, k, at) for line in lines]
    line_no = np.arange(start, start + len(lines), dtype=np.int64)
    text_columns = [n for n in names if n not in integer and n not in numeric]
    reason = np.full(len(lines), "", dtype=object)
    frame = _parse_with_marks(lines, sep, names, text_columns)
    if frame is None:  # rare: find the overlong lines, then parse the others
        overlong = np.array([line.count(sep) + 1 > k + EXTRA_FIELDS for line in lines])
        reason[overlong] = f"more than {k + EXTRA_FIELDS} fields"
        frame = _parse_with_marks([ln for ln, o in zip(lines, overlong) if not o], sep, names,
                                  text_columns)
        if frame is None:
            raise DataError(f"{report.file}: cannot split lines {start + 1}-"
                            f"{start + len(lines)} on {sep!r}")
        frame.index = np.flatnonzero(~overlong)
        frame = frame.reindex(range(len(lines)))
    marks = (frame == END_MARK).to_numpy()  # (N, k + EXTRA_FIELDS + 1)
    n_fields = marks.argmax(axis=1)
    blank = (n_fields == 1) & frame[0].isna().to_numpy() & (reason == "")
    wrong = (n_fields != k) & ~blank & (reason == "")
    reason[wrong] = [f"expected {k} fields, found {n}" for n in n_fields[wrong]]  # rare
    out = pd.DataFrame({"line": line_no})
    for i, col in enumerate(names):
        values = frame[i]
        if col in text_columns:
            if col == free_text:
                values = values.str.replace(SEP_MASK, sep, regex=False)
            out[col] = values.to_numpy(dtype=object, na_value=np.nan)
            continue
        as_num = pd.to_numeric(values.where(values != END_MARK), errors="coerce")
        number = as_num.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(number)
        default = ((*INT64_RANGE, f"{col} out of range") if col in integer
                   else (-FLOAT64_MAX, FLOAT64_MAX, f"{col} not finite"))
        low, high, why = (ranges or {}).get(col, default)
        with np.errstate(invalid="ignore"):
            outside = ~missing & ~((number >= low) & (number <= high))  # also +-inf
            if col in integer:
                missing |= ~outside & (number % 1 != 0)
        free = (reason == "") & ~blank
        reason[free & missing] = f"{col} is not a number"
        reason[free & outside] = why
        out[col] = number
    bad = reason != ""
    for idx in np.flatnonzero(bad):  # malformed lines only
        report.add_bad(int(line_no[idx]) + 1, str(reason[idx]), strict)
    out = out[~bad & ~blank].reset_index(drop=True)
    for col in integer:
        out[col] = out[col].astype(np.int64)
    return out


def _read_file(archive: _Archive, member: str, *, sep: str, names: Sequence[str],
               integer: Sequence[str] = (), numeric: Sequence[str] = (),
               ranges: Mapping[str, tuple[float, float, str]] | None = None,
               free_text: str = "", strict: bool) -> tuple[pd.DataFrame, ReadReport]:
    """One member parsed (see :func:`parse_delimited`); DataError when it is corrupt or holds
    no line but blank ones."""
    report = ReadReport(file=member)
    frames = []
    where = (f"{archive.path.name}: {archive.members[member]}" if archive.is_zip
             else archive.members[member])
    try:
        with archive.open(member) as stream:
            for start, lines in _line_chunks(stream):
                frames.append(parse_delimited(lines, start, sep=sep, names=names,
                                              integer=integer, numeric=numeric, ranges=ranges,
                                              free_text=free_text, report=report,
                                              strict=strict))
    except PermissionError as exc:
        raise cannot_read(where, exc) from None
    except (*DECOMPRESS_ERRORS, NotImplementedError, OSError) as exc:
        if not archive.is_zip:  # a file of an extracted directory: OSError is not corruption
            raise
        raise DataError(f"{where} is corrupt ({exc})",
                        hint="delete the archive from the cache and run `ctrbench download` "
                             "again") from None
    if report.bad == 0 and sum(len(f) for f in frames) == 0:
        raise DataError(f"{where} is empty",
                        hint="is it the GroupLens release? delete it and run `ctrbench "
                             "download` again")
    return pd.concat(frames, ignore_index=True), report


# --------------------------------------------------------------------------- the three files
def _ratings(archive: _Archive, layout: Layout, strict: bool
             ) -> tuple[pd.DataFrame, ReadReport]:
    df, report = _read_file(archive, layout.ratings, sep=layout.sep,
                            names=("user", "item", "rating", "ts"),
                            integer=("user", "item", "ts"), numeric=("rating",),
                            ranges=RATING_RANGES, strict=strict)
    interactions = pd.DataFrame({
        "user": df["user"].astype(str),
        "item": df["item"].astype(str),
        "ts": df["ts"].astype(np.int64),
        "rating": df["rating"].astype(np.float32),
        "line": df["line"].astype(np.int64),
    })
    return interactions, report


def _items(archive: _Archive, layout: Layout, strict: bool) -> tuple[pd.DataFrame, ReadReport]:
    if layout is ML_100K:
        flags = tuple(f"g{i}" for i in range(len(ML100K_GENRES)))
        df, report = _read_file(archive, layout.items, sep=layout.meta_sep,
                                names=("item", "title", "release", "video", "url", *flags),
                                integer=("item", *flags), strict=strict)
        matrix = df[list(flags)].to_numpy(dtype=np.int64) > 0  # (N, 19)
        genre = np.asarray(ML100K_GENRES, dtype=object)[matrix.argmax(axis=1)]
        category = np.where(matrix.any(axis=1), genre, UNKNOWN_CATEGORY)
    else:
        df, report = _read_file(archive, layout.items, sep=layout.meta_sep,
                                names=("item", "title", "genres"), integer=("item",),
                                free_text="title", strict=strict)
        first = df["genres"].str.split("|", regex=False).str[0].str.strip()
        category = first.where(first.str.len() > 0, UNKNOWN_CATEGORY).to_numpy(dtype=object)
    items = pd.DataFrame({"item": df["item"].astype(str), "category": category.astype(str)})
    return items.drop_duplicates("item", keep="first"), report


def _users(archive: _Archive, layout: Layout, strict: bool) -> tuple[pd.DataFrame, ReadReport]:
    names = (("user", "age", "gender", "occupation", "zip") if layout is ML_100K
             else ("user", "gender", "age", "occupation", "zip"))
    df, report = _read_file(archive, layout.users, sep=layout.meta_sep, names=names,
                            integer=("user",), strict=strict)
    users = pd.DataFrame({
        "user": df["user"].astype(str),
        "gender": df["gender"].str.strip().astype(str),
        "age": df["age"].str.strip().astype(str),
        "occupation": df["occupation"].str.strip().astype(str),
        "zip": df["zip"].str.strip().str[:3].astype(str),
    })
    return users.drop_duplicates("user", keep="first"), report


def read_movielens(archive_path: Path, *, strict: bool = False,
                   members: Sequence[str] = ()) -> CanonicalTables:
    """Canonical tables of an ml-100k or ml-1m archive (zip file or extracted directory).

    ``members``: files the archive must contain (the card's ``members``, compared by name).
    """
    archive = _Archive(Path(archive_path), members)
    try:
        missing = [m for m in members if Path(m).name not in archive.members]
        if missing:
            raise DataError(f"{Path(archive_path).name} lacks {', '.join(missing)}",
                            hint="is it the archive the card names? run `ctrbench download`")
        layout = archive.layout()
        interactions, ratings_report = _ratings(archive, layout, strict)
        items, items_report = _items(archive, layout, strict)
        users, users_report = _users(archive, layout, strict)
    finally:
        archive.close()

    rated = pd.DataFrame({"item": pd.unique(interactions["item"])})
    items = rated.merge(items, on="item", how="left")
    no_meta = int(items["category"].isna().sum())
    if no_meta:
        log.warning("%s: %d rated items have no line in %s; category %s", archive_path.name,
                    no_meta, layout.items, UNKNOWN_CATEGORY)
    items["category"] = items["category"].fillna(UNKNOWN_CATEGORY)
    users = users[users["user"].isin(pd.unique(interactions["user"]))].reset_index(drop=True)
    reports = [ratings_report, items_report, users_report]
    for report in reports:
        log.info("%s", report.summary())
    return CanonicalTables(interactions=interactions, items=items, users=users, reports=reports)


@READERS.register("movielens")
def read(card: DatasetCard, files: Mapping[str, Path], *, strict: bool = False
         ) -> CanonicalTables:
    """The registered reader: the card's ``archive`` source (reader_params: none)."""
    check_keys(f"dataset card {card.name!r} [reader_params]", card.reader_params, ())
    if "archive" not in files:
        raise DataError(f"dataset card {card.name!r}: the movielens reader needs a source with "
                        f"role 'archive' (the GroupLens zip); got {sorted(files)}")
    source = card.source("archive")
    return read_movielens(files["archive"], strict=strict,
                          members=source.members if source is not None else ())
