"""Where an Optuna study lives: SQLite (default), any SQLAlchemy URL, or a journal file.

- no ``--storage``: ``sqlite:///<results>/tuning/<study>.db``;
- ``postgresql://user:pass@host/db`` (or ``mysql://...``, ``sqlite:///path.db``): an RDB storage.
  A bare ``postgresql://`` URL uses psycopg2 when psycopg (3) is not installed;
- ``journal:PATH``: optuna's JournalStorage over an append-only file (works on NFS-less shared
  disks without a database server).

Trials left RUNNING by a killed worker are retried the same way on every storage
(:func:`requeue`): the trial is marked FAIL and its parameters are queued once more, with the
killed trial's training seed, so that the retry computes exactly what the killed trial would
have (one retry per trial). A trial stopped by Ctrl-C or SIGTERM is retried the same way at once
(:func:`retry_interrupted`; not counted as its retry). How a dead worker is found:

- on the same host, on every storage: each trial records its worker's host, pid and process
  start time; a RUNNING trial whose worker process no longer exists is taken over at once
  (:func:`reclaim_dead_workers`), with no heartbeat wait;
- on another host: RDB storages (SQLite, PostgreSQL) run a heartbeat (``heartbeat`` seconds) and
  a trial whose heartbeat is older than twice that is taken over by the next worker (the wait is
  announced); the journal storage has no heartbeat, so ``ctrbench tune --fail-running`` takes
  over every RUNNING trial (only when no other worker is alive).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ctrbench.errors import CtrbenchError
from ctrbench.runs.lock import process_start_time

# the RDBStorage argument that takes the stale-trial callback (renamed in optuna 4.9)
_STALE_CALLBACK_ARG = next(
    (name for name in ("heartbeat_stale_trial_callback", "failed_trial_callback")
     if name in inspect.signature(RDBStorage.__init__).parameters), "failed_trial_callback")

MAX_RETRY = 1  # a trial that kills its worker twice (an OOM) is not retried forever

JOURNAL_PREFIX = "journal:"
SQLITE_TIMEOUT_S = 60  # seconds a writer waits for SQLite's lock (several workers on one file)
OPEN_ATTEMPTS = 5  # workers starting together race to create optuna's tables: retry that
_CREATION_RACE = re.compile(r"already exists|UNIQUE constraint|duplicate key|UniqueViolation|"
                            r"database is locked", re.IGNORECASE)


@dataclass
class StudyStorage:
    """An opened storage, its URL for people (password hidden) and whether it has a heartbeat."""

    storage: BaseStorage
    display: str
    heartbeat: bool


def safe_file_name(study_name: str) -> str:
    """A study name as a file/directory name (``mian@books`` stays; ``/`` and spaces do not)."""
    return re.sub(r"[^A-Za-z0-9@._+-]", "_", study_name)


def default_storage_url(results_root: Path, study_name: str) -> str:
    path = Path(results_root) / "tuning" / f"{safe_file_name(study_name)}.db"
    return f"sqlite:///{path.resolve()}"


def redact(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (for tables and cards)."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        return url if parsed.password is None else parsed.render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _normalise_rdb_url(url: str) -> str:
    """Accept ``postgres://`` and bare ``postgresql://`` with whichever driver is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "e.g. sqlite:///study.db, postgresql://user:pass@host/db or journal:study.log"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise CtrbenchError(f"--storage {redact(url)!r} is not a storage URL",
                            hint=example) from None
    driver = parsed.drivername
    if driver.split("+")[0] == "sqlite" and (
            parsed.database in (None, "", ":memory:") or "mode=memory" in url
            or parsed.database.startswith("file::memory:")):
        raise CtrbenchError(
            f"--storage {redact(url)!r} keeps the study in memory: its trials are lost when "
            "the command ends (and the tuned card would name a study that is gone)",
            hint="give a file: sqlite:///results/tuning/study.db or journal:study.log")
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise CtrbenchError(
            f"--storage {redact(url)!r}: unknown storage scheme {driver!r}",
            hint=f"{example} (an SQLAlchemy database URL, or journal:PATH)") from None
    except ImportError:  # a known database whose driver is missing: said when opening it
        pass
    if driver in ("postgres", "postgresql"):
        has_v3 = importlib.util.find_spec("psycopg") is not None
        has_v2 = importlib.util.find_spec("psycopg2") is not None
        if not has_v3 and not has_v2:
            raise CtrbenchError("a PostgreSQL storage needs a driver",
                                hint="pip install 'ctrbench[postgres]' (psycopg2-binary)")
        parsed = parsed.set(drivername="postgresql+psycopg" if has_v3 else "postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def open_storage(url: str | None, results_root: Path, study_name: str,
                 heartbeat: int = 60) -> StudyStorage:
    """Open (creating when needed) the storage named by ``url``; ``heartbeat`` 0 disables it."""
    if heartbeat < 0:
        raise CtrbenchError("--heartbeat must be >= 0 seconds")
    if url is None:
        url = default_storage_url(results_root, study_name)
    if url.startswith(JOURNAL_PREFIX):
        return _open_journal(Path(url[len(JOURNAL_PREFIX):]))
    rdb_url = _normalise_rdb_url(url)
    engine_kwargs: dict = {}
    if rdb_url.startswith("sqlite"):
        db_path = rdb_url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            storage = _rdb_storage(rdb_url, engine_kwargs, heartbeat)
            break
        except ImportError as exc:
            raise CtrbenchError(f"cannot open storage {redact(url)}: {exc}",
                                hint="install the database driver (e.g. ctrbench[postgres])"
                                ) from None
        except Exception as exc:  # sqlalchemy OperationalError, bad database, refused connection
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if _CREATION_RACE.search(message) and attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.2 + random.random())  # another worker is creating the tables
                continue
            raise CtrbenchError(f"cannot open storage {redact(url)}: {message}",
                                hint="check the URL, that the server is running, and the "
                                     "user's password") from None
    return StudyStorage(storage=storage, display=redact(url), heartbeat=bool(heartbeat))


