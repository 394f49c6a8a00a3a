"""Issue 12, D15: a `tune` worker killed with kill -9 mid-trial; the resumed study retries the
killed trial's parameters with its training seed, the same way on every storage (journal file,
SQLite, PostgreSQL when CTRBENCH_TEST_POSTGRES_URL is set, e.g. by `eval "$(.ci/postgres.sh)"`),
at once when the dead worker was on this host, and says why it waits otherwise.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from test_tune import MODEL, SRC, TEST_CARD, store_dir  # noqa: F401 (store_dir: a fixture)

from ctrbench import progress
from ctrbench.cli import main
from ctrbench.tune.storage import open_storage
from ctrbench.tune.study import derive_seed

KILL_MODEL = "lr_killtest"
KILL_CARD = f'extends = "{MODEL}"\n[train]\npatience = 20\n'  # trial 0 (the card) runs long
ARGS = ["--model", KILL_MODEL, "--epochs", "20", "--pruner", "none", "--results", "res"]
PG_URL = os.environ.get("CTRBENCH_TEST_POSTGRES_URL")


@pytest.fixture
def work(tmp_path, monkeypatch, store_dir):  # noqa: F811
    monkeypatch.setattr(progress, "_MODE", "auto")
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{MODEL}.toml").write_text(TEST_CARD)
    (tmp_path / "models" / f"{KILL_MODEL}.toml").write_text(KILL_CARD)
    return tmp_path


def _storage(kind: str, work: Path, study: str) -> list[str]:
    if kind == "journal":
        return ["--storage", f"journal:{work / 'journal' / study}.log"]
    if kind == "postgres":
        return ["--storage", PG_URL]
    return []  # the default: sqlite:///res/tuning/<study>.db, heartbeat 60 s


def _load(kind: str, work: Path, study: str) -> optuna.Study:
    url = {"journal": f"journal:{work / 'journal' / study}.log", "postgres": PG_URL}.get(
        kind, f"sqlite:///{(work / 'res' / 'tuning').resolve()}/{study}.db")
    return optuna.load_study(study_name=study,
                             storage=open_storage(url, work, study, heartbeat=0).storage)


def _tune(store: Path, study: str, trials: int, *extra: str):
    argv = ["tune", *ARGS, "--dataset", str(store), "--study", study, "--trials", str(trials),
            *extra]
    progress.set_mode("auto")  # `-q` of an earlier invocation in this process would stick
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


STORAGES = ["journal", "sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not PG_URL, reason="CTRBENCH_TEST_POSTGRES_URL is not set (eval \"$(.ci/postgres.sh)\")"))]


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORAGES)
def test_killed_trial_is_retried_with_its_seed_on_every_storage(work, store_dir, kind):  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    straight, killed = f"straight-{tag}", f"killed-{tag}"
    _tune(store_dir, straight, 1, *_storage(kind, work, straight), "-q")
    reference = _load(kind, work, straight).trials[0]

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ctrbench.cli", "tune", *ARGS, "--dataset", str(store_dir),
            "--study", killed, "--trials", "2", "-q", *_storage(kind, work, killed)]
    worker = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        running = []
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                running = [t for t in _load(kind, work, killed).trials  # killed in training
                           if t.state == TrialState.RUNNING and len(t.params) == 4]
            except Exception:  # storage or study not created yet
                running = []
            if running:
                break
            time.sleep(0.05)
        assert running, "the worker never started a trial"
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()

    start = time.monotonic()
    result = _tune(store_dir, killed, 2, *_storage(kind, work, killed),  # no --fail-running
                   "--replace-card")  # the card of study `straight` is there
    elapsed = time.monotonic() - start
    trials = _load(kind, work, killed).trials
    first = trials[running[0].number]
    assert first.state == TrialState.FAIL and "worker killed" in first.user_attrs["error"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == first.number]
    assert len(retries) == 1, [(t.number, t.state, t.user_attrs) for t in trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == first.params
    assert retry.user_attrs["train_seed"] == derive_seed(0, "train", first.number)
    if first.number == reference.number:  # the card's trial: the uninterrupted study's twin
        assert retry.params == reference.params and retry.value == reference.value
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert "worker on this host that is gone" in result.output
    assert elapsed < 60, f"the resume waited {elapsed:.0f} s"  # no heartbeat grace to sit out
    if kind == "postgres":
        for name in (straight, killed):
            optuna.delete_study(study_name=name, storage=open_storage(
                PG_URL, work, name, heartbeat=0).storage)


def test_waiting_for_a_live_worker_is_announced(work, store_dir):  # noqa: F811
    _tune(store_dir, "wait", 0, "-q")  # creates the study (SQLite, heartbeat 60 s)
    study = _load("sqlite", work, "wait")
    orphan = study.ask()  # a trial of a live worker (this process) on this host
    study._storage.set_trial_user_attr(orphan._trial_id, "worker",
                                       f"{socket.gethostname()}:{os.getpid()}")
    result = _tune(store_dir, "wait", 1, "--timeout", "3")
    assert "waiting for trial 0" in result.output and "120 s" in result.output, result.output
    assert _load("sqlite", work, "wait").trials[0].state == TrialState.RUNNING  # left alone
