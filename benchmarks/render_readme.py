"""Regenerate the README's measured tables from data; ``--check`` fails when they are stale.

Each generated table sits between two marker comments that name its source::

    <!-- BEGIN generated:bench:peer_throughput -->
    ... (everything here is replaced) ...
    <!-- END generated:bench:peer_throughput -->

Names:
  bench:SCRIPT      the newest ``benchmarks/results/<machine>/<commit>-SCRIPT.json``
                    (``--machine`` picks a machine; default the newest of any). peer_throughput,
                    side_by_side, prepare_scale, augru_speed, load_ratio and gpu have their own
                    layouts; any other script is rendered as a plain table of its rows.
  bench:train_vs_peers  train_throughput beside the same machine's newest peers' figures
                    (peer_throughput or side_by_side; batch 128, ratios to the faster peer;
                    larger batches and evaluation after).
  evidence:DIR:TABLE  a table (leaderboard, tuned, ablations, strata) of the committed report
                    CSVs in ``results/evidence/DIR/`` (benchmarks/evidence_tables.py)
  results:DATASET   the test leaderboard of DATASET from the run records under ``--results``
                    (AUC and logloss mean ± std over seeds, s/epoch, time vs DIN, epochs; the
                    oracle's AUC first on synthetic data), computed by ctrbench's report code.

Usage:
  python benchmarks/render_readme.py                 # rewrite README.md in place
  python benchmarks/render_readme.py --check         # exit 1 if any table is stale
  python benchmarks/render_readme.py --check --names 'bench:*' --names 'evidence:*'
                                                     # CI: run records not at hand
  python benchmarks/render_readme.py --readme docs/x.md --results results --machine box1

Exit status: 0 written or up to date; 1 stale (``--check``); 2 bad markers, an unknown name or
missing data (the message names it).
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/
from bench_results import DEFAULT_DIR, BenchResultError, latest, newest_peers, peer_rates

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- (BEGIN|END) generated:([A-Za-z0-9_.:-]+) -->")
DASH = "–"


class RenderError(Exception):
    """A user-facing problem: exit status 2 with this message."""


# --------------------------------------------------------------------------- markdown helpers
def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rate(x: float | None) -> str:
    """Samples per second as the README writes them: 2.18M, 17.6k, 950."""
    if x is None:
        return DASH
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def cell(value: object) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def provenance(doc: dict) -> str:
    dirty = ", uncommitted changes" if doc["dirty"] else ""
    where = Path(doc["path"])
    return (f"_Rendered by `benchmarks/render_readme.py` from `{where.parent.name}/{where.name}` "
            f"(machine {doc['machine']}, commit {doc['commit'][:12]}{dirty}, {doc['date']})._")


# --------------------------------------------------------------------------- benchmark layouts
def peer_throughput(doc: dict) -> str:
    rows = [[r["library"], r["model"], rate(r["fit_samples_per_s"]),
             rate(r["step_samples_per_s"]), cell(r.get("torch_threads")), cell(r["params"])]
            for r in doc["rows"]]
    return table(["library", "model", "fit samples/s", "step samples/s", "torch threads",
                  "params"], rows)


def prepare_scale(doc: dict) -> str:
    def secs(r: dict, key: str) -> str:
        return DASH if r.get(key) is None else f"{r[key]:.1f} s"

    rows = []
    for r in doc["rows"]:
        parts = ", ".join(f"{k} {r[f'{k}_seconds']:.0f}" for k in ("read", "build", "write")
                          if r.get(f"{k}_seconds") is not None)
        rows.append([r["scale"], secs(r, "generate_seconds"),
                     f"{secs(r, 'prepare_seconds')} ({parts})" if parts
                     else secs(r, "prepare_seconds"),
                     f"{max(r['generate_peak_mb'], r['prepare_peak_mb']) / 1024:.1f} GB",
                     " / ".join(cell(r.get(f"{s}_rows")) for s in ("train", "valid", "test")),
                     cell(r.get("target_met"))])
    return table(["scale", "generate", "prepare (read + build + write)", "peak RSS",
                  "rows train / valid / test", "target met"], rows)


def load_ratio(doc: dict) -> str:
    """benchmarks/load_ratio.py: one epoch with and without the busy processes, per model."""
    def loads(values: object) -> str:
        return ", ".join(DASH if v is None else f"{v:.1f}" for v in (values or [])) or DASH

    rows = [[r["model"], r["setting"], cell(r.get("threads")), f"{r['quiet_seconds']:.2f}",
             f"{r['loaded_seconds']:.2f}", f"{r['ratio']:.2f}×", cell(r.get("busy")),
             f"{loads(r.get('quiet_load_avg_1m'))} / {loads(r.get('loaded_load_avg_1m'))}"]
            for r in doc["rows"] if r.get("threads") is not None]  # None: nothing trained
    return table(["model", "threads setting", "threads", "quiet s/epoch", "loaded s/epoch",
                  "loaded ÷ quiet", "busy processes", "1-min load avg quiet / loaded"], rows)


def augru_speed(doc: dict) -> str:
    rows = [[r["variant"], f"{r['ms']:.2f}", f"{r['speedup_vs_naive']:.1f}×"]
            for r in doc["rows"]]
    return table(["variant", "ms per forward + backward", "× naive"], rows)


def gpu(doc: dict) -> str:
    """benchmarks/gpu.sh: the throughput table, then one line per other stage."""
    measured = [r for r in doc["rows"] if r.get("stage") == "throughput" and "model" in r]
    errors = any(r.get("error") for r in measured)
    rows = [[r["model"], cell(r["batch_size"]), rate(r.get("samples_per_s")),
             DASH if r.get("step_ms") is None else f"{r['step_ms']:.2f}",
             DASH if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:,.0f}",
             *([r.get("error") or ""] if errors else [])] for r in measured]
    headers = ["model", "batch", "train samples/s", "ms/step", "peak MB"]
    lines = [table(headers + (["error"] if errors else []), rows)]
    for r in doc["rows"]:
        if r.get("stage") == "tests":
            failed = ", ".join(r.get("failed") or []) or "none"
            lines.append(f"CUDA test subset: {r.get('tests')} tests, {r.get('failures')} failed "
                         f"({failed}), {r.get('seconds')} s.")
        elif r.get("stage") == "books_epoch":
            lines.append(f"MIAN epoch stage: {r.get('status')} after {r.get('seconds')} s"
                         + (f", test AUC {r['test_auc']:.4f}" if r.get("test_auc") else "") + ".")
    return "\n\n".join(lines)


def train_vs_peers(train: dict, peers: dict | None) -> str:
    """ctrbench's training throughput (benchmarks/train_throughput.py) beside the peers'
    (benchmarks/peer_throughput.py) at batch 128; each side at its best thread count, a peer's
    figure the better of its own ``fit`` loop and a bare step loop; the ratios divide by the
    faster peer."""
    mine: dict[tuple[str, str, int], dict] = {}  # the best thread count's row
    for r in train["rows"]:
        if "model" in r and "optimizer" in r:
            key = (r["model"], r["optimizer"], r["batch_size"])
            if key not in mine or r["train_samples_per_s"] > mine[key]["train_samples_per_s"]:
                mine[key] = r
    theirs = peer_rates(peers)  # the best of fit, step and thread counts
    libraries = sorted({lib for per in theirs.values() for lib in per})
    models = list(dict.fromkeys(m for m, _, _ in mine))
    optimizers = list(dict.fromkeys(o for _, o, _ in mine))
    big = sorted({b for _, _, b in mine if b != 128})

    def train_rate(model: str, optimizer: str, batch: int) -> float | None:
        r = mine.get((model, optimizer, batch))
        return None if r is None else r["train_samples_per_s"]

    rows = []
    for m in models:
        here = [train_rate(m, o, 128) for o in optimizers]
        peer = [theirs.get(m, {}).get(lib) for lib in libraries]
        fastest = max((x for x in peer if x), default=None)
        ratios = [DASH if x is None or fastest is None else f"{x / fastest:.1f}×" for x in here]
        at_big = [" / ".join(rate(train_rate(m, o, b)) for o in optimizers) for b in big]
        evals = [r["eval_samples_per_s"] for (mm, _, _), r in mine.items() if mm == m]
        rows.append([m, *map(rate, here), *map(rate, peer), *ratios, *at_big,
                     rate(max(evals) if evals else None)])
    headers = ["model", *(f"ctrbench {o}" for o in optimizers), *libraries,
               *(f"{o} ÷ faster peer" for o in optimizers),
               *(f"batch {b:,} ({' / '.join(optimizers)})" for b in big), "eval samples/s"]
    sources = [provenance(train)] + ([provenance(peers)] if peers else
                                     ["_No peer_throughput or side_by_side result on this "
                                      "machine._"])
    return table(headers, rows) + "\n\n" + "\n".join(sources)


def side_by_side(doc: dict) -> str:
    """ctrbench's trainer over the faster peer, measured in the same rounds
    (``peer_throughput.py --with-ctrbench``), each side at its best thread count."""
    rows = [[r["model"], rate(r["ctrbench_fit_samples_per_s"]), cell(r["ctrbench_threads"]),
             r["faster_peer"], rate(r["peer_samples_per_s"]), cell(r["peer_threads"]),
             DASH if r.get("ratio") is None else f"{r['ratio']:.2f}×"]
            for r in doc["rows"] if r.get("ratio_row")]
    return table(["model", "ctrbench samples/s", "threads", "faster peer", "peer samples/s",
                  "threads", "ctrbench ÷ faster peer"], rows)


def generic(doc: dict) -> str:
    """Any script's rows: text columns first, then the rest, each in name order."""
    keys: dict[str, bool] = {}
    for r in doc["rows"]:
        for k, v in r.items():
            keys[k] = keys.get(k, True) and (v is None or isinstance(v, str))
    headers = sorted(keys, key=lambda k: (not keys[k], k))
    return table(headers, [[cell(r.get(k)) for k in headers] for r in doc["rows"]])


