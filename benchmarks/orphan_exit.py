"""How fast the workers of `ctrbench run --jobs 2` exit after their parent is killed (kill -9).

Builds a tiny planted store (tests/train_fixtures.py), starts a parent that runs two slow runs
in two spawned workers, waits until both hold their run locks, kills the parent with SIGKILL and
measures until both workers are gone. Prints one line per try and the figures as JSON.

    PYTHONPATH=. python benchmarks/orphan_exit.py [--tries 3]
"""

from __future__ import annotations

import ctrbench  # noqa: F401  first: OMP_WAIT_POLICY=PASSIVE before torch loads, as in runs

# isort: split
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import train_fixtures as tf  # noqa: E402

PARENT = """
import sys
sys.path.insert(0, {tests!r})
import torch
import train_fixtures
from pathlib import Path
from ctrbench.runs import runner
from ctrbench.data.store import open_store
if __name__ == "__main__":
    torch.set_num_threads(1)
    runner.install_termination_handler()
    handle = runner.DatasetHandle("planted", open_store({store!r}), {{"name": "planted"}})
    specs = runner.plan_runs(handle, runner.resolve_cards("slow_a,slow_b"), [0],
                             Path({results!r}))
    runner.execute(specs, handle, device="cpu", jobs=2, devices=["cpu"], show_progress=False)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def one_try(work: Path, env: dict[str, str], script: Path) -> float:
    results = work / "results"
    parent = subprocess.Popen([sys.executable, str(script)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = [results / "runs" / "planted" / m / "seed-0.lock" for m in ("slow_a", "slow_b")]
    workers: list[int] = []
    while len(workers) < 2:
        if parent.poll() is not None:
            raise RuntimeError("the parent exited before both workers started")
        workers = []
        for lock in locks:
            try:
                workers.append(int(json.loads(lock.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.01)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    killed = time.monotonic()
    while any(_alive(pid) for pid in workers):
        if time.monotonic() - killed > 120:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            return float("inf")
        time.sleep(0.01)
    return time.monotonic() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ctrbench-orphans-"))
    store = tf.make_planted_store(work / "planted", rows=(640, 200, 200))
    slow = tf.TINY_CARD.replace("epochs = 3", "epochs = 400").replace("patience = 2",
                                                                       "patience = 400")
    tf.write_cards(work / "cards", {"slow_a": slow, "slow_b": slow.replace("0.05", "0.04")})
    script = work / "parent.py"
    script.write_text(textwrap.dedent(PARENT.format(
        tests=str(ROOT / "tests"), store=str(store.path), results=str(work / "results"))))
    env = {**os.environ, "CTRBENCH_CARDS": str(work / "cards"),
           "CTRBENCH_HOME": str(work / "home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    seconds = []
    for i in range(args.tries):
        seconds.append(one_try(work, env, script))
        print(f"try {i + 1}: both workers gone {seconds[-1]:.2f} s after kill -9 of the parent")
    print(json.dumps({"orphan_exit_seconds": seconds}))


if __name__ == "__main__":
    main()
