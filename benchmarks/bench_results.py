"""Benchmark figures kept as data: one JSON per (machine, commit, script), asv-style.

A benchmark script ends with::

    from bench_results import add_save_options, save_from_args
    add_save_options(parser)                    # --results-dir, --machine, --no-save
    ...
    save_from_args("peer_throughput", args, rows)

and its figures land in ``benchmarks/results/<machine>/<commit12>-<script>.json``::

    {"schema_version": 1, "machine": "build-box", "commit": "<40 hex>", "dirty": false,
     "date": "2026-11-30T15:40:00Z", "script": "peer_throughput",
     "args": {"rounds": 2, ...}, "env": {"python": "3.11.9", "torch": "2.13.0+cpu", ...},
     "rows": [{"library": "FuxiCTR", "model": "din", "fit_samples_per_s": 4890.2, ...}, ...]}

``rows`` are flat records (str, int, float, bool or None values; no NaN), one per measured
thing, in the order the script printed them. A rerun on the same machine and commit keeps the
earlier file and writes ``<commit12>.<n>-<script>.json`` (n = 2, 3, ...): a second, partial run
(one model, other options) once replaced a full one. The newest by date is the one rendered.
``benchmarks/render_readme.py`` renders README tables from these files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE / "results"
KEYS = ("schema_version", "machine", "commit", "dirty", "date", "script", "args", "env", "rows")
SAVE_OPTIONS = ("results_dir", "machine", "no_save")  # not part of a result's ``args``
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class BenchResultError(ValueError):
    """A result file that is missing, unreadable or not of this schema (message names it)."""


def machine_name(name: str | None = None) -> str:
    """``name``, else ``$CTRBENCH_MACHINE``, else the host name; checked to be a safe name."""
    name = name or os.environ.get("CTRBENCH_MACHINE") or platform.node() or "unknown"
    if not _NAME.fullmatch(name):
        raise BenchResultError(f"machine name {name!r}: use letters, digits, '.', '_', '-'")
    return name


def git_state(root: Path = HERE) -> tuple[str, bool]:
    """(commit sha, dirty) of the checkout holding ``root``; ("unknown", True) outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return commit, dirty


def environment() -> dict[str, Any]:
    """Versions and the CPU count (torch only when the script already imported it)."""
    import sys

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpus": os.cpu_count(),
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                           # ctrbench sets PASSIVE before torch loads; 2-thread CPU figures
                           # differ ~2x between PASSIVE and the spinning default
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    allocator = sys.modules.get("ctrbench.allocator")  # glibc's thresholds (page faults)
    if allocator is not None:
        env["malloc"] = allocator.status
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu"] = next((line.split(":", 1)[1].strip() for line in fh
                               if line.startswith("model name")), platform.machine())
    except OSError:
        env["cpu"] = platform.machine()
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _clean(value: Any, where: str) -> Any:
    """JSON-safe copy: paths become strings; NaN/inf and nested containers in rows are refused."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchResultError(f"{where}: {value} is not a finite number")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item(), where)
    raise BenchResultError(f"{where}: {type(value).__name__} is not a str/int/float/bool/None")


def _clean_cell(value: Any, where: str) -> Any:
    """A row's value: a scalar, or a flat list of scalars (one per round)."""
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{where}[{j}]") for j, v in enumerate(value)]
    return _clean(value, where)


def _args_dict(args: argparse.Namespace | Mapping[str, Any] | None) -> dict[str, Any]:
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    out = {}
    for key, value in items.items():
        if key in SAVE_OPTIONS:
            continue
        if isinstance(value, (list, tuple)):
            out[key] = [_clean(v, f"args.{key}") for v in value]
        else:
            out[key] = _clean(value, f"args.{key}")
    return out


def result_path(results_dir: Path, machine: str, commit: str, script: str) -> Path:
    return Path(results_dir) / machine / f"{commit[:12]}-{script}.json"


def save(script: str, args: argparse.Namespace | Mapping[str, Any] | None,
         rows: Sequence[Mapping[str, Any]], *, results_dir: Path | None = None,
         machine: str | None = None, commit: str | None = None, dirty: bool | None = None,
         date: str | None = None) -> Path:
    """Write one result file atomically and return its path (see the module docstring)."""
    if not _NAME.fullmatch(script):
        raise BenchResultError(f"script name {script!r}: use letters, digits, '.', '_', '-'")
    if commit is None:
        commit, found_dirty = git_state()
        dirty = found_dirty if dirty is None else dirty
    doc = {
        "schema_version": SCHEMA_VERSION, "machine": machine_name(machine), "commit": commit,
        "dirty": bool(dirty), "date": date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "script": script, "args": _args_dict(args), "env": environment(),
        "rows": [{str(k): _clean_cell(v, f"rows[{i}].{k}") for k, v in row.items()}
                 for i, row in enumerate(rows)],
    }
    path = result_path(results_dir or DEFAULT_DIR, doc["machine"], commit, script)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        for n in itertools.count(2):  # link: never replaces a file another run wrote
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                path = path.with_name(f"{commit[:12]}.{n}-{script}.json")
            except OSError:  # a file system without hard links: the first free name
                if not path.exists():
                    os.replace(tmp, path)
                    break
                path = path.with_name(f"{commit[:12]}.{n}-{script}.json")
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def add_save_options(parser: argparse.ArgumentParser) -> None:
    """``--results-dir``, ``--machine`` and ``--no-save`` for a benchmark script."""
    group = parser.add_argument_group("saving the figures (benchmarks/bench_results.py)")
    group.add_argument("--results-dir", type=Path, default=DEFAULT_DIR,
                       help="root of the result files (default: benchmarks/results)")
    group.add_argument("--machine", default=None,
                       help="machine name in the path (default: $CTRBENCH_MACHINE or the host)")
    group.add_argument("--no-save", action="store_true", help="print only; write no JSON")


