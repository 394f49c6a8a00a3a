"""RunLock under a termination signal that lands while the lock is being taken.

CI once saw a run killed with SIGTERM right after its lock file appeared leave the lock file
behind (tests/test_runner.py's kill test, under load): the signal's SystemExit was raised
between filelock taking the lock and RunLock recording it, so nothing released it. The signal
is now held back during the acquire and delivered after, when the lock can be released.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import filelock
from ctrbench.runs import runner
from ctrbench.runs.lock import RunLock

runner.install_termination_handler()
real_acquire = filelock.FileLock.acquire

def acquire_then_terminated(self, *args, **kwargs):
    taken = real_acquire(self, *args, **kwargs)
    os.kill(os.getpid(), signal.{sig})  # the signal lands while the lock is being taken
    return taken

filelock.FileLock.acquire = acquire_then_terminated
lock = RunLock({path!r})
try:
    lock.acquire()
finally:
    print("exists" if os.path.exists({path!r}) else "gone", flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_termination_while_taking_the_lock_leaves_no_lock_file(tmp_path, sig):
    path = tmp_path / "runs" / "seed-0.lock"
    script = tmp_path / "take.py"
    script.write_text(textwrap.dedent(SCRIPT.format(root=str(ROOT), path=str(path), sig=sig)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0, done.stdout  # the signal still ends the process
    assert done.stdout.strip() == "gone", done.stderr[-1500:]
    assert not path.exists()
    if sig == "SIGTERM":
        assert done.returncode == 128 + signal.SIGTERM
