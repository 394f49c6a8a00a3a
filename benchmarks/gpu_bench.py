"""The Python steps of benchmarks/gpu.sh (see there): throughput, the Books card, collecting.

  python benchmarks/gpu_bench.py throughput --device cuda --json T.json [--models table2]
      every model for --steps timed steps (after --warmup) at each of --batch-sizes, through
      the trainer's own TrainStep (bf16 autocast on CUDA) with the train split kept on the
      device; samples/s, ms/step and peak allocated memory per (model, batch).
  python benchmarks/gpu_bench.py books-card --scale books --cards DIR
      writes DIR/datasets/synthetic-<scale>-gpu.toml: the generator of
      ``ctrbench generate --scale <scale>`` read through the din protocol.
  python benchmarks/gpu_bench.py collect --work DIR --out DIR
      merges the stages' files into one JSON (benchmarks/results/README.md's schema).
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result

BOOKS_CARD = """reader = "synthetic"
protocol = "din"
description = "synthetic data at {scale} scale (benchmarks/gpu.sh)"
[reader_params]
scale = "{scale}"
seed = 2021
[fields]
user = ["user_id", "hist_len_bucket", "mean_rating_bucket", "fav_cate", "tenure_bucket",
        "occupation", "age"]
context = ["year", "month", "weekday", "gap_bucket"]
"""


def _train_steps(step, train, perm, batch_size: int, n: int, offset: int) -> None:
    """``n`` training steps on consecutive slices of ``perm`` (wrapping around)."""
    for i in range(n):
        start = ((offset + i) * batch_size) % max(1, train.rows - batch_size)
        batch, label = train.take(perm[start:start + batch_size])
        step(batch, label)


def throughput(args: argparse.Namespace) -> None:
    import torch
    from train_throughput import generated_store

    from ctrbench.cards import load_model_card, resolve_model_spec
    from ctrbench.engine.train import (
        SplitTensors,
        TrainStep,
        build_for_training,
        model_inputs,
        peak_memory_mb,
        reset_peak_memory,
        resolve_device,
    )

    device = resolve_device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        data = generated_store(Path(tmp), args.rows)
        train = SplitTensors(data, "train", device, model_inputs(data.schema))
        generator = torch.Generator().manual_seed(0)
        for name in resolve_model_spec(args.models):
            for batch_size in batch_sizes:
                card = load_model_card(name).with_overrides({"train": {"batch_size": batch_size}})
                torch.manual_seed(0)
                model = build_for_training(card, data.schema).to(device).train()
                if not any(p.requires_grad for p in model.parameters()):
                    print(f"{name:>10} skipped: nothing to train", flush=True)
                    break  # e.g. pop: scores are counts, there is no training step to time
                step = TrainStep(model, card.train, device)
                perm = torch.randperm(train.rows, generator=generator).to(train.storage)

                reset_peak_memory(device)
                try:
                    _train_steps(step, train, perm, batch_size, args.warmup, 0)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    _train_steps(step, train, perm, batch_size, args.steps, args.warmup)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                except (RuntimeError, ValueError) as exc:  # one model's failure is a figure too
                    rows_out.append({"model": name, "batch_size": batch_size,
                                     "error": f"{type(exc).__name__}: {exc}"[:500]})
                    print(f"{name:>10} B={batch_size:<5} FAILED: {exc}", flush=True)
                    step.close()
                    del model, step
                    continue
                seconds = time.perf_counter() - start
                row = {"model": name, "batch_size": batch_size, "steps": args.steps,
                       "samples_per_s": args.steps * batch_size / seconds,
                       "step_ms": seconds / args.steps * 1e3,
                       "peak_memory_mb": peak_memory_mb(device), "device": str(device),
                       "autocast": "bf16" if device.type == "cuda" else "none",
                       "split_on": str(train.storage)}
                rows_out.append(row)
                print(f"{name:>10} B={batch_size:<5} {row['samples_per_s']:>12,.0f} samples/s "
                      f"{row['step_ms']:8.2f} ms/step  peak {row['peak_memory_mb']:8.0f} MB",
                      flush=True)
                step.close()
                del model, step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                Path(args.json).write_text(json.dumps(rows_out, indent=1))  # kept if timed out
    Path(args.json).write_text(json.dumps(rows_out, indent=1))


def books_card(args: argparse.Namespace) -> None:
    folder = Path(args.cards) / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic-{args.scale}-gpu.toml"
    path.write_text(BOOKS_CARD.format(scale=args.scale))
    print(path.stem)


def _tests(work: Path) -> dict[str, object]:
    """pytest's junit XML -> counts (and the failures' names)."""
    path = work / "tests.xml"
    if not path.exists():
        return {"status": "missing"}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {**counts, "failed": failed, "pytest_seconds": float(suite.get("time", 0.0))}


def _books(work: Path) -> dict[str, object]:
    records = sorted((work / "results" / "runs").rglob("seed-*.json"))
    if not records:
        return {"status": "missing"}
    record = json.loads(records[-1].read_text())
    out: dict[str, object] = {"status": record["status"], "dataset": record["dataset"],
                              "model": record["model"], "error": record.get("error"),
                              "batch_size": record["model_config"]["train"]["batch_size"],
                              "device": record["environment"].get("device_name")}
    if record["epochs"]:
        epoch = record["epochs"][0]
        out.update({k: epoch[k] for k in ("train_seconds", "eval_seconds", "train_samples_per_s",
                                          "eval_samples_per_s", "peak_memory_mb", "valid_auc")})
        out["train_rows"] = round(epoch["train_samples_per_s"] * epoch["train_seconds"])
    out["test_auc"] = record.get("test", {}).get("auc")
    return out


def collect(args: argparse.Namespace) -> None:
    work = Path(args.work)
    stages = json.loads((work / "stages.json").read_text()) if (work / "stages.json").exists() \
        else {}
    rows: list[dict[str, object]] = [{"stage": "tests", **_tests(work),
                                      **stages.get("tests", {})}]
    part = work / "throughput.json"
    if part.exists():
        rows += [{"stage": "throughput", **row} for row in json.loads(part.read_text())]
    else:
        rows.append({"stage": "throughput", "status": "missing", **stages.get("throughput", {})})
    rows.append({"stage": "books_epoch", **_books(work), **stages.get("books", {})})
    path = write_result("gpu.sh", {"mode": args.mode, "stage_status": stages}, rows, args.out)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default="table2")
    p.add_argument("--batch-sizes", default="128,1024,4096")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--json", required=True)
    p.set_defaults(func=throughput)
    p = sub.add_parser("books-card")
    p.add_argument("--scale", default="books")
    p.add_argument("--cards", required=True)
    p.set_defaults(func=books_card)
    p = sub.add_parser("collect")
    p.add_argument("--work", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--mode", default="gpu")
    p.set_defaults(func=collect)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
