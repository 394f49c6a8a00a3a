"""Amazon meta lines of the 2014, 2018 and 2023 releases -> (item key, category).

The three releases differ in syntax and in where the category is (McAuley et al.'s published
field lists):

=========  ===================================  ==========  =================================
format     syntax                               item key    category fields
=========  ===================================  ==========  =================================
``2014``   Python dict literals (single         ``asin``    ``categories``: a list of paths,
           quotes; a JSON re-encoding also                  each a list of strings
           reads)
``2018``   strict JSON                          ``asin``    ``category``: one flat path (list
                                                            of strings, HTML-escaped: ``&amp;``),
                                                            ``main_cat``: a string (sometimes an
                                                            ``<img ... alt="X">``)
``2023``   JSON lines                           ``parent_   ``categories``: one flat path,
                                                asin``      ``main_category``: a string or null
=========  ===================================  ==========  =================================

Category rule per format (``reader_params.category_rule``):

- ``2014``: ``last_of_last`` (DIN: the last element of the last path) or ``last_of_first``
  (DIEN: the last element of the first path); ``main`` is not available (no such field).
- ``2018`` / ``2023``: the item has one path, so ``last_of_last`` and ``last_of_first`` both
  take its last (most specific) element; an empty path falls back to ``main_cat`` /
  ``main_category`` (for ``main_cat`` an HTML image tag gives its ``alt`` text). ``main``
  takes ``main_cat`` / ``main_category`` first and the path's last element as the fallback.
  2018 names are read with their HTML entities resolved (``Toys & Games``); 2014 and 2023
  names are plain text.

An item with none of these gets ``<unknown>``. The format is detected from the first meta line
that is not blank (``reader_params.meta_format`` may name it instead); a JSON line with ``asin``
and no category field at all fits 2014 and 2018 alike (``<unknown>``), so the next line decides.

Speed: the item key is found by a regular expression on the raw bytes (when its key occurs
exactly once), and lines of items nobody reviewed are skipped unparsed. Kept JSON lines (2018,
2023) go whole through the C JSON decoder, which measured faster than cutting out the category
fields with regular expressions; 2014 lines (Python literals) have their ``categories`` cut out
and tokenized, with ``ast.literal_eval`` of the whole line when that is not certain to be exact
(e.g. ``'categories': `` inside a string value: :func:`_is_key_at`).
"""

from __future__ import annotations

import ast
import html
import json
import re

from ctrbench.data.features import UNKNOWN_CATEGORY

META_FORMATS = ("2014", "2018", "2023")
CATEGORY_RULES = ("last_of_last", "last_of_first", "main")

_KEY = {  # format -> item key regex on raw bytes
    "2014": re.compile(rb"""['"]asin['"]: (?:'([^'\\]*)'|"([^"\\]*)")"""),
    "2018": re.compile(rb'"asin"\s*:\s*"([^"\\]*)"'),
    "2023": re.compile(rb'"parent_asin"\s*:\s*"([^"\\]*)"'),
}
_KEY_TEXT = {"2014": (b"'asin': ", b'"asin": '), "2018": (b'"asin"',),
             "2023": (b'"parent_asin"',)}
_FIELDS = {"2018": ("asin", "category", "main_cat"),  # item key, path, main category
           "2023": ("parent_asin", "categories", "main_category")}
