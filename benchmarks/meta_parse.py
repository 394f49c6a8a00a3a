"""Amazon meta parsing speed per release (issue 16.3: the 2018 meta used to fall back to
``ast.literal_eval`` on every line, ~460 lines/s).

Writes gzip meta files in the 2018 and 2023 formats (lines built from the published field lists,
about the size of real lines: descriptions, also_buy/also_view lists, image URLs), and uses the
real 2014 Digital Music meta prefix from /work/shared/data when it is there. For each, times the
reader's meta pass (``amazon._read_meta``: decompress, find the item key, parse the kept lines)
with every item wanted (the worst case: nothing skipped) and with 10% wanted; its two parts
alone: gzip line iteration, and the per-line parse (``amazon_meta.meta_entry`` in the reader's
parse-first mode, used when most lines are wanted) over lines in memory; and, on a slice, the
two slow paths: ``json.loads`` of the whole line and ``ast.literal_eval`` (the old 2018
behaviour). Figures are lines per CPU second of this process
(``time.process_time``, best of 3), which other processes on a shared machine disturb less than
wall time. Prints a table and keeps the figures under benchmarks/results/ (bench_results). Asserts
nothing (timings are not tests).

Usage:
    python benchmarks/meta_parse.py                       # 200,000 lines per format
    python benchmarks/meta_parse.py --lines 500000
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import tempfile
import time
from pathlib import Path

from bench_results import add_save_options, save_from_args

from ctrbench.data.sources.amazon import _gzip_lines, _read_meta
from ctrbench.data.sources.amazon_meta import meta_entry
from ctrbench.progress import set_mode

SHARED_2014 = (Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"
               / "meta_Digital_Music.prefix.json.gz")  # ../shared beside the checkout
WORDS = ("magazine issue print digital edition monthly articles photography travel science "
         "design health cooking garden business review stories").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _asin(rng: random.Random) -> str:
    return "B0" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(8))


def line_2018(rng: random.Random, asin: str) -> bytes:
    path = ["Magazine Subscriptions", _text(rng, 2).title(), _text(rng, 1).title()]
    return json.dumps({
        "category": path[: rng.randint(0, 3)], "tech1": "", "description": [_text(rng, 90)],
        "fit": "", "title": _text(rng, 6).title(), "also_buy": [_asin(rng) for _ in range(30)],
        "tech2": "", "brand": _text(rng, 1), "feature": [_text(rng, 8) for _ in range(4)],
        "rank": f"{rng.randint(1, 99999):,} in Magazine Subscriptions (",
        "also_view": [_asin(rng) for _ in range(20)], "main_cat": "Books",
        "similar_item": "", "date": "", "price": f"${rng.randint(5, 90)}.99", "asin": asin,
        "imageURL": [f"https://images-na.ssl-images-amazon.com/images/I/{_asin(rng)}._US40_.jpg"],
        "imageURLHighRes": [f"https://images-na.ssl-images-amazon.com/images/I/{_asin(rng)}.jpg"],
    }).encode()


def line_2023(rng: random.Random, asin: str) -> bytes:
    return json.dumps({
        "main_category": rng.choice(["Magazine Subscriptions", None]),
        "title": _text(rng, 6).title(), "average_rating": 4.2, "rating_number": 17,
        "features": [_text(rng, 8) for _ in range(3)], "description": [_text(rng, 90)],
        "price": None, "images": [{"thumb": f"https://m.media-amazon.com/images/I/{_asin(rng)}.jpg",
                                   "large": f"https://m.media-amazon.com/images/I/{_asin(rng)}.jpg",
                                   "variant": "MAIN", "hi_res": None}],
        "videos": [], "store": _text(rng, 2).title(),
        "categories": ["Magazine Subscriptions", _text(rng, 2).title()][: rng.randint(0, 2)],
        "details": {"Publisher": _text(rng, 2).title(), "Language": "English"},
        "parent_asin": asin, "bought_together": None,
    }).encode()


def write(path: Path, make, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    asins = [f"M{i:09d}" for i in range(n)]
    with gzip.open(path, "wb", compresslevel=6) as fh:
        for start in range(0, n, 10_000):
            fh.write(b"".join(make(rng, a) + b"\n" for a in asins[start:start + 10_000]))
    return asins


def asins_2014(path: Path) -> list[str]:
    with gzip.open(path, "rb") as fh:
        return [str(ast.literal_eval(line.decode())["asin"]) for line in fh]


def time_reader(path: Path, wanted: dict[str, int], repeat: int = 3) -> tuple[float, int]:
    best, lines = float("inf"), 0
    for _ in range(repeat):
        start = time.process_time()
        _, _, report, _ = _read_meta(path, wanted, "last_of_last", False, False)
        best = min(best, time.process_time() - start)
        lines = report.lines
    return best, lines


def _literal_eval(raw: bytes) -> object:
    """The old fallback; JSON's null/true/false are not Python literals (2023 lines fail)."""
    try:
        return ast.literal_eval(raw.decode())
    except (ValueError, SyntaxError):
        return None


