"""RunLock under a termination signal that lands while the lock is being taken.

CI once saw a run killed with SIGTERM right after its lock file appeared leave the lock file
behind (tests/test_runner.py's kill test, under load): the signal's SystemExit was raised
between filelock taking the lock and RunLock recording it, so nothing released it. The signal
is now held back during the acquire and delivered after, when the lock can be released.

A signal mask is per thread, though: with a second thread (torch's pools) the kernel hands the
signal to that thread and Python runs its handler in the main thread at the next bytecode,
which may be before RunLock recorded the lock (CI run 2 of stop 20 saw "exists"). So the abandon
path asks filelock whether the lock is held rather than trusting RunLock's own flag.
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
if {threaded}:  # a second thread, as torch and BLAS pools make: it takes process signals
    import threading
    threading.Thread(target=threading.Event().wait, daemon=True).start()
real_acquire = filelock.FileLock.acquire

def acquire_then_terminated(self, *args, **kwargs):
    taken = real_acquire(self, *args, **kwargs)
    os.kill(os.getpid(), signal.{sig})  # the signal lands while the lock is being taken
    if {threaded}:
        import time
        time.sleep(0.3)  # the other thread takes it; the handler then runs right here
    return taken

filelock.FileLock.acquire = acquire_then_terminated
lock = RunLock({path!r})
try:
    lock.acquire()
finally:
    print("exists" if os.path.exists({path!r}) else "gone", flush=True)
"""


@pytest.mark.parametrize("threaded", [False, True], ids=["one-thread", "threaded"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_termination_while_taking_the_lock_leaves_no_lock_file(tmp_path, sig, threaded):
    path = tmp_path / "runs" / "seed-0.lock"
    script = tmp_path / "take.py"
    script.write_text(textwrap.dedent(SCRIPT.format(root=str(ROOT), path=str(path), sig=sig,
                                                      threaded=threaded)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0, done.stdout  # the signal still ends the process
    assert done.stdout.strip() == "gone", done.stderr[-1500:]
    assert not path.exists()
    if sig == "SIGTERM":
        assert done.returncode == 128 + signal.SIGTERM
