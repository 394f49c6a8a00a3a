"""The ``ctrbench`` command line: a thin click group; each command wraps one library call.

Command modules live in ``ctrbench/commands/``; each exposes click commands that are added here.
User errors (:class:`ctrbench.errors.CtrbenchError`) become one message and exit status 1;
usage errors exit 2 (click); bugs keep their traceback.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
import threading

import click

from ctrbench import __version__
from ctrbench.errors import DISK_ERRNOS, CtrbenchError, install_termination_handler

# (module, attribute) of each command, in help order
_COMMANDS = (
    ("ctrbench.commands.download", "download"),
    ("ctrbench.commands.data", "prepare"),
    ("ctrbench.commands.stats", "stats"),
    ("ctrbench.commands.stats", "generate"),
    ("ctrbench.commands.run", "run"),
    ("ctrbench.commands.run", "plan"),
    ("ctrbench.commands.report", "report"),
    ("ctrbench.commands.report", "check"),
    ("ctrbench.commands.tune", "tune"),
    ("ctrbench.commands.listing", "list_"),
)


class CtrbenchGroup(click.Group):
    """Turns user errors into clean messages; Ctrl-C into exit 130 without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CtrbenchError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a disk that refuses writes is not a bug: one clear line
            if exc.errno not in DISK_ERRNOS:
                raise
            if _unreadable(exc):
                from ctrbench.data.sources import cannot_read  # the readers' own message

                raise click.ClickException(str(cannot_read(exc.filename, exc))) from None
            raise click.ClickException(
                f"cannot write {exc.filename or 'a file'}: {exc.strerror}\n  hint: free some "
                "space or make the directory writable, then run the same command again"
            ) from None
        except KeyboardInterrupt:
            click.echo(f"Interrupted; {_after_interrupt(ctx.invoked_subcommand)}", err=True)
            sys.exit(130)


def _after_interrupt(command: str | None) -> str:
    """What a Ctrl-C leaves, said for the command it stopped."""
    if command in ("run", "tune"):
        return ("finished results are kept, the next run resumes." if command == "run" else
                "finished trials are kept, the interrupted one is queued again; the same "
                "command resumes the study.")
    return "nothing half-written is taken for finished; run the same command again."


def _unreadable(exc: OSError) -> bool:
    """Whether a refused access was a read: its file exists and this process may not open it
    for reading (a write to a readable file, or to a new one, is not)."""
    if (exc.errno not in (errno.EACCES, errno.EPERM)
            or not isinstance(exc.filename, (str, os.PathLike))):
        return False
    try:
        os.stat(exc.filename)
    except OSError:
        return False  # missing or out of reach: not a file that was being read
    try:
        os.close(os.open(exc.filename, os.O_RDONLY | os.O_NONBLOCK))
    except PermissionError:
        return True
    except OSError:
        return False
    return False


@click.group(cls=CtrbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctrbench")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """Benchmark sequential CTR models honestly: seeds, significance, timings.

    \b
    Examples:
      ctrbench run --models table2 --dataset synthetic --seeds 3
      ctrbench report
      ctrbench check --baseline results/reference/ci-synthetic.csv --results .cache/ci-results
    """
    if threading.current_thread() is threading.main_thread():  # every command: SIGTERM runs
        install_termination_handler()  # its cleanup (temporary folders, locks), exit 143
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


for _module, _attr in _COMMANDS:
    main.add_command(getattr(importlib.import_module(_module), _attr))


if __name__ == "__main__":  # pragma: no cover
    main()