def time_slow(path: Path, parse, limit: int, repeat: int = 1) -> float:
    with gzip.open(path, "rb") as fh:
        raw = [line for _, line in zip(range(limit), fh)]
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for line in raw:
            parse(line)
        best = min(best, time.process_time() - start)
    return len(raw) / best


def time_gzip(path: Path, repeat: int = 3) -> float:
    best, lines = float("inf"), 0
    for _ in range(repeat):
        start = time.process_time()
        lines = sum(1 for _ in _gzip_lines(path))
        best = min(best, time.process_time() - start)
    return lines / best


def bench(fmt: str, path: Path, asins: list[str], slow_lines: int) -> dict:
    every = {a: i for i, a in enumerate(asins)}
    tenth = {a: i for i, a in enumerate(asins[::10])}
    seconds, lines = time_reader(path, every)
    seconds_10, _ = time_reader(path, tenth)
    row = {"format": fmt, "lines": lines, "bytes_gz": path.stat().st_size,
           "all_wanted_lines_per_s": lines / seconds,
           "tenth_wanted_lines_per_s": lines / seconds_10,
           "gzip_only_lines_per_s": time_gzip(path),
           # as the reader does once most lines are wanted: parse first, no key look-up
           "parse_only_lines_per_s": time_slow(
               path, lambda b: meta_entry(b, fmt, "last_of_last", every, False), lines, 3),
           "json_loads_lines_per_s": None, "literal_eval_lines_per_s": None}
    if fmt != "2014":
        row["json_loads_lines_per_s"] = time_slow(path, json.loads, slow_lines * 10)
    row["literal_eval_lines_per_s"] = time_slow(path, _literal_eval, slow_lines)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000, help="meta lines per format")
    parser.add_argument("--slow-lines", type=int, default=2_000,
                        help="lines timed through ast.literal_eval (json.loads: 10x)")
    add_save_options(parser)
    args = parser.parse_args()
    set_mode("quiet")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, make in (("2018", line_2018), ("2023", line_2023)):
            path = Path(tmp) / f"meta_{fmt}.json.gz"
            asins = write(path, make, args.lines, seed=int(fmt))
            rows.append(bench(fmt, path, asins, args.slow_lines))
    if SHARED_2014.is_file():
        rows.append(bench("2014", SHARED_2014, asins_2014(SHARED_2014), args.slow_lines))
    print(f"{'format':<7}{'lines':>10}{'all wanted':>12}{'10% wanted':>12}{'gzip only':>12}"
          f"{'parse only':>12}{'json.loads':>12}{'literal_eval':>13}   (meta lines per CPU s)")
    for r in rows:
        def fig(v, width=12):
            return f"{v:>{width},.0f}" if v else f"{'-':>{width}}"
        print(f"{r['format']:<7}{r['lines']:>10,}{fig(r['all_wanted_lines_per_s'])}"
              f"{fig(r['tenth_wanted_lines_per_s'])}{fig(r['gzip_only_lines_per_s'])}"
              f"{fig(r['parse_only_lines_per_s'])}{fig(r['json_loads_lines_per_s'])}"
              f"{fig(r['literal_eval_lines_per_s'], 13)}")
    save_from_args("meta_parse", args, [{k: v for k, v in r.items() if v is not None}
                                        for r in rows])

if __name__ == "__main__":
    main()
