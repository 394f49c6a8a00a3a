"""One exclusive lock per run, so that concurrent ``ctrbench run`` processes never work on the
same (dataset, model, seed) at once.

The lock is an OS lock (``flock``, through the ``filelock`` package) on ``seed-<k>.lock`` beside
the record: the kernel drops it when its process dies, however it dies (kill -9 included), so a
dead owner never blocks anyone and no staleness has to be guessed. The holder writes its pid,
host, start time and run id into the file (for the messages only: "in progress (pid N on
host)", or that another configuration holds it). A contender that finds no run id reads the
file again for up to half a second, since the holder writes it just after its flock; a file
that still names none (an older ctrbench's) reads as this run in progress. On
release the holder unlinks the file while it still holds the lock; a peer that opened the old
file meanwhile sees it unlinked (filelock checks ``st_nlink``) and tries the path again, so two
processes never both believe they hold the lock. A lock file that no live process holds (a
killed holder's, an older ctrbench's) is empty of meaning: the next run takes it, whatever it
names.

Needs a file system with working ``flock`` (local disks, NFSv4, Lustre with ``flock``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

HOLDER_READS = 50  # re-reads of a held lock file naming no run id (yet): its holder writes
HOLDER_READ_PAUSE_S = 0.01  # it right after its flock, so 0.5 s in all is ample
ATTEMPTS = 3  # a peer may release (and unlink) the file between our open and our flock
DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP")
                         if hasattr(signal, name))


@contextlib.contextmanager
def termination_deferred() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGHUP back while inside (they are delivered on the way out),
    so that a termination cannot land between taking the lock and recording that we hold it."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:  # pragma: no cover - not on this platform
        yield
        return
    old = mask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


def process_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of ``pid`` from /proc, or None if unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name (field 2) may hold spaces
    return fields[19] if len(fields) > 19 else None


def owner_info(run_id: str | None = None) -> dict[str, Any]:
    """What a holder writes into its lock file: pid, host, process start time and, when given,
    the run id it works on."""
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "start": process_start_time(os.getpid())}
    return info if run_id is None else {**info, "run_id": run_id}


def _file_lock(path: Path) -> FileLock:
    """A non-blocking ``FileLock``; no soft (marker-file) fallback where ``flock`` is missing,
    which is then an error said once (``fallback_to_soft`` exists in newer filelock only)."""
    try:
        return FileLock(str(path), timeout=0, fallback_to_soft=False)
    except TypeError:  # pragma: no cover - a filelock without the option
        return FileLock(str(path), timeout=0)


class RunLock:
    """``with RunLock(path) as lock: if lock.acquired: ...``; released on exit.

    ``acquire`` raises ``OSError`` when the lock file cannot be created (read-only or full
    disk): the caller turns it into a clear message before any work starts.
    """

    def __init__(self, path: Path, run_id: str | None = None) -> None:
        self.path = Path(path)
        self.run_id = run_id  # written into the file for a contender's message
        self.acquired = False
        self.holder: dict[str, Any] | None = None
        self._lock = _file_lock(self.path)
        self._inode: tuple[int, int] | None = None

    def _read_holder(self) -> dict[str, Any]:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            owner = {}
        return owner if isinstance(owner, dict) else {}

    def _holder_once_written(self) -> dict[str, Any] | None:
        """What the live holder wrote into the lock file, read again while it names no run id
        (caught between its flock and its write), at most ``HOLDER_READS`` times: an older
        ctrbench never writes one. None when the holder released (unlinked) it meanwhile."""
        holder: dict[str, Any] = {}
        for read in range(HOLDER_READS + 1):
            if read:
                time.sleep(HOLDER_READ_PAUSE_S)
            if not self.path.exists():
                return None
            holder = self._read_holder()
            if "run_id" in holder:
                break
        return holder or {"pid": None}

    def acquire(self) -> bool:
        """Take the lock without waiting for its holder; False (with ``holder`` set, read for up
        to 0.5 s while it names no run id) when another holds it.

        A termination signal that arrives meanwhile is held back in this thread until the lock
        is taken and recorded. The mask is per thread, so in a process with other threads
        (torch's pools) the handler may still run in the middle of ``_take``; either way its
        exception (SIGTERM -> SystemExit under the runner's handler) abandons whatever filelock
        holds, recorded or not, before it propagates.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with termination_deferred():
                return self._take()
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Release after an interrupted acquire: filelock's own state says whether we hold the
        lock, since the interruption may come before ``acquired`` was set. Holding the flock
        means the file at ``path`` is ours (filelock re-checks the link after locking), so it
        may be unlinked."""
        if self._lock.is_locked and not self.acquired:
            try:
                self.path.unlink()
            except OSError:
                pass
            finally:
                self._lock.release(force=True)
        self.release()

    def _take(self) -> bool:
        for _ in range(ATTEMPTS):
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                holder = self._holder_once_written()
                if holder is None:
                    continue  # released and unlinked meanwhile: try the new file
                self.holder = holder
                return False
            stat = os.stat(self.path)
            self._inode = (stat.st_dev, stat.st_ino)
            self.acquired = True
            try:  # informational only: a full disk must not cost us the lock
                self.path.write_text(json.dumps(owner_info(self.run_id), sort_keys=True))
            except OSError:
                pass
            return True
        self.holder = {"pid": None}
        return False

    def release(self) -> None:
        if not self.acquired:
            return
        try:
            stat = os.stat(self.path)
            if (stat.st_dev, stat.st_ino) == self._inode:
                self.path.unlink()  # still holding it: peers that opened it will retry
        except OSError:
            pass  # gone already, or a read-only directory: the kernel lock still goes
        finally:
            self._lock.release()
            self.acquired = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