LAYOUTS: dict[str, Callable[[dict], str]] = {
    "peer_throughput": peer_throughput, "prepare_scale": prepare_scale,
    "side_by_side": side_by_side,
    "augru_speed": augru_speed, "gpu": gpu, "load_ratio": load_ratio,
}


def render_bench(script: str, args: argparse.Namespace) -> str:
    if script == "train_vs_peers":
        return render_train_vs_peers(args)
    try:
        doc = latest(script, args.bench_results, args.machine)
    except BenchResultError as exc:
        raise RenderError(str(exc)) from None
    if doc is None:
        where = f"{args.bench_results}/{args.machine or '*'}/*-{script}.json"
        raise RenderError(f"no benchmark result for bench:{script} ({where})")
    if not doc["rows"]:
        raise RenderError(f"{doc['path']}: no rows")
    try:
        body = LAYOUTS.get(script, generic)(doc)
    except (KeyError, TypeError) as exc:
        raise RenderError(f"{doc['path']}: rows lack {exc} for the {script} layout") from None
    return f"{body}\n\n{provenance(doc)}"


def render_train_vs_peers(args: argparse.Namespace) -> str:
    """The newest train_throughput result, with the newest peers' figures of its machine
    (peer_throughput or side_by_side)."""
    try:
        train = latest("train_throughput", args.bench_results, args.machine)
        peers = train and newest_peers(args.bench_results, train["machine"])
    except BenchResultError as exc:
        raise RenderError(str(exc)) from None
    if train is None:
        raise RenderError(f"no benchmark result for bench:train_vs_peers "
                          f"({args.bench_results}/{args.machine or '*'}/*-train_throughput.json)")
    try:
        return train_vs_peers(train, peers)
    except (KeyError, TypeError) as exc:
        raise RenderError(f"{train['path']}: rows lack {exc} for the train_vs_peers "
                          "layout") from None


