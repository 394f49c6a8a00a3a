"""Errors a user can cause. The CLI turns them into one clean message and exit status 1.

Exit statuses of the ``ctrbench`` command (``docs/reliability.md``): 0 success; 1 a user error
(bad name, bad value, bad file, a disk that refuses writes) or, for ``run``, a run that failed,
was refused or could not be saved; 2 a usage error (click) — ``check`` has its own codes; 130
interrupted (Ctrl-C); 128 + N killed by signal N (SIGTERM: 143).
"""

from __future__ import annotations

import errno
import signal


class CtrbenchError(Exception):
    """A user-facing error: bad name, bad card, bad file, failed download.

    ``hint`` is an optional second line telling the user what to do next.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class UnknownNameError(CtrbenchError):
    """A model, dataset, group or architecture name that is not registered."""


class CardError(CtrbenchError):
    """A card (TOML) that is missing, malformed or has unknown keys."""


class DataError(CtrbenchError):
    """Raw data that is missing, corrupt, or fails a checksum."""


class ChecksumError(DataError):
    """A downloaded or mirrored file whose hash differs from the card's."""


class IncomparableError(CtrbenchError):
    """Results that may not be compared (different dataset or protocol versions)."""


class WriteError(CtrbenchError):
    """A file that could not be written (read-only or full disk, no permission).

    Nothing half-written is left behind: the temporary file is removed. ``path`` is the file
    that was being written, ``errno`` the OS error number.
    """

    def __init__(self, path: object, exc: OSError) -> None:
        blocked = exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
        super().__init__(f"cannot write {path}: {exc.strerror or exc}"
                         + (" (a file stands where a folder must be, or the other way round)"
                            if blocked else ""),
                         hint=("move it away or choose another path" if blocked else
                               "free some space or make the directory writable")
                         + ", then run the same command again")
        self.path = path
        self.errno = exc.errno


#: OS errors that mean "the disk refused" rather than "ctrbench has a bug"
DISK_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


#: how many times a signal's handler (SIGINT, SIGTERM) has raised in this process, and the last
#: such signal
_signals_raised = 0
_last_signal: int | None = None


def install_termination_handler() -> None:
    """SIGTERM -> ``SystemExit(143)`` (exit status 128 + N), so that cleanup runs as after
    Ctrl-C: temporary files removed, locks released, no partial record left. Ctrl-C stays
    ``KeyboardInterrupt``. Both are counted (:func:`signal_exception`). Main thread only
    (where Python delivers signals)."""
    signal.signal(signal.SIGTERM, _raise_system_exit)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)


def note_signal(signum: int) -> None:
    """Count that signal ``signum``'s handler is raising (its own handlers do this)."""
    global _signals_raised, _last_signal
    _signals_raised += 1
    _last_signal = signum


def signals_raised() -> int:
    """How many signals have been raised so far: take it before a guarded call."""
    return _signals_raised


def signal_exception(since: int, cause: BaseException | None = None) -> BaseException | None:
    """The exception a signal's handler raised after :func:`signals_raised` was ``since``
    (``KeyboardInterrupt`` for SIGINT, ``SystemExit(128 + N)`` otherwise), or None. For code
    that catches ``Exception`` around library calls: a library may turn the handler's
    exception into another one (numpy's ``fromfile`` made a SIGTERM a ``TypeError``, and a
    killed run was recorded as failed), so ``raise signal_exception(since, exc) from exc``
    when this is not None. Only signals since ``since`` count: a Ctrl-C caught earlier in
    the same process (a notebook) says nothing about a later error."""
    if _signals_raised <= since or _last_signal is None:
        return None
    exc = KeyboardInterrupt() if _last_signal == signal.SIGINT else SystemExit(128 + _last_signal)
    exc.__cause__ = cause
    return exc


def raise_if_signalled(since: int) -> None:
    """Raise the exception of a signal whose handler raised after ``since``
    (:func:`signals_raised`) and yet did not stop the caller. Python runs a handler in whatever
    frame is current, also inside a finalizer or a weakref callback that a garbage collection
    started (SQLAlchemy's ``_collection_gced``, seen in a ``tune`` worker): there the exception
    is printed ("Exception ignored in ...") and dropped, and training went on for ever. Call
    it at a long loop's safe points (each training step)."""
    exc = signal_exception(since)
    if exc is not None:
        raise exc


def _raise_system_exit(signum: int, frame: object) -> None:
    note_signal(signum)
    raise SystemExit(128 + signum)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    note_signal(signum)
    raise KeyboardInterrupt
