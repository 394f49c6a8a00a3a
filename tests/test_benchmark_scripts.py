"""The benchmark scripts measure what ``ctrbench run`` runs: OpenMP's wait policy.

``import ctrbench`` sets ``OMP_WAIT_POLICY=PASSIVE`` (ctrbench/openmp.py), but OpenMP reads it
once, when torch loads. ``train_throughput.py`` imported torch first, so its 2-thread figures
were taken with spinning threads that no ``ctrbench run`` uses (DIN at 2 threads: 13.8k
samples/s spinning vs 7.6k passive), against peers measured passive. Every script that imports
torch must import ctrbench before it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


#: the smallest sizes of the training A/B scripts' arguments
SMALL = ("--batch-size", "16", "--steps", "2", "--rounds", "1", "--rows", "200")


def run_script(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """``benchmarks/SCRIPT ARGS`` at the smallest sizes, saving under ``tmp_path/results`` for
    machine ``box-1``, with its own ``CTRBENCH_HOME``."""
    env = {**os.environ, "CTRBENCH_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--results-dir",
         str(tmp_path / "results"), "--machine", "box-1"],
        capture_output=True, text=True, env=env, timeout=300)


def saved_rows(tmp_path: Path, script: str) -> list[dict]:
    """The rows of the one result ``run_script`` saved for ``script`` (its stem)."""
    (saved,) = (tmp_path / "results" / "box-1").glob(f"*-{script}.json")
    return json.loads(saved.read_text())["rows"]


def _top_level_imports(path: Path) -> list[str]:
    """Module names of the top-level imports, in order (``__future__`` left out)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names.append(node.module or "")
    return names


# the entry points (benchmarks/peers/ holds modules that peer_throughput.py imports after ctrbench)
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py")
                 if any(n.split(".")[0] == "torch" for n in _top_level_imports(p)))


def test_the_scripts_that_import_torch_are_found():
    assert {"train_throughput.py", "peer_throughput.py", "cin_floor.py"} <= {
        p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(BENCHMARKS)))
def test_ctrbench_is_imported_before_torch(path):
    names = [n.split(".")[0] for n in _top_level_imports(path)]
    first_torch = names.index("torch")
    assert "ctrbench" in names[:first_torch], (
        f"{path.name} imports torch before ctrbench, so OpenMP starts with the spinning wait "
        f"policy, not the PASSIVE one ctrbench runs with")


def test_step_breakdown_times_each_phase_of_the_trainers_step(tmp_path):
    """benchmarks/step_breakdown.py runs the trainer's step phase by phase and saves one row per
    trained model with every phase, the whole step and their sum (figures only, nothing
    asserted on their size); pop, which trains nothing, is skipped."""
    done = run_script(tmp_path, "step_breakdown.py", "--models", "lr,din,pop", *SMALL)
    assert done.returncode == 0, done.stderr
    assert "sum of phases" in done.stdout and "pop: nothing to train" in done.stdout
    rows = saved_rows(tmp_path, "step_breakdown")
    assert [r["model"] for r in rows] == ["lr", "din"]
    for row in rows:
        assert row["optimizer"] == "adam" and row["batch_size"] == 16
        phases = [row[f"{p}_ms"] for p in ("take", "zero", "forward", "backward", "optimizer")]
        assert all(p > 0 for p in phases) and row["step_ms"] > 0
        assert abs(row["phases_sum_ms"] - sum(phases)) < 1e-3


def test_native_ab_times_each_kernel_on_and_off_and_restores_it(tmp_path):
    """benchmarks/native_ab.py saves one row per (model, kernel) with both step times and
    their ratio (figures only); an unknown kernel is refused by name."""
    done = run_script(tmp_path, "native_ab.py", "--models", "din,mian", "--kernels",
                      "dice,block", *SMALL)
    if "is not built here" in done.stderr:
        pytest.skip("no native kernels on this machine")
    assert done.returncode == 0, done.stderr
    rows = saved_rows(tmp_path, "native_ab")
    assert [(r["model"], r["kernel"]) for r in rows] == [
        ("din", "dice"), ("din", "block"), ("mian", "dice"), ("mian", "block")]
    for row in rows:
        assert row["native_ms"] > 0 and row["torch_ms"] > 0 and row["speedup"] > 0
    refused = run_script(tmp_path, "native_ab.py", "--kernels", "dice,fast_gemm")
    assert refused.returncode == 2 and "unknown kernel 'fast_gemm'" in refused.stderr


def test_precision_ab_times_float32_and_bf16_in_one_process(tmp_path):
    """benchmarks/precision_ab.py saves one row per model with both precisions' step times and
    their ratio (figures only)."""
    done = run_script(tmp_path, "precision_ab.py", "--models", "lr,xdeepfm", *SMALL)
    assert done.returncode == 0, done.stderr
    rows = saved_rows(tmp_path, "precision_ab")
    assert [r["model"] for r in rows] == ["lr", "xdeepfm"]
    for row in rows:
        assert row["float32_ms"] > 0 and row["bf16_ms"] > 0 and row["speedup"] > 0


def test_attention_kernel_times_both_lane_layouts(tmp_path):
    """benchmarks/attention_kernel.py saves one row per batch size with both layouts' forward
    and backward times (figures only)."""

    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attention_kernel.py"), "--batch-sizes", "8,16",
         "--rounds", "1", "--calls", "2", "--results-dir", str(tmp_path / "results"),
         "--machine", "box-1"], capture_output=True, text=True, timeout=300)
    if "is not built here" in done.stderr:
        pytest.skip("no native kernels on this machine")
    assert done.returncode == 0, done.stderr
    (saved,) = (tmp_path / "results" / "box-1").glob("*-attention_kernel.json")
    rows = json.loads(saved.read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [8, 16]
    for row in rows:
        assert row["head_lanes_forward_us"] > 0 and row["per_head_backward_us"] > 0


def test_load_ratios_busy_processes_stop_when_its_process_is_killed(tmp_path):
    """Killing load_ratio.py (SIGTERM, SIGKILL: no ``finally`` runs) used to leave its four
    spinning processes running for good, loading every later measurement on the machine; they
    now stop once their parent is gone."""
    import signal
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         f"sys.path.insert(0, {str(BENCHMARKS)!r})\n"
         "from load_ratio import start_busy\n"
         "print(' '.join(str(p.pid) for p in start_busy(2)), flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    try:
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in pids if _running(pid)]
        assert not alive, f"busy processes {alive} outlived their killed parent"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
