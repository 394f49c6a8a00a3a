"""Worker processes that each do one task at a time, where a dead worker costs only its task.

``ctrbench run --jobs N`` used :class:`concurrent.futures.ProcessPoolExecutor`, which cannot
survive the death of one worker (kill -9, an OOM kill, a crash in native code): the whole pool
breaks, the other workers are terminated mid-run and every pending task fails with
``BrokenProcessPool``. Here the parent knows which task each worker holds (it sends one task
at a time over the worker's own pipe, and the worker says when it takes it): when a worker dies
holding a task it took, ``on_lost(index, exitcode)`` gives that task's result; a task sent to a
worker that died before taking it (killed while idle between two tasks) goes to a new worker.
A new worker takes the next task, and the others go on undisturbed.

The parent waits on the workers' pipes and process sentinels (no polling, no timeouts). On any
exception in the parent (Ctrl-C, SIGTERM) every worker is sent SIGTERM, joined (``GRACE_S``),
killed if still alive, and the exception propagates.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

GRACE_S = 30.0  # seconds a terminated worker gets to release its lock before it is killed
TAKEN, DONE = "taken", "done"  # a worker's two messages per task


def worker_loop(conn: Any, init: Callable[..., None], init_args: tuple,
                call: Callable[[Any], Any]) -> None:
    """In the child: ``init(*init_args)``, then for each ``(index, payload)`` received send
    ``(TAKEN, index)`` and then ``(DONE, index, call(payload))``, until ``None`` or the parent's
    end closes. ``SystemExit`` (SIGTERM) exits at once: no further task is started."""
    try:
        init(*init_args)
        while True:
            message = conn.recv()
            if message is None:
                return
            index, payload = message
            conn.send((TAKEN, index))
            conn.send((DONE, index, call(payload)))
    except (EOFError, BrokenPipeError):  # the parent is gone
        return
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)


def how_it_died(exitcode: int | None) -> str:
    """A worker's exit code in words, with the usual cause."""
    if exitcode is None:
        return "the run's worker process ended without an exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = {"SIGKILL": "kill -9, or out of memory?", "SIGTERM": "kill?"}.get(
            name, "a crash in native code?")
        return f"the run's worker process was killed by {name} ({cause})"
    if exitcode == 128 + signal.SIGTERM:  # our own handler's exit: SIGTERM -> SystemExit(143)
        return "the run's worker process was terminated by SIGTERM (kill?)"
    return f"the run's worker process exited with status {exitcode} without a result"


@dataclass
class _Worker:
    process: Any
    conn: Any
    slot: int
    task: int | None = None
    taken: bool = False  # it said it took ``task``: its death then loses the task
    answered: int = 0


def _receive(worker: _Worker) -> tuple[tuple[Any] | None, bool]:
    """Read what ``worker`` sent: ``((result,), _)`` once it answered, else ``(None, gone)``
    where ``gone`` says its pipe is closed (it died). Notes a ``TAKEN``."""
    try:
        while worker.conn.poll():
            message = worker.conn.recv()
            if message[0] == DONE:
                return (message[2],), False
            worker.taken = True
    except Exception:  # EOF, or cut short by its death
        return None, True
    return None, False


def run_tasks(payloads: Sequence[Any], *, workers: int, init: Callable[..., None],
              init_args: Callable[[int], tuple], call: Callable[[Any], Any],
              on_done: Callable[[int, Any], None],
              on_lost: Callable[[int, int | None], None]) -> None:
    """Run ``call(payload)`` for every payload in at most ``workers`` spawned processes.

    ``init(*init_args(slot))`` prepares each process (``slot`` in ``0..workers-1``; a worker
    that replaces a dead one gets its slot). ``on_done(index, result)`` for each answer;
    ``on_lost(index, exitcode)`` when the worker holding task ``index`` died without one.
    ``init`` and ``call`` must be importable module-level functions (spawn pickles them).
    """
    ctx = mp.get_context("spawn")
    todo = deque(range(len(payloads)))
    idle_slots = list(range(min(workers, len(payloads))))
    busy: list[_Worker] = []
    pool: list[_Worker] = []

    def start(slot: int) -> _Worker:
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(target=worker_loop, name=f"ctrbench-worker-{slot}",
                              args=(child_end, init, init_args(slot), call))
        process.start()
        child_end.close()
        worker = _Worker(process, parent_end, slot)
        pool.append(worker)
        return worker

    def give(worker: _Worker) -> None:
        index = todo.popleft()
        try:
            worker.conn.send((index, payloads[index]))
        except OSError:  # it died before taking the task
            retire(worker)
            untaken(worker, index)
            return
        worker.task, worker.taken = index, False
        busy.append(worker)

    def untaken(worker: _Worker, index: int) -> None:
        """A task whose worker died before taking it goes back, unless that worker never took
        any (one that cannot start would else be replaced forever): then it is lost."""
        if worker.answered:
            todo.appendleft(index)
        else:
            on_lost(index, worker.process.exitcode)

    def retire(worker: _Worker) -> None:
        worker.conn.close()
        worker.process.join()
        pool.remove(worker)
        idle_slots.append(worker.slot)

    try:
        while todo or busy:
            while todo and idle_slots:
                give(start(idle_slots.pop(0)))
            ready = multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                answer, gone = _receive(worker)
                if answer is None and not (gone or worker.process.sentinel in ready):
                    continue  # it took its task and is working on it
                busy.remove(worker)
                index, worker.task = worker.task, None
                if answer is None:  # died holding the task, taken or not
                    retire(worker)
                    if worker.taken:
                        on_lost(index, worker.process.exitcode)
                    else:
                        untaken(worker, index)
                    continue
                worker.answered += 1
                on_done(index, answer[0])
                if todo:
                    give(worker)
                else:
                    try:
                        worker.conn.send(None)
                    except OSError:
                        pass  # gone already: retired below
        for worker in list(pool):
            retire(worker)
    except BaseException:  # Ctrl-C or SIGTERM in the parent: stop the workers cleanly
        for worker in pool:
            if worker.process.is_alive():
                worker.process.terminate()  # SIGTERM -> SystemExit: its lock is released
        for worker in pool:
            worker.process.join(timeout=GRACE_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        raise
