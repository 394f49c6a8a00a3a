"""Preparation from raw at real-data scale: wall time per stage and peak memory.

Generates synthetic raw files the size of Amazon Electronics (1,689,188 reviews, 498,196 meta
lines) and/or Books (8,898,041 reviews, 2,370,585 meta lines), then prepares them through the real
path: the synthetic reader hands the files to the Amazon reader, then the protocol builder
(with the oracle scoring every sample) and the store writer. Each of the two steps runs in its
own subprocess, so its peak RSS (``VmHWM`` from /proc/self/status, ``ru_maxrss`` as a fallback)
is its own. Prints figures; asserts nothing (timings are not tests).

Targets: Electronics < 3 min and < 4 GB; Books < 15 min and < 16 GB (preparation). Wall and CPU
seconds are both printed: on a shared machine, CPU seconds show what contention hides.

Usage:
    python benchmarks/prepare_scale.py                      # electronics
    python benchmarks/prepare_scale.py --scale electronics --scale books --work /data/bench
    OMP_NUM_THREADS=2 python benchmarks/prepare_scale.py --json results.json

The figures are also saved as one row per scale in
``benchmarks/results/<machine>/<commit>-prepare_scale.json`` (``--no-save`` to skip; see
``benchmarks/bench_results.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/
from bench_results import add_save_options, save_from_args

TARGETS = {"default": (60.0, 1024.0),  # a quick check of the script itself
           "electronics": (180.0, 4096.0), "books": (900.0, 16384.0)}  # seconds, MB

CARD = """reader = "synthetic"
protocol = "din"
description = "synthetic data at {scale} scale (benchmark)"
[reader_params]
scale = "{scale}"
seed = {seed}
[fields]
user = ["user_id", "hist_len_bucket", "mean_rating_bucket", "fav_cate", "tenure_bucket",
        "occupation", "age"]
context = ["year", "month", "weekday", "gap_bucket"]
"""

# Runs in a child process: one step, timed per stage, reporting its own peak memory.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def peak_mb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

stages = []
oracle_seconds = [0.0]
def timed(name, fn):
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), cpu_seconds()
        out = fn(*args, **kwargs)
        stages.append({"stage": name, "seconds": time.perf_counter() - start,
                       "cpu_seconds": cpu_seconds() - cpu, "peak_mb": peak_mb()})
        return out
    return wrapper

def accumulated(fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            oracle_seconds[0] += time.perf_counter() - start
    return wrapper

from ctrbench.cards import load_dataset_card
from ctrbench.progress import set_mode
set_mode("quiet")
card = load_dataset_card(sys.argv[2])
start = time.perf_counter()
if sys.argv[1] == "generate":
    from ctrbench.data.sources.synthetic import ensure_generated, world_dir
    from ctrbench.data.synthetic import world_params
    params = world_params(card.reader_params)
    timed("generate raw files", ensure_generated)(world_dir(card.name, params), params)
else:
    import ctrbench.data.prepare as prepare
    from ctrbench.data.synthetic import SyntheticOracle
    SyntheticOracle.score = accumulated(SyntheticOracle.score)
    prepare.read_source = timed("read (amazon reader + users + oracle)", prepare.read_source)
    prepare.build_samples = timed("build (din protocol + oracle scores)", prepare.build_samples)
    prepare._replace_store = timed("write store", prepare._replace_store)
    data = prepare.prepare(card, force=True).data
    stages.append({"oracle_seconds": oracle_seconds[0]})
    stages.append({"rows": {s: data.num_rows(s) for s in ("train", "valid", "test")}})
print(json.dumps({"total_seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds(),
                  "peak_mb": peak_mb(), "stages": stages}))
"""


def run_step(step: str, card_name: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, step, card_name], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{step} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scale(scale: str, work: Path, seed: int) -> dict:
    cards = work / "cards" / "datasets"
    cards.mkdir(parents=True, exist_ok=True)
    name = f"synthetic-{scale}-bench"
    (cards / f"{name}.toml").write_text(CARD.format(scale=scale, seed=seed))
    env = dict(os.environ, CTRBENCH_HOME=str(work / "home"), CTRBENCH_CARDS=str(work / "cards"))
    generated = run_step("generate", name, env)
    prepared = run_step("prepare", name, env)
    return {"scale": scale, "generate": generated, "prepare": prepared}


def print_report(result: dict) -> None:
    scale = result["scale"]
    seconds_target, mb_target = TARGETS[scale]
    print(f"\n== {scale} scale ==")
    for step in ("generate", "prepare"):
        info = result[step]
        for stage in info["stages"]:
            if "rows" in stage:
                rows = ", ".join(f"{k} {v:,}" for k, v in stage["rows"].items())
                print(f"  rows: {rows}")
            elif "oracle_seconds" in stage:
                print(f"    (of which oracle scoring {stage['oracle_seconds']:.1f} s wall)")
            else:
                print(f"  {stage['stage']:<40s} {stage['seconds']:8.1f} s wall "
                      f"{stage['cpu_seconds']:8.1f} s cpu   peak so far "
                      f"{stage['peak_mb']:6.0f} MB")
        line = (f"  {step + ' total':<40s} {info['total_seconds']:8.1f} s wall "
                f"{info['cpu_seconds']:8.1f} s cpu   peak {info['peak_mb']:6.0f} MB")
        if step == "prepare":
            ok = info["total_seconds"] < seconds_target and info["peak_mb"] < mb_target
            line += (f"   target < {seconds_target / 60:.0f} min, < {mb_target / 1024:.0f} GB: "
                     f"{'met' if ok else 'NOT met'}")
        print(line)


STAGE_KEYS = {"read (amazon reader + users + oracle)": "read", "write store": "write",
              "build (din protocol + oracle scores)": "build"}


def flat_row(result: dict) -> dict:
    """One scale's figures as a flat row (the saved JSON's ``rows``)."""
    seconds_target, mb_target = TARGETS[result["scale"]]
    row: dict = {"scale": result["scale"]}
    for step in ("generate", "prepare"):
        info = result[step]
        row.update({f"{step}_seconds": round(info["total_seconds"], 2),
                    f"{step}_cpu_seconds": round(info["cpu_seconds"], 2),
                    f"{step}_peak_mb": round(info["peak_mb"], 1)})
        for stage in info["stages"]:
            if "rows" in stage:
                row.update({f"{split}_rows": n for split, n in stage["rows"].items()})
            elif "oracle_seconds" in stage:
                row["oracle_seconds"] = round(stage["oracle_seconds"], 2)
            elif stage["stage"] in STAGE_KEYS and step == "prepare":
                row[f"{STAGE_KEYS[stage['stage']]}_seconds"] = round(stage["seconds"], 2)
    row.update({"target_seconds": seconds_target, "target_mb": mb_target,
                "target_met": row["prepare_seconds"] < seconds_target
                and row["prepare_peak_mb"] < mb_target})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", action="append", choices=sorted(TARGETS),
                        help="electronics (default) and/or books; repeat for both")
    parser.add_argument("--work", type=Path, default=None,
                        help="work directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    add_save_options(parser)
    args = parser.parse_args()
    scales = args.scale or ["electronics"]
    work = args.work or Path(tempfile.mkdtemp(prefix="ctrbench-prepare-scale-"))
    print(f"work directory: {work}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}; "
          f"cpus {os.cpu_count()}; started {time.strftime('%H:%M:%S')}")
    results = []
    try:
        for scale in scales:
            results.append(bench_scale(scale, work, args.seed))
            print_report(results[-1])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    save_from_args("prepare_scale", args, [flat_row(r) for r in results])


if __name__ == "__main__":
    main()