# --------------------------------------------------------------------------- run records
def render_results(dataset: str, args: argparse.Namespace) -> str:
    """The compact test leaderboard of one dataset, through ctrbench's report code."""
    import pandas as pd

    from ctrbench.analysis import stats
    from ctrbench.errors import CtrbenchError
    from ctrbench.report.data import CardBook, load_results
    from ctrbench.report.tables import leaderboard, timing_table

    try:
        rs = load_results(Path(args.results), [dataset])
    except CtrbenchError as exc:
        raise RenderError(f"results:{dataset}: {exc}") from None
    board, _ = leaderboard(rs, CardBook(), n_boot=0)
    board = board[(board["dataset"] == dataset) & (board["status"] == "ok")]
    timing = timing_table(rs).set_index(["dataset", "model"])
    if board.empty:
        raise RenderError(f"results:{dataset}: no model with finished runs")

    def pm(mean: float, std: float) -> str:
        if pd.isna(mean):
            return DASH
        return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"

    def num(x: float, fmt: str) -> str:
        return DASH if pd.isna(x) else format(x, fmt)

    rows = []
    first = rs.finished[rs.finished["dataset"] == dataset]
    scores = rs.scores(str(first.iloc[0]["path"])) if len(first) else None
    if scores is not None and "oracle" in scores:
        oracle = stats.auc_score(scores["oracle"], scores["labels"])
        rows.append(["oracle (the generator's exact p)", f"{oracle:.4f}", DASH, DASH, DASH, DASH])
    for r in board.itertuples(index=False):
        t = timing.loc[(dataset, r.model)]
        rows.append([r.model, pm(r.auc_mean, r.auc_std), pm(r.logloss_mean, r.logloss_std),
                     num(t["train_s_per_epoch"], ".1f"),
                     DASH if pd.isna(t["time_vs_din"]) else f"{t['time_vs_din']:.2f}×",
                     f"{num(t['best_epoch_mean'], '.1f')} / {num(t['epochs_run_mean'], '.1f')}"])
    body = table(["model", "AUC", "logloss", "s/epoch", "vs DIN time", "best / run epochs"], rows)
    seeds = sorted(set(board["n_seeds"]))
    return (f"{body}\n\n_Rendered by `benchmarks/render_readme.py` from the run records under "
            f"`{label(args.results)}/runs/{dataset}` ({'/'.join(map(str, seeds))} seeds per "
            f"model; mean ± std over seeds)._")


