"""Issue 12, D7: the workers of a `--jobs 2` run whose parent is killed with kill -9 notice the
dead parent, stop their runs (locks released, no record written) and exit, instead of finishing
and then hanging forever on a pipe. Real processes, a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import train_fixtures as tf

from ctrbench.runs import runner

HERE = Path(__file__).resolve().parent
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
import train_fixtures
from pathlib import Path
from ctrbench.runs import runner
from ctrbench.data.store import open_store
if __name__ == "__main__":  # spawned workers import this file as their main module
    torch.set_num_threads(1)
    runner.install_termination_handler()
    handle = runner.DatasetHandle("planted", open_store({store!r}), {{"name": "planted"}})
    cards = runner.resolve_cards("tiny_a,tiny_b")
    specs = runner.plan_runs(handle, cards, [0], Path({results!r}))
    runner.execute(specs, handle, device="cpu", jobs=2, devices=["cpu"], show_progress=False)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_the_parent_is_killed(tmp_path, monkeypatch):
    store = tf.make_planted_store(tmp_path / "planted", rows=(640, 200, 200))
    slow = tf.TINY_CARD.replace("epochs = 3", "epochs = 400").replace("patience = 2",
                                                                       "patience = 400")
    tf.write_cards(tmp_path / "cards", {"tiny_a": slow, "tiny_b": slow.replace("0.05", "0.04")})
    env = {**os.environ, "CTRBENCH_CARDS": str(tmp_path / "cards"),
           "CTRBENCH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(HERE), store=str(store.path),
                                                    results=str(results))))
    parent = subprocess.Popen([sys.executable, str(script)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = [results / "runs" / "planted" / m / "seed-0.lock" for m in ("tiny_a", "tiny_b")]
    workers: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and parent.poll() is None and len(workers) < 2:
            workers = []
            for lock in locks:
                try:
                    workers.append(int(json.loads(lock.read_text())["pid"]))
                except (OSError, ValueError, KeyError, TypeError):
                    pass
            time.sleep(0.05)
        assert len(workers) == 2, "the two workers never started their runs"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 60
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "orphaned workers are still running"
        assert not any(lock.exists() for lock in locks)  # released on the way out
        assert not list(results.rglob("seed-*.json"))  # the stopped runs left no record
    finally:
        for pid in workers:  # before the fix they would run on: end them (ours, by pid)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    handle = runner.DatasetHandle("planted", store, {"name": "planted"})
    specs = runner.plan_runs(handle, runner.resolve_cards("tiny_a,tiny_b"), [0], results)
    assert runner.pending(specs) == specs  # the next `ctrbench run` does them again
