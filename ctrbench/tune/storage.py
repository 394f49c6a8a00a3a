"""Where an Optuna study lives: SQLite (default), any SQLAlchemy URL, or a journal file.

- no ``--storage``: ``sqlite:///<results>/tuning/<study>.db``;
- ``postgresql://user:pass@host/db`` (or ``mysql://...``, ``sqlite:///path.db``): an RDB storage.
  A bare ``postgresql://`` URL uses psycopg2 when psycopg (3) is not installed;
- ``journal:PATH``: optuna's JournalStorage over an append-only file (works on NFS-less shared
  disks without a database server).

Trials left RUNNING by a killed worker: RDB storages run a heartbeat (``heartbeat`` seconds); a
trial whose heartbeat is older than twice that is marked FAIL by the next worker, and its
parameters are queued once more (optuna's RetryHeartbeatStaleTrialCallback). Optuna's journal
storage has no heartbeat: there, ``ctrbench tune --fail-running`` marks RUNNING trials FAIL
(only when no other worker is alive).
"""

from __future__ import annotations

import importlib.util
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

try:  # optuna >= 4.9
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryStale

    _STALE_CALLBACK_ARG = "heartbeat_stale_trial_callback"
except ImportError:  # pragma: no cover - older optuna
    from optuna.storages import RetryFailedTrialCallback as _RetryStale

    _STALE_CALLBACK_ARG = "failed_trial_callback"

from ctrbench.errors import CtrbenchError

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
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CtrbenchError(
            f"--storage {redact(url)!r} is not a storage URL",
            hint="e.g. sqlite:///study.db, postgresql://user:pass@host/db or journal:study.log",
        ) from None
    driver = parsed.drivername
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
                    _STALE_CALLBACK_ARG: _RetryStale(max_retry=1)}
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
    """Mark every RUNNING trial FAIL (``--fail-running``: no other worker may be alive)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        frozen = study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            failed.append(trial.number)
    return failed
