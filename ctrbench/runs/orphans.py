"""Worker processes that outlive their parent stop instead of hanging.

``ctrbench run --jobs N`` trains in spawned worker processes. When the parent is killed without
a chance to stop them (kill -9, an OOM kill), a worker used to finish its run, then block forever
on the pipe to the dead parent, holding its memory. :func:`exit_when_parent_dies` starts a daemon
thread that waits on the parent's sentinel (a pipe that becomes readable when the parent
exits, whatever the cause); it then sends SIGTERM to its own process, which the worker turns
into ``SystemExit`` (the run's lock is released and no record is written: the next ``ctrbench
run`` does the run again), and exits hard if that has not happened within ``grace`` seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time

GRACE_S = 30.0  # seconds between the SIGTERM to ourselves and a hard exit
POLL_S = 1.0  # polling interval when no sentinel is available


def _wait_for_parent_exit(parent_pid: int) -> None:
    parent = mp.parent_process()
    if parent is not None and parent.sentinel is not None:
        multiprocessing.connection.wait([parent.sentinel])
        return
    while os.getppid() == parent_pid:  # pragma: no cover - spawn always gives a sentinel
        time.sleep(POLL_S)


def _watch(parent_pid: int, grace: float) -> None:
    _wait_for_parent_exit(parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(128 + signal.SIGTERM)


def exit_when_parent_dies(grace: float = GRACE_S) -> threading.Thread:
    """Watch the parent from a daemon thread; call once in each worker process."""
    thread = threading.Thread(target=_watch, args=(os.getppid(), grace), daemon=True,
                              name="ctrbench-parent-watch")
    thread.start()
    return thread
