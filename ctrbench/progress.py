"""Progress for long work: a bar on a terminal, plain lines in logs and CI, nothing when quiet.

The library reports progress through :func:`progress`; the CLI decides where it goes
(``set_mode``). Everything is written to stderr so that tables on stdout stay clean; a
``warning: ...`` message is shown even when quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_MODE = "auto"  # "auto" | "bar" | "lines" | "quiet"


def set_mode(mode: str) -> None:
    global _MODE
    if mode not in ("auto", "bar", "lines", "quiet"):
        raise ValueError(mode)
    _MODE = mode


def _effective_mode() -> str:
    if _MODE != "auto":
        return _MODE
    return "bar" if sys.stderr.isatty() else "lines"


class Progress:
    """Counts work done out of ``total`` (or unknown), rendering at most every ``interval`` s."""

    def __init__(self, desc: str, total: int | None, unit: str, interval: float) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.mode = _effective_mode()
        self.interval = interval if self.mode == "bar" else max(interval, 10.0)
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self.postfix = ""

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._render(final=False)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.done / self.total
            core = f"{self.desc}: {self._bar()}{pct:5.1f}% {self.done:,}/{self.total:,} {self.unit}"
        else:
            core = f"{self.desc}: {self.done:,} {self.unit}"
        tail = f" {rate:,.0f} {self.unit}/s {elapsed:.1f}s"
        return core + tail + (f" {self.postfix}" if self.postfix else "")

    def _bar(self, width: int = 24) -> str:
        """``[####----] `` on a terminal; nothing in plain lines (logs, pipes)."""
        if self.mode != "bar":
            return ""
        filled = int(width * min(self.done, self.total) / self.total)
        return "[" + "#" * filled + "-" * (width - filled) + "] "

    def _render(self, final: bool) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "bar":
            sys.stderr.write("\r" + self._line() + ("\n" if final else ""))
        elif final or self.mode == "lines":
            sys.stderr.write(self._line() + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        self._render(final=True)


@contextmanager
def progress(desc: str, total: int | None = None, unit: str = "it",
             interval: float = 0.2) -> Iterator[Progress]:
    bar = Progress(desc, total, unit, interval)
    try:
        yield bar
    finally:
        bar.close()


def message(text: str) -> None:
    """A one-line status message on stderr (suppressed when quiet, unless a warning)."""
    if _effective_mode() != "quiet" or text.startswith("warning:"):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
