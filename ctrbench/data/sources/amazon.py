"""Amazon review data (McAuley et al.; releases 2014, 2018 and 2023) -> canonical tables.

Reviews: JSON lines, gzipped or plain (a file not named ``.gz`` is told by its first bytes: the
2023 release's ``.jsonl``, a gunzipped copy; another compression is one error naming it). The
release is detected from the first line that is not blank (``reader_params.reviews_format`` may
name it instead):

- ``2014`` and ``2018``: ``reviewerID`` (user), ``asin`` (item), ``unixReviewTime`` (unix
  seconds; whole days), ``overall`` (rating 1-5); 2014 also has ``helpful``, 2018 ``vote``,
  ``verified`` and ``style`` (not used);
- ``2023``: ``user_id`` (user), ``parent_asin`` (item: the product, all its variants together;
  the 2023 meta is keyed by it), ``timestamp`` (unix **milliseconds**, stored as seconds; a
  value below 1e11, i.e. a time in seconds, is a malformed line, not a date in 1970),
  ``rating``.

Meta: see :mod:`ctrbench.data.sources.amazon_meta` (formats, detection, category rule per
format, the fast path). Both files are streamed line by line. Review ids are factorised as they
are read and kept in compact typed arrays (a few bytes per review), so Books (8.9M reviews) fits
in bounded memory; meta lines are only parsed for items that appear in the reviews.

A review line is malformed (counted with its line number and skipped, or raised with
``strict``) when it is not a JSON object, lacks a key field, has a non-numeric rating or one that
is not finite in float32 (NaN, inf, 1e39: "rating not finite"; a missing rating is kept as NaN),
a time that is not a finite number in years 1..9999 (``ctrbench.data.canonical.MIN_TS``/
``MAX_TS``), or nests too deep for the JSON parser. A UTF-8 BOM before the first line is
ignored, in reviews and meta.

Crawl-time snapshot fields (2014: ``salesRank``, ``related``, ``helpful``) are dropped unless
``keep_snapshot_fields`` (read for the 2014 release only): they describe the item when the data
was crawled, after every review, so using them as features leaks the future.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import zlib
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.cards import DatasetCard, check_keys
from ctrbench.data.canonical import MAX_TS, MIN_TS, RATING_MAX, CanonicalTables, ReadReport
from ctrbench.data.features import UNKNOWN_CATEGORY
from ctrbench.data.sources import (
    RATING_NOT_FINITE,
    READERS,
    UTF8_BOM,
    cannot_read,
)
from ctrbench.data.sources.amazon_meta import (  # noqa: F401 (re-exported)
    CATEGORY_RULES,
    META_FORMATS,
    UndecidedFormat,
    detect_meta_format,
    meta_entry,
    parse_meta_line,
    pick_category,
    sales_rank_2014,
)
from ctrbench.errors import CardError, DataError
from ctrbench.progress import message, progress

READER_PARAM_KEYS = ("category_rule", "keep_snapshot_fields", "reviews_format", "meta_format")
REVIEW_FORMATS = ("2014", "2018", "2023")
# release -> (user, item, time, rating) keys and the time's units per second
REVIEW_KEYS = {"2014": ("reviewerID", "asin", "unixReviewTime", "overall", 1),
               "2018": ("reviewerID", "asin", "unixReviewTime", "overall", 1),
               "2023": ("user_id", "parent_asin", "timestamp", "rating", 1000)}
_JSON = json.JSONDecoder()
# after this many meta lines, stop looking item keys up first if most lines were wanted
PRECHECK_SAMPLE = 2048
GZIP_MAGIC = b"\x1f\x8b"
# a 2023 timestamp (ms) below this many seconds (1973-03-03) is a time in seconds: Amazon
# reviews start in the 1990s, while seconds of any year after 1973 read as ms fall below it
MS_BEFORE_1973 = 100_000_000


# --------------------------------------------------------------------------- streaming
# other compressions a user may have recompressed a file with: named, not read as text
OTHER_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
               b"PK\x03\x04": "zip"}


def _is_gzip(path: Path) -> bool:
    """Whether to read the file as gzip: named ``.gz`` (a ``.gz`` that is not gzip stays an
    error: a damaged or mislabelled download) or starting with the gzip magic bytes; else it is
    read as plain text. DataError for a file compressed otherwise."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, kind in OTHER_MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"{path} is a {kind} file: the amazon reader reads gzip or plain "
                            "JSON lines", hint="decompress it (or recompress it with gzip)")
    return head.startswith(GZIP_MAGIC) or path.name.endswith(".gz")