_ALT_RE = re.compile(r"""alt\s*=\s*["']([^"']*)["']""")
_CATS_2014 = (b"'categories': ", b'"categories": ')
_CATS_2014_TEXT = tuple(k.decode() for k in _CATS_2014)
_ASIN_2014_TEXT = tuple(k.decode() for k in _KEY_TEXT["2014"])
_ASIN_FIRST = tuple("{" + k for k in _ASIN_2014_TEXT)  # the usual line: asin is the first key
# one token of a list of lists of Python string literals
_TOKEN_RE = re.compile(r"""\s*(\[|\]|,|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
# text outside string literals, then whole string literals (possessive: no backtracking)
_OUTSIDE_RE = re.compile(r"""(?:[^'"]++|'(?:[^'\\\n]++|\\.)*+'|"(?:[^"\\\n]++|\\.)*+")*+""")


# --------------------------------------------------------------------------- detection
class UndecidedFormat(ValueError):
    """A JSON meta line with ``asin`` and none of the category fields: 2014 (re-encoded) and
    2018 read it alike (``<unknown>``), so the next line decides the file's format."""


def detect_meta_format(line: bytes) -> str:
    """The release a meta line belongs to (see the module docstring); ValueError if none
    (:class:`UndecidedFormat` when the line fits 2014 and 2018 alike)."""
    text = line.strip()
    if text.startswith(b"{'"):
        return "2014"
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("neither a Python dict literal (2014) nor JSON (2018, 2023)") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "parent_asin" in record or "main_category" in record:
        return "2023"
    if "category" in record or "main_cat" in record:
        return "2018"
    if "asin" in record:
        if "categories" not in record:
            raise UndecidedFormat("a JSON line with asin and no category field")
        return "2014"
    raise ValueError("no asin or parent_asin field")


# --------------------------------------------------------------------------- category rules
def clean_main(value: object) -> str:
    """``main_cat``/``main_category`` as a category name ('' when absent)."""
    if not isinstance(value, str):
        return ""
    if "<" in value:  # 2018: '<img src="..." alt="AMAZON FASHION"/>'
        m = _ALT_RE.search(value)
        value = m.group(1) if m else ""
    return html.unescape(value).strip()


def _unescape(name: str) -> str:
    """A 2018 category name with its HTML entities resolved (``Toys &amp; Games``)."""
    return html.unescape(name) if "&" in name else name


def pick_category(paths: list[list[str]], rule: str, main: str = "") -> str:
    """The category under ``rule`` from the item's paths and main category (see the module
    docstring); :data:`UNKNOWN_CATEGORY` when there is none."""
    path = (paths[-1] if rule == "last_of_last" else paths[0]) if paths else []
    leaf = path[-1].strip() if path and isinstance(path[-1], str) else ""
    if rule == "main":
        return main or leaf or UNKNOWN_CATEGORY
    return leaf or main or UNKNOWN_CATEGORY


# --------------------------------------------------------------------------- 2014 literals
def _parse_str_literal(token: str) -> str:
    if "\\" not in token:
        return token[1:-1]
    try:
        value = ast.literal_eval(token)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"bad string literal in categories ({type(exc).__name__})") from None
    return str(value)


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


def _is_key_at(text: str, at: int) -> bool:
    """Whether the quoted key starting at ``text[at]`` (``'key': `` or ``"key": ``) is a key of
    the line's dict, not text inside a string value.

    Cheap when certain: a key that follows ``{`` or ``, `` and no quote of the other kind before
    it cannot lie inside a string (inside a string of its own quote, it would be escaped).
    Otherwise the text before it is scanned at C speed for whole string literals.
    """
    if at <= 0 or text[at - 1] not in "{ ":
        return False
    if text.find('"' if text[at] == "'" else "'", 0, at) < 0:
        return True
    return _OUTSIDE_RE.match(text, 0, at).end() == at


def _literal_dict(text: str) -> dict:
    try:
        record = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, OverflowError) as exc:
        raise ValueError(f"not a Python literal ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise ValueError("not a dict literal")
    return record


def _json_dict(raw: bytes) -> dict:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid JSON ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def _paths_2014(value: object) -> list[list[str]]:
    if not value:
        return []
    if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
        raise ValueError("'categories' is not a list of lists")
    return [[str(s) for s in p] for p in value]


def parse_meta_line(text: str) -> tuple[str, list[list[str]]]:
    """``(asin, categories)`` of one 2014 meta line (Python dict literal, or JSON).

    Fast path when ``asin`` and ``categories`` each occur once as keys, outside any string
    value (:func:`_is_key_at`), and the line is a complete ``{...}``; otherwise a full parse.
    Raises ValueError (with a reason) when malformed.
    """
    stripped = text.strip()
    raw = stripped.encode("utf-8", "surrogatepass")
    if (stripped.startswith("{") and stripped.endswith("}")
            and sum(raw.count(k) for k in _KEY_TEXT["2014"]) == 1
            and sum(raw.count(k) for k in _CATS_2014) <= 1):
        m = _KEY["2014"].search(raw)
        if m is not None and (stripped.startswith(_ASIN_FIRST) or _is_key_at(
                stripped, max(stripped.find(k) for k in _ASIN_2014_TEXT))):
            asin = (m.group(1) if m.group(1) is not None else m.group(2)).decode("utf-8")
            at = max(stripped.find(k) for k in _CATS_2014_TEXT)
            if at < 0:
                return asin, []
            cats = (_fast_categories(stripped, at + len(_CATS_2014[0]))
                    if _is_key_at(stripped, at) else None)
            if cats is not None:
                return asin, cats
    record = (_json_dict(raw) if stripped.startswith('{"') else _literal_dict(stripped))
    if "asin" not in record:
        raise ValueError("missing field 'asin'")
    return str(record["asin"]), _paths_2014(record.get("categories"))


# --------------------------------------------------------------------------- 2018 / 2023 JSON
def parse_json_meta(raw: bytes, fmt: str) -> tuple[str, list[list[str]], str]:
    """``(item key, [path], main category)`` of one 2018 or 2023 meta line (JSON).

    The whole line goes through the C JSON decoder: measured faster than cutting the fields out
    with regular expressions (benchmarks/meta_parse.py), and exact.
    """
    key_name, path_name, main_name = _FIELDS[fmt]
    record = _json_dict(raw)
    key = record.get(key_name)
    if not isinstance(key, str) or not key:
        raise ValueError(f"missing field {key_name!r}")
    path = record.get(path_name) or []
    if not isinstance(path, list):
        raise ValueError(f"{path_name!r} is not a list")
    names = [_unescape(str(s)) for s in path] if fmt == "2018" else [str(s) for s in path]
    return key, ([names] if names else []), clean_main(record.get(main_name))


# --------------------------------------------------------------------------- one line
def item_key(raw: bytes, fmt: str) -> str | None:
    """The item key of a meta line when it is certain from a cheap search, else None.

    Certain = the key's field name occurs exactly once (``find`` == ``rfind``, C-speed scans)
    and its value is a plain string; the regular expression is anchored there.
    """
    at = -1
    for text in _KEY_TEXT[fmt]:
        first = raw.find(text)
        if first < 0:
            continue
        if at >= 0 or raw.rfind(text) != first:
            return None  # the field name occurs twice (e.g. inside a value): parse the line
        at = first
    m = _KEY[fmt].match(raw, at) if at >= 0 else None
    if m is None:
        return None
    value = m.group(1) if m.group(1) is not None else m.group(2) if fmt == "2014" else None
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def meta_entry(raw: bytes, fmt: str, rule: str, wanted, precheck: bool = True
               ) -> tuple[str, str] | None:
    """``(item key, category)`` of a meta line whose item is in ``wanted``; None for a line of
    another item. ValueError when the line is malformed and its item is (or may be) wanted.

    ``precheck``: look the item key up before parsing, so lines of other items are skipped
    unparsed (worth it when most items are not wanted). Without it, JSON lines are parsed
    first (cheaper when most are wanted); both give the same result, since a malformed line
    whose key is certain and not wanted is skipped either way.
    """
    if precheck or fmt == "2014":
        key = item_key(raw, fmt)
        if key is not None and key not in wanted:
            return None
    try:
        key, category = meta_category(raw, fmt, rule)
    except ValueError:
        key = item_key(raw, fmt)
        if key is not None and key not in wanted:
            return None
        raise
    return (key, category) if key in wanted else None


def meta_category(raw: bytes, fmt: str, rule: str) -> tuple[str, str]:
    """``(item key, category under rule)`` of one meta line of format ``fmt``.

    Raises ValueError (with a reason) when the line is malformed.
    """
    if fmt == "2014":
        if rule == "main":
            raise ValueError("category_rule 'main' needs 2018 or 2023 meta (main_cat)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8") from None
        key, paths = parse_meta_line(text)
        return key, pick_category(paths, rule)
    key, paths, main = parse_json_meta(raw, fmt)
    return key, pick_category(paths, rule, main)


def sales_rank_2014(text: str) -> float:
    """The best (smallest) rank of a 2014 line's ``salesRank``; NaN when absent or malformed."""
    try:
        value = _literal_dict(text.strip()).get("salesRank")
        return float(min(value.values())) if value else float("nan")
    except (AttributeError, TypeError, ValueError):
        return float("nan")
