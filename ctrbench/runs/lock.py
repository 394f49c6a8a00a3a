"""One exclusive lock file per run, so that concurrent ``ctrbench run`` processes never work on
the same (dataset, model, seed) at once.

The lock is created with ``O_CREAT | O_EXCL`` and holds the owner's pid, host and process start
time. A lock whose owner is dead (same host, pid gone or reused by another process) is stale and
is taken over: it is renamed away atomically (only one taker can win the rename) and checked to
be the stale lock that was judged, else put back. Locks of another host are never judged stale
(their pid cannot be checked); remove such a file by hand if its process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

HALF_WRITTEN_GRACE_S = 10.0  # an unreadable lock younger than this is still being written


def _proc_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of ``pid`` from /proc, or None if unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; fields after the last ')' are fixed
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote ``owner`` (a lock's content) still runs."""
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell: assume it runs
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    started = owner.get("start")
    current = _proc_start_time(pid)
    return started is None or current is None or started == current


class RunLock:
    """``with RunLock(path) as lock: if lock.acquired: ...``; released on exit."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.acquired = False
        self.holder: dict[str, Any] | None = None
        self._content = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "start": _proc_start_time(os.getpid()),
                                    "token": uuid.uuid4().hex}, sort_keys=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(self._content)
        return True

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _take_over(self, observed: str) -> None:
        """Move a stale lock (content ``observed``) out of the way, or leave a live one."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else took it away first
        if self._read(aside) == observed:
            aside.unlink(missing_ok=True)
            return
        try:  # we moved a fresh lock that replaced the stale one: put it back
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)

    def acquire(self, attempts: int = 3) -> bool:
        """Take the lock; False (with ``holder`` set) when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            if self._create():
                self.acquired = True
                return True
            observed = self._read(self.path)
            if observed is None:
                continue  # released meanwhile: try again
            try:
                owner = json.loads(observed)
            except json.JSONDecodeError:
                owner = None
            if not isinstance(owner, dict) or not owner:
                # being written right now, or left empty by a process killed while writing it
                if self._age() < HALF_WRITTEN_GRACE_S:
                    self.holder = {"pid": None, "note": "lock file being written"}
                    return False
            elif owner_alive(owner):
                self.holder = owner
                return False
            self._take_over(observed)
        return False

    def release(self) -> None:
        if self.acquired and self._read(self.path) == self._content:
            self.path.unlink(missing_ok=True)
        self.acquired = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
