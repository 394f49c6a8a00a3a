"""benchmarks/gpu_bench.py's throughput stage on the CPU, at tiny sizes (gpu.sh --dry-run's path).

On the H200 run of 2026-11-30 the stage crashed at ``pop`` (nothing to train, so no step to
time) and lost every model after it; a model that fails must not take the others with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_skips_models_with_nothing_to_train_and_keeps_the_rest(tmp_path):
    out = tmp_path / "throughput.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "CTRBENCH_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "throughput", "--device",
         "cpu", "--models", "pop,lr", "--rows", "800", "--warmup", "0", "--steps", "1",
         "--batch-sizes", "64", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pop skipped: nothing to train" in done.stdout
    rows = json.loads(out.read_text())
    assert [(r["model"], r["batch_size"]) for r in rows] == [("lr", 64)]
    assert rows[0]["samples_per_s"] > 0 and rows[0]["steps"] == 1


def test_the_cuda_subset_passes_with_the_cpu_standing_in_for_the_device(tmp_path):
    """gpu.sh's first stage runs ``pytest -m cuda tests/test_cuda.py`` only where a GPU is lent;
    without one those tests are skipped here. Run with ``CTRBENCH_TEST_DEVICE=cpu`` they check
    the same code paths (device splits, the CPU-vs-device step comparison, eval agreement), so a
    change that breaks them (a monkeypatch out of step with ``engine.devices.autocast``'s
    signature did) fails here instead of on the next GPU."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "CTRBENCH_TEST_DEVICE": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests" / "test_cuda.py"),
         "-p", "no:cacheprovider", "-p", "no:xdist", "--basetemp", str(tmp_path / "pytest")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
