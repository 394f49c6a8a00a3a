"""Epoch time under a fixed background load vs without it, per model (issue 13, part 1).

For every model, thread setting and round, runs one training epoch
(``ctrbench run -m MODEL -d DATASET --seed-list 0 --epochs 1 --force --device cpu``) in a fresh
process twice: once with nothing added ("quiet") and once while ``--busy`` processes spin
(``while True: pass``, started by this script and stopped by their pid after the run). The two
conditions alternate in order from round to round. The figure is the record's epoch
``train_seconds``; the ratio is loaded / quiet (best of rounds on each side). Target: <= 4x
with four busy processes (a fair share of 2 cores among 5 runnable processes is 2.5x).

"quiet" only means "no load added by this script": on a shared machine the others' load is
there too, and the 1-min load average beside each figure says how much.

A thread setting is ``auto`` (ctrbench's default) or a number, optionally with ``+POLICY`` to
set ``OMP_WAIT_POLICY`` in the child (``2+ACTIVE``: threads that spin while waiting, close to
the behaviour before ctrbench set PASSIVE). Figures only; nothing is asserted. Usage:
  python benchmarks/load_ratio.py --models lr,din,dien,mian --settings auto,1 --rounds 1
  python benchmarks/load_ratio.py --models table2 --busy 4       # every paper model
Results: printed, and one JSON under benchmarks/results/ (benchmarks/results/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result

# a spinner that stops once its parent (pid filled in) is gone, killed even by SIGKILL so that
# no `finally` ran: it checks its parent id after each ~10^6 empty iterations (tens of ms of
# pure spinning). The pid is passed in, not read at start: a parent killed before the child
# reads it would otherwise leave the child watching its new parent.
BUSY_CODE = ("import os\nwhile os.getppid() == {parent}:\n"
             "    for _ in range(1_000_000):\n        pass\n")


def start_busy(n: int) -> list[subprocess.Popen]:
    code = BUSY_CODE.format(parent=os.getpid())
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def one_epoch(model: str, dataset: str, setting: str, results: Path) -> dict[str, object]:
    """Train one epoch in a child process; the record's epoch row and the wall time."""
    threads, _, policy = setting.partition("+")
    env = dict(os.environ)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, "-m", "ctrbench.cli", "run", "-m", model, "-d", dataset,
           "--seed-list", "0", "--epochs", "1", "--force", "--device", "cpu", "-q",
           "--threads", threads, "--results", str(results)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    record_file = results / "runs" / dataset / model / "seed-0.json"
    if done.returncode != 0 or not record_file.exists():
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    record = json.loads(record_file.read_text())
    epoch = record["epochs"][0]
    return {"train_seconds": epoch["train_seconds"], "threads": epoch.get("threads"),
            "trained": record.get("n_parameters", 1) > 0,
            "load_avg_1m": epoch.get("load_avg_1m"), "process_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="table2", help="names, groups or globs")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--settings", default="auto,1", help="thread settings, comma-separated")
    parser.add_argument("--busy", type=int, default=4, help="background busy processes")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()

    from ctrbench.cards import resolve_model_spec
    from ctrbench.data.prepare import prepare_dataset

    models = resolve_model_spec(args.models)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    prepare_dataset(args.dataset)  # once, outside the clock
    measured: dict[tuple[str, str, str], list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, model in enumerate(models):
                for setting in settings:
                    order = ("quiet", "loaded") if (round_ + i) % 2 == 0 else ("loaded", "quiet")
                    for condition in order:
                        busy = start_busy(args.busy) if condition == "loaded" else []
                        try:
                            if busy:
                                time.sleep(1.0)  # let the spinners get scheduled
                            row = one_epoch(model, args.dataset, setting, Path(tmp))
                        finally:
                            stop_busy(busy)
                        measured.setdefault((model, setting, condition), []).append(row)
                        if not row["trained"]:
                            break  # e.g. pop: counts, no parameters, no training to time
                        print(f"round {round_ + 1} {model:>10} threads={setting:<9} "
                              f"{condition:>6}: {row['train_seconds']:8.2f} s/epoch "
                              f"(load {row['load_avg_1m']})", flush=True)

    rows, table = [], []
    for model in models:
        for setting in settings:
            if not all(measured.get((model, setting, c)) for c in ("quiet", "loaded")):
                print(f"{model}: nothing to train, no ratio", flush=True)
                continue
            quiet = measured[model, setting, "quiet"]
            loaded = measured[model, setting, "loaded"]
            q = min(r["train_seconds"] for r in quiet)
            lo = min(r["train_seconds"] for r in loaded)
            rows.append({"model": model, "setting": setting, "busy": args.busy,
                         "quiet_seconds": q, "loaded_seconds": lo, "ratio": lo / q,
                         "threads": quiet[0]["threads"],
                         "quiet_load_avg_1m": [r["load_avg_1m"] for r in quiet],
                         "loaded_load_avg_1m": [r["load_avg_1m"] for r in loaded]})
            table.append([model, setting, quiet[0]["threads"], f"{q:.2f}", f"{lo:.2f}",
                          f"{lo / q:.2f}x", ", ".join(str(r["load_avg_1m"]) for r in quiet),
                          ", ".join(str(r["load_avg_1m"]) for r in loaded)])
    print(f"\nOne epoch on {args.dataset}, {args.busy} busy processes vs none added, best of "
          f"{args.rounds} round(s); target loaded/quiet <= 4x")
    print(tabulate(table, headers=["model", "setting", "threads", "quiet s", "loaded s",
                                   "loaded/quiet", "load avg (quiet)", "load avg (loaded)"]))
    path = write_result("load_ratio.py", vars(args), rows, args.out)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
