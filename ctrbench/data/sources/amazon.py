"""Amazon 2014 ("productGraph", McAuley et al.) reviews + meta -> canonical tables.

Formats (see /work/shared/data/README.md):

- reviews: gzip JSON lines with ``reviewerID``, ``asin``, ``overall`` (1-5), ``unixReviewTime``
  (whole days), plus fields not used here (``reviewText``, ``summary``, ``helpful`` ...);
- meta: gzip lines of **Python dict literals** (single quotes) with ``asin`` and, optionally,
  ``categories`` (a list of category paths, each a list of strings).

Both files are streamed line by line. Review ids are factorised as they are read and kept in
compact typed arrays (a few bytes per review), so Books (8.9M reviews) fits in bounded memory.
Meta lines are only parsed for items that appear in the reviews; their ``asin`` and
``categories`` are extracted by a small tokenizer (fast path) and ``ast.literal_eval`` is the
fallback whenever the fast path is not certain to be exact.

Category rules (``reader_params.category_rule``): ``last_of_last`` (DIN: the last element of the
last category path) or ``last_of_first`` (DIEN: the last element of the first path). Items without
a meta line or with no categories get :data:`UNKNOWN_CATEGORY`.

Crawl-time snapshot fields (``salesRank``, ``related``, ``helpful``) are dropped unless
``keep_snapshot_fields``: they describe the item when the data was crawled, after every review,
so using them as features leaks the future.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import re
import zlib
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.cards import DatasetCard, check_keys
from ctrbench.data.canonical import CanonicalTables, ReadReport
from ctrbench.data.features import UNKNOWN_CATEGORY
from ctrbench.data.sources import READERS
from ctrbench.errors import CardError, DataError
from ctrbench.progress import progress

CATEGORY_RULES = ("last_of_last", "last_of_first")
READER_PARAM_KEYS = ("category_rule", "keep_snapshot_fields")

_ASIN_RE = re.compile(r"""'asin': (?:'([^'\\]*)'|"([^"\\]*)")""")
_CATS_KEY = "'categories': "
_JSON = json.JSONDecoder()
# one token of a list of lists of Python string literals
_TOKEN_RE = re.compile(r"""\s*(\[|\]|,|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


# --------------------------------------------------------------------------- streaming
def _gzip_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(0-based line number, raw line) of a gzip file; corrupt/truncated gzip -> DataError."""
    step = 1 << 16
    try:
        # the outer buffer makes line iteration C-level (GzipFile.readline is Python)
        with io.BufferedReader(gzip.GzipFile(path, "rb"), 1 << 20) as fh, \
                progress(f"reading {path.name}", unit="lines") as bar:
            line_no = -1
            for line_no, line in enumerate(fh):
                if line_no % step == step - 1:
                    bar.update(step)
                yield line_no, line
            bar.done += (line_no + 1) % step  # counted, shown once by close()
    except FileNotFoundError:
        raise DataError(f"raw file not found: {path}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is truncated or not a valid gzip file ({exc})",
                        hint="delete it and download again (`ctrbench download NAME`)") from None


# --------------------------------------------------------------------------- meta parsing
def _parse_str_literal(token: str) -> str:
    if "\\" in token:
        return ast.literal_eval(token)
    return token[1:-1]


def _fast_categories(text: str, start: int) -> list[list[str]] | None:
    """Parse the ``[[...], ...]`` literal at ``text[start:]``; None when not a clean match."""
    stack: list[list] = []
    pos = start
    result: list | None = None
    while True:
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            return None
        tok = m.group(1)
        pos = m.end()
        if tok == "[":
            new: list = []
            if stack:
                stack[-1].append(new)
            stack.append(new)
        elif tok == "]":
            if not stack:
                return None
            result = stack.pop()
            if not stack:
                break
        elif tok == ",":
            continue
        else:
            if not stack:
                return None
            stack[-1].append(_parse_str_literal(tok))
    if not all(isinstance(p, list) and all(isinstance(s, str) for s in p) for p in result):
        return None
    return result


def parse_meta_line(text: str) -> tuple[str, list[list[str]]]:
    """``(asin, categories)`` of one meta line (Python dict literal).

    Fast path when ``asin`` and ``categories`` each occur exactly once as keys and the line is a
    complete ``{...}``; otherwise ``ast.literal_eval`` of the whole line. Raises ValueError
    (with a reason) on a malformed line.
    """
    stripped = text.strip()
    if (stripped.startswith("{") and stripped.endswith("}")
            and stripped.count("'asin': ") == 1 and stripped.count(_CATS_KEY) <= 1):
        m = _ASIN_RE.search(stripped)
        if m is not None:
            asin = m.group(1) if m.group(1) is not None else m.group(2)
            at = stripped.find(_CATS_KEY)
            if at < 0:
                return asin, []
            cats = _fast_categories(stripped, at + len(_CATS_KEY))
            if cats is not None:
                return asin, cats
    return _slow_meta(stripped)


def _slow_meta(text: str) -> tuple[str, list[list[str]]]:
    record = _literal_dict(text)
    if "asin" not in record:
        raise ValueError("missing field 'asin'")
    cats = record.get("categories") or []
    if not isinstance(cats, list) or not all(isinstance(p, list) for p in cats):
        raise ValueError("'categories' is not a list of lists")
    return str(record["asin"]), [[str(s) for s in p] for p in cats]


def _literal_dict(text: str) -> dict:
    try:
        record = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not a Python literal ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise ValueError("not a dict literal")
    return record


def pick_category(categories: list[list[str]], rule: str) -> str:
    """The item's category under ``rule``; :data:`UNKNOWN_CATEGORY` when there is none."""
    if not categories:
        return UNKNOWN_CATEGORY
    path = categories[-1] if rule == "last_of_last" else categories[0]
    return path[-1] if path else UNKNOWN_CATEGORY


# --------------------------------------------------------------------------- readers
def _parse_review(raw: bytes) -> tuple[str, str, int, float, dict]:
    """``(user, item, unix time, rating, record)`` of one review line; ValueError says why not."""
    try:
        record = _JSON.decode(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("invalid JSON") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key in ("reviewerID", "asin", "unixReviewTime"):
        if key not in record:
            raise ValueError(f"missing field {key!r}")
    user, item, ts = record["reviewerID"], record["asin"], record["unixReviewTime"]
    if not isinstance(user, str) or not isinstance(item, str) or not user or not item:
        raise ValueError("reviewerID/asin is not a non-empty string")
    try:
        ts = int(ts) if not isinstance(ts, (bool, list, dict)) else None
    except (TypeError, ValueError, OverflowError):
        ts = None
    if ts is None:
        raise ValueError("non-numeric unixReviewTime")
    rating = record.get("overall")
    try:
        rating = float("nan") if rating is None else float(rating)
    except (TypeError, ValueError):
        raise ValueError("non-numeric overall") from None
    return user, item, ts, rating, record


def _helpful(value: object) -> tuple[float, float]:
    """``helpful = [yes, total]`` as floats; NaN when absent or malformed."""
    try:
        return float(value[0]), float(value[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError):
        return float("nan"), float("nan")


def _read_reviews(path: Path, strict: bool, keep_snapshot: bool):
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
        try:
            user, item, ts, rating, record = _parse_review(raw)
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
    return pd.DataFrame(columns), items, report


def _sales_rank(value: object) -> float:
    """The best (smallest) rank of ``salesRank = {top category: rank}``; NaN when absent."""
    try:
        return float(min(value.values())) if value else float("nan")  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return float("nan")


def _read_meta(path: Path, wanted: Mapping[str, int], rule: str, strict: bool,
               keep_snapshot: bool):
    """Categories (and snapshot fields) of the items in ``wanted``; others are skipped unparsed."""
    report = ReadReport(file=path.name)
    categories: dict[str, str] = {}
    sales_rank: dict[str, float] = {}
    for line_no, raw in _gzip_lines(path):
        report.lines += 1
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            report.add_bad(line_no + 1, "not UTF-8", strict)
            continue
        m = _ASIN_RE.search(text)
        asin = None if m is None else m.group(1) if m.group(1) is not None else m.group(2)
        if asin is not None and asin not in wanted and text.count("'asin': ") == 1:
            continue  # an item nobody reviewed: skip without parsing
        try:
            asin, cats = parse_meta_line(text)
            if keep_snapshot:
                sales_rank[asin] = _sales_rank(_literal_dict(text.strip()).get("salesRank"))
        except ValueError as exc:
            report.add_bad(line_no + 1, str(exc), strict)
            continue
        if asin in wanted:
            categories[asin] = pick_category(cats, rule)
    return categories, sales_rank, report


def read_amazon(reviews: Path, meta: Path | None, *, category_rule: str, strict: bool,
                keep_snapshot_fields: bool = False) -> CanonicalTables:
    """Stream the reviews (and meta) files into canonical tables.

    ``items`` holds every reviewed item with its category under ``category_rule``
    (``<unknown>`` without meta); with ``keep_snapshot_fields`` it also holds ``sales_rank`` and
    the interactions hold ``helpful_yes``/``helpful_total``.
    """
    if category_rule not in CATEGORY_RULES:
        raise CardError(f"unknown category_rule {category_rule!r}",
                        hint=f"one of: {', '.join(CATEGORY_RULES)}")
    reviews = Path(reviews)
    interactions, item_index, review_report = _read_reviews(reviews, strict, keep_snapshot_fields)
    reports = [review_report]
    categories: dict[str, str] = {}
    sales_rank: dict[str, float] = {}
    if meta is not None:
        categories, sales_rank, meta_report = _read_meta(
            Path(meta), item_index, category_rule, strict, keep_snapshot_fields)
        reports.append(meta_report)
    names = list(item_index)
    items = pd.DataFrame({
        "item": np.array(names, dtype=object),
        "category": np.array([categories.get(n, UNKNOWN_CATEGORY) for n in names], dtype=object),
    })
    if keep_snapshot_fields:
        items["sales_rank"] = np.array([sales_rank.get(n, np.nan) for n in names], np.float64)
    return CanonicalTables(interactions=interactions, items=items, users=None, reports=reports)


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
                       keep_snapshot_fields=bool(params.get("keep_snapshot_fields", False)))