def _cr_only(head: bytes) -> bool:
    """Whether a file starting with ``head`` ends its lines with a bare ``\\r`` (classic Mac):
    a ``\\r`` and no ``\\n`` (a raw CR cannot occur inside a JSON or Python string; a
    ``\\r\\n`` cut at the buffer's end is still split right)."""
    return b"\r" in head and b"\n" not in head


def _universal_lines(fh: io.BufferedReader, size: int = 1 << 20) -> Iterator[bytes]:
    """The lines of ``fh`` ended by ``\\n``, ``\\r\\n`` or ``\\r`` (ends kept), split a chunk
    at a time by :meth:`bytes.splitlines`; the last piece of each chunk waits for the next."""
    rest = b""
    while chunk := fh.read(size):
        lines = (rest + chunk).splitlines(keepends=True)
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _gzip_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(0-based line number, raw line) of a gzip file, or of a plain JSON-lines file (the 2023
    release's ``.jsonl``, a gunzipped copy: told by its first bytes), a leading UTF-8 BOM
    removed; lines end with ``\\n``, ``\\r\\n`` or (told by the first buffered bytes) a bare
    ``\\r``; corrupt/truncated gzip or no permission -> DataError."""
    step = 1 << 16
    try:
        # the outer buffer makes line iteration C-level (GzipFile.readline is Python)
        raw = gzip.GzipFile(path, "rb") if _is_gzip(path) else open(path, "rb")
        with io.BufferedReader(raw, 1 << 20) as fh, \
                progress(f"reading {path.name}", unit="lines") as bar:
            line_no = -1
            lines = _universal_lines(fh) if _cr_only(fh.peek()) else fh  # else C-level
            if (first := next(lines, b"")).startswith(UTF8_BOM):
                first = first[len(UTF8_BOM):]
            for line_no, line in enumerate(itertools.chain((first,) if first else (), lines)):
                if line_no % step == step - 1:
                    bar.update(step)
                yield line_no, line
            bar.done += (line_no + 1) % step  # counted, shown once by close()
    except FileNotFoundError:
        raise DataError(f"raw file not found: {path}") from None
    except PermissionError as exc:
        raise cannot_read(path, exc) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is truncated or not a valid gzip file ({exc})",
                        hint="delete it and download again (`ctrbench download NAME`)") from None


# --------------------------------------------------------------------------- reviews
def detect_reviews_format(raw: bytes) -> str:
    """``2014`` (also the 2018 layout: same keys) or ``2023`` from one review line."""
    try:
        record = _JSON.decode(raw.decode("utf-8").strip())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("the first review line is not JSON") from None
    if isinstance(record, dict) and "user_id" in record:
        return "2023"
    if isinstance(record, dict) and "reviewerID" in record:
        return "2018" if ("verified" in record or "vote" in record or "style" in record) \
            else "2014"
    raise ValueError("the first review line has neither reviewerID (2014, 2018) nor user_id "
                     "(2023)")


def _parse_review(raw: bytes, fmt: str = "2014") -> tuple[str, str, int, float, dict]:
    """``(user, item, unix seconds, rating, record)`` of one review line; ValueError says why
    not."""
    user_key, item_key_, time_key, rating_key, per_second = REVIEW_KEYS[fmt]
    try:
        record = _JSON.decode(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("invalid JSON") from None
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key in (user_key, item_key_, time_key):
        if key not in record:
            raise ValueError(f"missing field {key!r}")
    user, item, ts = record[user_key], record[item_key_], record[time_key]
    if not isinstance(user, str) or not isinstance(item, str) or not user or not item:
        raise ValueError(f"{user_key}/{item_key_} is not a non-empty string")
    if isinstance(ts, (bool, list, dict)) or ts is None:
        raise ValueError(f"non-numeric {time_key}")
    try:
        seconds = float(ts) / per_second
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"non-numeric {time_key}") from None
    if not (MIN_TS <= seconds <= MAX_TS):  # also catches NaN and inf
        raise ValueError(f"{time_key} out of range ({str(ts)[:24]})")
    if per_second != 1 and 0 <= seconds < MS_BEFORE_1973:  # 1.6e9 read as ms: January 1970
        raise ValueError(f"{time_key} {str(ts)[:24]} looks like seconds: the 2023 release "
                         "gives milliseconds")
    seconds = int(ts) // per_second if isinstance(ts, int) else int(seconds)
    rating = record.get(rating_key)
    if rating is None:  # no rating: kept, NaN
        return user, item, seconds, float("nan"), record
    try:
        rating = float(rating)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"non-numeric {rating_key}") from None
    if not abs(rating) <= RATING_MAX:  # NaN, inf, or inf once stored as float32
        raise ValueError(RATING_NOT_FINITE)
    return user, item, seconds, rating, record


def _helpful(value: object) -> tuple[float, float]:
    """``helpful = [yes, total]`` as floats; NaN when absent or malformed."""
    try:
        return float(value[0]), float(value[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return float("nan"), float("nan")


def _read_reviews(path: Path, strict: bool, keep_snapshot: bool, fmt: str | None = None):
    """(interactions frame, item index, report, detected format)."""
    report = ReadReport(file=path.name)
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    user_codes, item_codes = array("i"), array("i")
    times, lines = array("q"), array("q")
    ratings = array("f")
    helpful_yes, helpful_total = array("f"), array("f")
    for line_no, raw in _gzip_lines(path):
        report.lines += 1
        if not raw.strip():
            continue
        if fmt is None:
            try:
                fmt = detect_reviews_format(raw)
            except ValueError as exc:
                report.add_bad(line_no + 1, str(exc), strict)
                continue
        try:
            user, item, ts, rating, record = _parse_review(raw, fmt)
        except ValueError as exc:
            report.add_bad(line_no + 1, str(exc), strict)
            continue
        user_codes.append(users.setdefault(user, len(users)))
        item_codes.append(items.setdefault(item, len(items)))
        times.append(ts)
        lines.append(line_no)
        ratings.append(rating)
        if keep_snapshot:
            yes, total = _helpful(record.get("helpful"))
            helpful_yes.append(yes)
            helpful_total.append(total)
    user_names = np.array(list(users), dtype=object)
    item_names = np.array(list(items), dtype=object)
    columns = {
        "user": user_names[np.frombuffer(user_codes, dtype=np.int32)],
        "item": item_names[np.frombuffer(item_codes, dtype=np.int32)],
        "ts": np.frombuffer(times, dtype=np.int64),
        "rating": np.frombuffer(ratings, dtype=np.float32),
        "line": np.frombuffer(lines, dtype=np.int64),
    }
    if keep_snapshot:
        columns["helpful_yes"] = np.frombuffer(helpful_yes, dtype=np.float32)
        columns["helpful_total"] = np.frombuffer(helpful_total, dtype=np.float32)
    return pd.DataFrame(columns), items, report, fmt or "2014"


# --------------------------------------------------------------------------- meta
def _read_meta(path: Path, wanted: Mapping[str, int], rule: str, strict: bool,
               keep_snapshot: bool, fmt: str | None = None):
    """(categories, sales ranks, report, format) of the items in ``wanted``; lines of other
    items are skipped unparsed."""
    report = ReadReport(file=path.name)
    categories: dict[str, str] = {}
    sales_rank: dict[str, float] = {}
    precheck = True
    for line_no, raw in _gzip_lines(path):
        report.lines += 1
        if not raw.strip():
            continue
        line_fmt = fmt
        if fmt is None:
            try:
                fmt = line_fmt = detect_meta_format(raw)
            except UndecidedFormat:  # e.g. a 2018 line without category: read it, look on
                line_fmt = "2018"
            except ValueError as exc:
                report.add_bad(line_no + 1, str(exc), strict)
                continue
        if report.lines == PRECHECK_SAMPLE:  # most lines wanted: parse first, skip no key
            precheck = len(categories) < PRECHECK_SAMPLE // 2
        try:  # None: an item nobody reviewed, skipped without parsing when certain
            entry = meta_entry(raw, line_fmt, rule, wanted, precheck)
            if entry is not None and keep_snapshot and line_fmt == "2014":
                sales_rank[entry[0]] = sales_rank_2014(raw.decode("utf-8"))
        except ValueError as exc:
            report.add_bad(line_no + 1, str(exc), strict)
            continue
        if entry is not None:
            categories.setdefault(*entry)  # a repeated meta line: the first wins
    return categories, sales_rank, report, fmt


def read_amazon(reviews: Path, meta: Path | None, *, category_rule: str, strict: bool,
                keep_snapshot_fields: bool = False, reviews_format: str | None = None,
                meta_format: str | None = None) -> CanonicalTables:
    """Stream the reviews (and meta) files into canonical tables.

    ``items`` holds every reviewed item with its category under ``category_rule`` (see
    :mod:`~ctrbench.data.sources.amazon_meta`; ``<unknown>`` without meta); with
    ``keep_snapshot_fields`` (2014 files) it also holds ``sales_rank`` and the interactions hold
    ``helpful_yes``/``helpful_total``. ``formats`` of the result names the detected releases.
    """
    if category_rule not in CATEGORY_RULES:
        raise CardError(f"unknown category_rule {category_rule!r}",
                        hint=f"one of: {', '.join(CATEGORY_RULES)}")
    reviews = Path(reviews)
    interactions, item_index, review_report, review_fmt = _read_reviews(
        reviews, strict, keep_snapshot_fields, reviews_format)
    review_report.format = f"amazon {review_fmt}"
    reports = [review_report]
    categories: dict[str, str] = {}
    sales_rank: dict[str, float] = {}
    if meta is not None:
        categories, sales_rank, meta_report, meta_fmt = _read_meta(
            Path(meta), item_index, category_rule, strict, keep_snapshot_fields, meta_format)
        meta_report.format = f"amazon {meta_fmt}" if meta_fmt else ""
        reports.append(meta_report)
        if missing := len(item_index) - len(categories):  # every wanted line has an entry
            message(f"warning: {missing:,} of {len(item_index):,} reviewed items have no line in "
                    f"{Path(meta).name}{' that could be read' if meta_report.bad else ''}: "
                    f"category {UNKNOWN_CATEGORY} (is it the meta file of these reviews?)")
    names = list(item_index)
    items = pd.DataFrame({
        "item": np.array(names, dtype=object),
        "category": np.array([categories.get(n, UNKNOWN_CATEGORY) for n in names], dtype=object),
    })
    if keep_snapshot_fields:
        items["sales_rank"] = np.array([sales_rank.get(n, np.nan) for n in names], np.float64)
    return CanonicalTables(interactions=interactions, items=items, users=None, reports=reports)


def _format_param(card: DatasetCard, key: str, allowed: tuple[str, ...]) -> str | None:
    value = card.reader_params.get(key)
    if value is None:
        return None
    if str(value) not in allowed:
        raise CardError(f"dataset card {card.name!r} [reader_params]: {key} must be one of "
                        f"{', '.join(allowed)}, not {value!r}",
                        hint="leave it out to detect the release from the file")
    return str(value)


@READERS.register("amazon")
def read(card: DatasetCard, files: Mapping[str, Path], *, strict: bool = False
         ) -> CanonicalTables:
    """The registered reader: ``files["reviews"]`` and optional ``files["meta"]``."""
    params = dict(card.reader_params)
    check_keys(f"dataset card {card.name!r} [reader_params]", params, READER_PARAM_KEYS)
    if "reviews" not in files:
        raise CardError(f"dataset card {card.name!r}: the amazon reader needs a 'reviews' source")
    return read_amazon(files["reviews"], files.get("meta"),
                       category_rule=params.get("category_rule", "last_of_last"), strict=strict,
                       keep_snapshot_fields=bool(params.get("keep_snapshot_fields", False)),
                       reviews_format=_format_param(card, "reviews_format", REVIEW_FORMATS),
                       meta_format=_format_param(card, "meta_format", META_FORMATS))