def label(path: Path) -> str:
    """``path`` relative to the repository when inside it (stable text across checkouts)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- the document
def render_block(name: str, args: argparse.Namespace) -> str:
    kind, _, arg = name.partition(":")
    if kind == "bench" and arg:
        return render_bench(arg, args)
    if kind == "results" and arg:
        return render_results(arg, args)
    if kind == "evidence" and ":" in arg:
        import evidence_tables

        folder, _, table = arg.partition(":")
        try:
            return evidence_tables.render(ROOT / "results" / "evidence", folder, table)
        except (KeyError, FileNotFoundError, OSError) as exc:
            raise RenderError(f"evidence:{arg}: {exc}") from None
    raise RenderError(f"unknown generated block {name!r}: use bench:SCRIPT, results:DATASET or "
                      "evidence:DIR:TABLE")


def blocks(text: str) -> list[tuple[str, int, int]]:
    """(name, start of the body, end of the body) of every marker pair, in order."""
    out, open_name, open_end = [], None, 0
    for m in MARKER.finditer(text):
        kind, name = m.groups()
        line = text.count("\n", 0, m.start()) + 1
        if kind == "BEGIN":
            if open_name is not None:
                raise RenderError(f"line {line}: BEGIN generated:{name} inside {open_name}")
            open_name, open_end = name, m.end()
        else:
            if open_name != name:
                raise RenderError(f"line {line}: END generated:{name} without its BEGIN")
            out.append((name, open_end, m.start()))
            open_name = None
    if open_name is not None:
        raise RenderError(f"BEGIN generated:{open_name} has no END")
    return out


def render(text: str, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The document with every block regenerated, and the names of the blocks that changed."""
    pieces, changed, last = [], [], 0
    for name, start, end in blocks(text):
        if not any(fnmatch.fnmatchcase(name, p) for p in args.names):
            continue
        body = f"\n{render_block(name, args)}\n"
        if text[start:end] != body:
            changed.append(name)
        pieces += [text[last:start], body]
        last = end
    pieces.append(text[last:])
    return "".join(pieces), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--bench-results", type=Path, default=DEFAULT_DIR,
                        help="benchmark JSON root (default: benchmarks/results)")
    parser.add_argument("--results", type=Path, default=ROOT / "results",
                        help="results root with runs/ (default: ./results of the repository)")
    parser.add_argument("--machine", default=None, help="only results of this machine")
    parser.add_argument("--names", action="append", default=None, metavar="PATTERN",
                        help="only blocks whose name matches (glob; repeatable), e.g. 'bench:*' "
                             "where no run records are at hand")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated table is stale")
    args = parser.parse_args(argv)
    args.names = args.names or ["*"]
    try:
        text = args.readme.read_text()
        new, changed = render(text, args)
    except OSError as exc:
        print(f"error: cannot read {args.readme}: {exc}", file=sys.stderr)
        return 2
    except RenderError as exc:
        print(f"error: {args.readme}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if not changed:
            print(f"{args.readme}: generated tables up to date")
            return 0
        print(f"{args.readme}: stale generated tables: {', '.join(changed)} (run "
              f"python benchmarks/render_readme.py)", file=sys.stderr)
        sys.stderr.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                   str(args.readme), "regenerated"))
        return 1
    if changed:
        fd, tmp = tempfile.mkstemp(dir=args.readme.parent, prefix=f".{args.readme.name}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(new)
        shutil.copymode(args.readme, tmp)
        os.replace(tmp, args.readme)
    print(f"{args.readme}: {len(changed)} generated table(s) rewritten"
          + (f" ({', '.join(changed)})" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