def save_from_args(script: str, args: argparse.Namespace,
                   rows: Sequence[Mapping[str, Any]]) -> Path | None:
    """:func:`save` with the options of :func:`add_save_options`; prints where it wrote."""
    if getattr(args, "no_save", False):
        return None
    path = save(script, args, rows, results_dir=getattr(args, "results_dir", None),
                machine=getattr(args, "machine", None))
    print(f"figures saved to {path}")
    return path


def load(path: Path) -> dict[str, Any]:
    """Read and check one result file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchResultError(f"cannot read benchmark result {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise BenchResultError(f"{path}: not a JSON object")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise BenchResultError(f"{path}: schema_version {doc.get('schema_version')!r}, this "
                               f"helper reads {SCHEMA_VERSION}")
    missing = [k for k in KEYS if k not in doc]
    if missing:
        raise BenchResultError(f"{path}: missing keys {', '.join(missing)}")
    if not isinstance(doc["rows"], list) or not all(isinstance(r, dict) for r in doc["rows"]):
        raise BenchResultError(f"{path}: rows must be a list of objects")
    doc["path"] = str(path)
    return doc


def find(script: str, results_dir: Path | None = None, machine: str | None = None
         ) -> list[dict[str, Any]]:
    """Every result of ``script`` (on ``machine``, or any), oldest first by date then path."""
    root = Path(results_dir or DEFAULT_DIR)
    pattern = f"{machine or '*'}/*-{script}.json"
    docs = [load(p) for p in sorted(root.glob(pattern))]
    docs = [d for d in docs if d["script"] == script]
    return sorted(docs, key=lambda d: (d["date"], d["path"]))


def latest(script: str, results_dir: Path | None = None, machine: str | None = None
           ) -> dict[str, Any] | None:
    """The newest result of ``script`` (see :func:`find`), or None."""
    docs = find(script, results_dir, machine)
    return docs[-1] if docs else None


def thread_counts(text: str) -> list[int]:
    """argparse ``type`` for ``--threads 1,2``: each count >= 1, at least one."""
    try:
        counts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("give at least one thread count, each >= 1")
    return counts


PEER_SCRIPTS = ("peer_throughput", "side_by_side")  # results that hold the peers' figures


def newest_peers(results_dir: Path | None = None, machine: str | None = None
                 ) -> dict[str, Any] | None:
    """The newest result holding the peers' figures on ``machine``: a ``peer_throughput`` or
    a ``side_by_side`` one (``peer_throughput.py --with-ctrbench``), whichever is newer."""
    docs = [d for script in PEER_SCRIPTS for d in find(script, results_dir, machine)]
    return max(docs, key=lambda d: (d["date"], d["path"]), default=None)


def peer_rates(doc: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """model -> library -> train samples/s of the peers in a peer_throughput or side_by_side
    result: the best of its "fit" and "step" figures and of its thread counts ({} without a
    result; ctrbench's own rows and the ratio rows of a side_by_side result are skipped)."""
    best: dict[str, dict[str, float]] = {}
    for r in (doc or {}).get("rows", []):
        if r.get("ratio_row") or r.get("library") in (None, "ctrbench"):
            continue
        rate = max(r.get("fit_samples_per_s") or 0.0, r.get("step_samples_per_s") or 0.0)
        per = best.setdefault(r["model"], {})
        per[r["library"]] = max(rate, per.get(r["library"], 0.0))
    return best


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench_results.py --script NAME --rows FILE`` (for shell scripts).

    FILE (``-`` = stdin) holds a JSON list of row objects, or one JSON object per line.
    Exit status 0 saved, 2 bad input (the message names it).
    """
    import sys

    parser = argparse.ArgumentParser(description="Save benchmark rows as a result file.")
    parser.add_argument("--script", required=True, help="benchmark name, e.g. gpu")
    parser.add_argument("--rows", required=True, help="JSON list or JSON lines; - for stdin")
    parser.add_argument("--args", default="{}", help="the benchmark's arguments, a JSON object")
    add_save_options(parser)
    opts = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if opts.rows == "-" else Path(opts.rows).read_text()
        stripped = text.strip()
        rows = (json.loads(stripped) if stripped.startswith("[")
                else [json.loads(line) for line in stripped.splitlines() if line.strip()])
        args = json.loads(opts.args)
        if not isinstance(args, dict) or not all(isinstance(r, dict) for r in rows):
            raise BenchResultError("--args must be a JSON object and every row a JSON object")
        if opts.no_save:
            return 0
        path = save(opts.script, args, rows, results_dir=opts.results_dir, machine=opts.machine)
    except (OSError, ValueError) as exc:  # BenchResultError and JSON errors are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