def _rdb_storage(rdb_url: str, engine_kwargs: dict, heartbeat: int) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        beat = {}
        if heartbeat:
            beat = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat,
                    _STALE_CALLBACK_ARG: _retry_stale}
        return RDBStorage(rdb_url, engine_kwargs=engine_kwargs, **beat)


def _open_journal(path: Path) -> StudyStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not str(path) or path.is_dir():
        raise CtrbenchError(f"--storage journal:{path}: expected a file path",
                            hint="e.g. --storage journal:results/tuning/mian@books.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise CtrbenchError(f"cannot open journal file {path}: {exc}") from None
    return StudyStorage(storage=storage, display=f"{JOURNAL_PREFIX}{path}", heartbeat=False)


def fail_stale(study: optuna.Study, handle: StudyStorage) -> None:
    """Mark trials whose worker's heartbeat stopped as FAIL (RDB storages with a heartbeat)."""
    if handle.heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def fail_running(study: optuna.Study) -> list[int]:
    """Take over every RUNNING trial (``--fail-running``: no other worker may be alive):
    FAIL, and its parameters retried (:func:`requeue`)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if requeue(study, t, "its worker is gone (taken over by --fail-running)")]


# --------------------------------------------------------------------------- killed trials
def worker_attrs() -> dict[str, str | None]:
    """What a trial records about the process that runs it (user attributes)."""
    return {"worker": f"{socket.gethostname()}:{os.getpid()}",
            "worker_start": process_start_time(os.getpid())}


def worker_is_dead(trial: FrozenTrial) -> bool:
    """True only when the trial's worker ran on this host and that process is gone."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host (or not recorded yet): cannot tell from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    started = trial.user_attrs.get("worker_start")
    current = process_start_time(int(pid))
    return started is not None and current is not None and started != current  # pid reused


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING ``trial`` FAIL with ``reason`` and queue its parameters once more with its
    training seed (once per original trial). True when this call failed it."""
    if trial.state != TrialState.RUNNING:
        return False
    storage = study._storage
    try:  # exactly one worker wins: the storage refuses to finish a finished trial twice
        storage.set_trial_user_attr(trial._trial_id, "error", reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    trial = storage.get_trial(trial._trial_id)
    _queue_retry(study, trial)
    return True


def _retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback (the trial is FAIL already): the same retry as elsewhere."""
    _queue_retry(study, trial)


def retry_interrupted(study: optuna.Study, trial_id: int, reason: str, fail: bool) -> None:
    """Queue the values of a trial stopped by Ctrl-C or SIGTERM once more, with its training
    seed, as for a killed worker (:func:`requeue`); an interruption is not the trial's fault, so
    it does not count against ``MAX_RETRY``. ``fail``: mark the trial FAIL here (optuna does so
    itself after a KeyboardInterrupt, never after a SystemExit)."""
    storage = study._storage
    trial = storage.get_trial(trial_id)
    drawn = trial.params or trial.system_attrs.get("fixed_params")
    storage.set_trial_user_attr(trial_id, "error", f"{reason}; " + (
        "its values are queued again with its training seed" if drawn else "no value drawn yet"))
    if fail:
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return
    _queue_retry(study, storage.get_trial(trial_id), counted=False)


def _queue_retry(study: optuna.Study, trial: FrozenTrial, counted: bool = True) -> None:
    history = [*trial.system_attrs.get("retry_history", [])]
    if counted:
        history.append(trial.number)
    # a queued trial (the card's own values) killed before all its values were drawn still
    # knows them all; values not drawn yet in a sampled trial are sampled again
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    if len(history) > MAX_RETRY or not params:
        return
    origin = trial.system_attrs.get("failed_trial", trial.number)
    user_attrs = {"origin": "retry", "retry_of": origin}
    if "train_seed" in trial.user_attrs:
        user_attrs["train_seed"] = trial.user_attrs["train_seed"]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, user_attrs=user_attrs,
        system_attrs={"fixed_params": params, "failed_trial": origin,
                      "retry_history": history}))


def reclaim_dead_workers(study: optuna.Study) -> list[int]:
    """Take over the RUNNING trials whose worker process on this host is gone (any storage)."""
    reclaimed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_is_dead(trial):
            reason = f"worker killed ({trial.user_attrs['worker']} is gone)"
            if requeue(study, trial, reason):
                reclaimed.append(trial.number)
    return reclaimed
