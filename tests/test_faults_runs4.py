"""A fourth fault hunt on local `ctrbench run` (locks that cannot be made or that another
configuration holds, `--jobs N` workers that die between runs); each test failed before its fix.

The pool tests use tiny module-level functions instead of training (spawned workers import this
module, so its top-level imports stay light).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
from pathlib import Path

import pytest

from ctrbench.runs import pool


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import train_fixtures as tf

    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted",
                                 rows=(320, 100, 100))


@pytest.fixture
def planted(tmp_path, monkeypatch, store, one_torch_thread):
    """The planted dataset and card ``tiny`` (1 epoch) in an isolated home."""
    import train_fixtures as tf

    from ctrbench.runs import runner

    tf.write_cards(tmp_path / "cards", {"tiny": tf.TINY_CARD.replace("epochs = 3",
                                                                     "epochs = 1")})
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    monkeypatch.setattr(runner, "default_dataset_loader", lambda name: handle)
    handle = runner.DatasetHandle("planted", store, {"name": "planted"})
    return handle


def _specs(handle, results: Path, seeds=(0,), set_items=()):
    from ctrbench.runs import runner

    cards = runner.resolve_cards("tiny", runner.load_overrides(None, list(set_items)))
    return runner.plan_runs(handle, cards, list(seeds), results)


def _cli(*args: str):
    from click.testing import CliRunner

    from ctrbench.cli import main

    return CliRunner().invoke(main, ["run", "-m", "tiny", "-d", "planted", "--device", "cpu",
                                     "-q", *args])


# --------------------------------------------------------------------------- lock file not made
def test_with_jobs_1_a_lock_file_that_cannot_be_made_fails_only_its_run(planted, tmp_path):
    """Before: with --jobs 1 a lock file that could not be created mid-command (a directory in
    its place, a full disk) stopped the whole command: the later runs never ran and no closing
    summary was printed (with --jobs N it was one failed run)."""
    from ctrbench.runs import runner

    results = tmp_path / "results"
    specs = _specs(planted, results, seeds=(0, 1, 2))
    blocked = runner.lock_path(specs[1].record_file)
    blocked.mkdir(parents=True)  # a directory standing where the lock file goes
    out = runner.execute(specs, planted, device="cpu", show_progress=False)
    assert [r.status for r in out] == ["finished", "failed", "finished"], out
    assert str(blocked) in out[1].detail and "Is a directory" in out[1].detail



def test_a_record_path_that_is_a_directory_is_refused_before_training(planted, tmp_path,
                                                                      monkeypatch):
    """Before: the run trained, then could not be saved ("unsaved", to the fallback folder),
    every time it was asked for: the training was wasted."""
    from ctrbench.runs import runner

    specs = _specs(planted, tmp_path / "results", seeds=(0, 1))
    specs[0].record_file.mkdir(parents=True)
    trained = []
    real = runner.execute_one
    monkeypatch.setattr(runner, "execute_one",
                        lambda spec, *a, **k: trained.append(spec.seed) or real(spec, *a, **k))
    for force in (False, True):
        out = runner.execute(specs, planted, device="cpu", show_progress=False, force=force)
        assert [r.status for r in out] == ["refused", "finished"], out
        assert "is a directory" in out[0].detail and str(specs[0].record_file) in out[0].detail
    assert 0 not in trained

def test_the_cli_prints_its_summary_and_names_the_lock_file_it_could_not_make(planted,
                                                                            tmp_path):
    from ctrbench.runs import runner

    results = tmp_path / "results"
    blocked = runner.lock_path(_specs(planted, results, seeds=(1,))[0].record_file)
    blocked.mkdir(parents=True)
    result = _cli("--seed-list", "0,1,2", "--jobs", "1", "--results", str(results))
    assert result.exit_code == 1, result.output
    assert "1 failed, 2 finished" in result.stdout
    assert f"tiny seed 1: failed: cannot create the lock file {blocked}" in result.stderr
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- lock of another run
def _hold(lock_file: Path, run_id: str | None):
    """A held lock as a `run` of ``run_id`` takes it; None: a lock file of an older ctrbench,
    which wrote no run id."""
    from ctrbench.runs.lock import RunLock

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(lock_file, run_id=run_id)
    assert lock.acquire()
    if run_id is None:
        lock_file.write_text(json.dumps({"pid": os.getpid(), "host": "here"}))
    return lock


@pytest.mark.parametrize("holder, status, code", [("other", "refused", 1),
                                                  ("same", "locked", 0),
                                                  ("old file", "locked", 0)])
def test_a_lock_held_by_another_configuration_is_not_reported_as_in_progress(
        planted, tmp_path, holder, status, code):
    """Before: a second `run` of one (model, seed) in another configuration at once reported
    the run "locked (in progress)" and exited 0, though the run in progress was the other
    configuration's and its finished record would then block this one: this run was never
    done. Now that is refused (exit 1) naming the other run id and pid; a lock of this very
    run (or an old lock file that names no run id) is still "locked", exit 0."""
    from ctrbench.runs import runner

    results = tmp_path / "results"
    (spec,) = _specs(planted, results)
    (other,) = _specs(planted, results, set_items=["train.lr=0.5"])
    assert other.run_id != spec.run_id and other.record_file == spec.record_file
    run_id = {"other": other.run_id, "same": spec.run_id, "old file": None}[holder]
    lock = _hold(runner.lock_path(spec.record_file), run_id)
    try:
        (result,) = runner.execute([spec], planted, device="cpu", show_progress=False)
        cli = _cli("--seed-list", "0", "--results", str(results))
    finally:
        lock.release()
    assert result.status == status and str(os.getpid()) in result.detail, result
    assert cli.exit_code == code, cli.output
    assert not spec.record_file.exists()
    if holder == "other":
        assert other.run_id in result.detail and other.run_id in cli.stderr
        assert "1 refused" in cli.stdout


def test_a_dead_workers_run_whose_lock_another_configuration_holds_is_failed_not_locked(
        planted, tmp_path):
    """Before: recording the run of a dead worker (or lost Slurm task) while another
    configuration held the lock reported it "locked", as if it were running elsewhere."""
    from ctrbench.runs import runner

    (spec,) = _specs(planted, tmp_path / "results")
    (other,) = _specs(planted, tmp_path / "results", set_items=["train.lr=0.5"])
    lock = _hold(runner.lock_path(spec.record_file), other.run_id)
    try:
        result = runner.record_failed(spec, planted, "the worker died")
    finally:
        lock.release()
    assert result.status == "failed" and other.run_id in result.detail, result
    assert result.detail.startswith("the worker died")


# --------------------------------------------------------------------------- pool
def _nothing() -> None:
    """A worker's set-up that does nothing."""


def _pid_or_exit(payload: int | None) -> int:
    """The worker's pid; with a number, exit with that status while "running"."""
    if payload is not None:
        os._exit(payload)
    return os.getpid()


def _run_pool(payloads, monkeypatch, *, kill_after: int | None = None):
    """``payloads`` through :func:`pool.run_tasks` with one worker; with ``kill_after``, the
    worker is stopped when answer ``kill_after`` arrives, sent its next task, then killed before
    it could take it (SIGSTOP, then SIGKILL when the parent next waits): a worker that dies
    between two runs. Returns (answers, losses)."""
    answers: dict[int, int] = {}
    losses: dict[int, int | None] = {}
    stopped: list[int] = []
    real_wait = multiprocessing.connection.wait

    def done(index: int, pid: int) -> None:
        answers[index] = pid
        if index == kill_after:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    def wait(objects, timeout=None):
        while stopped:  # its next task is in its pipe by now, untaken
            os.kill(stopped.pop(), signal.SIGKILL)
        return real_wait(objects, timeout)

    monkeypatch.setattr(multiprocessing.connection, "wait", wait)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    pool.run_tasks(payloads, workers=1, init=_nothing, init_args=lambda slot: (),
                   call=_pid_or_exit, on_done=answers.__setitem__ if kill_after is None else done,
                   on_lost=losses.__setitem__)
    return answers, losses


def test_a_worker_killed_between_two_runs_hands_its_next_run_to_a_new_worker(monkeypatch):
    """Before: a worker that died idle (OOM-killed after answering, before taking its next
    task) made that next task be reported lost (failed: "killed by SIGKILL") though it never
    started; now the task goes to a new worker."""
    answers, losses = _run_pool([None, None, None], monkeypatch, kill_after=0)
    assert losses == {}, losses
    assert sorted(answers) == [0, 1, 2]
    assert answers[1] != answers[0] and answers[2] == answers[1]  # a new worker took over


def test_a_worker_that_dies_while_running_still_loses_only_that_run(monkeypatch):
    answers, losses = _run_pool([None, 3, None], monkeypatch)
    assert losses == {1: 3} and sorted(answers) == [0, 2]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_file_system_without_flock_stops_the_command_before_any_training(planted, tmp_path,
                                                                           monkeypatch, jobs):
    """Once a lock file that cannot be made fails only its run (above), a results directory
    on a file system without ``flock`` must still stop the command at once, as documented,
    not fail (or, with --jobs N, train) each run."""
    import errno

    from ctrbench.errors import CtrbenchError
    from ctrbench.runs import runner

    def no_flock(self):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(runner.RunLock, "acquire", no_flock)
    results = tmp_path / "results"
    specs = _specs(planted, results, seeds=(0, 1))
    with pytest.raises(CtrbenchError, match="Function not implemented") as caught:
        runner.execute(specs, planted, device="cpu", jobs=jobs, show_progress=False)
    assert str(specs[0].record_file.parent) in str(caught.value)
    assert not list(results.rglob("*.json")) and not list(results.rglob("*.lock"))


# --------------------------------------------------------------------------- unusable splits
@pytest.mark.parametrize("split,rows", [("valid", 100), ("test", 100), ("test", 0)])
def test_a_split_no_run_can_use_stops_the_command_once(planted, tmp_path, split, rows):
    """Before: a store with an empty or one-class valid/test split (a tiny log) failed every
    run one by one, one failed record per seed, though the command could say it once."""
    import numpy as np
    import train_fixtures as tf

    from ctrbench.data.store import open_store
    from ctrbench.errors import DataError
    from ctrbench.runs import runner

    sizes = {"train": 320, "valid": 100, "test": 100, split: max(rows, 1)}
    path = tf.make_planted_store(tmp_path / "planted",
                                 rows=(sizes["train"], sizes["valid"], sizes["test"])).path
    label = path / split / "label.npy"
    np.save(label, np.zeros(rows, dtype=np.float32))  # one class, or no rows
    if rows == 0:  # keep the store consistent with its meta: every column emptied
        for column in (path / split).glob("*.npy"):
            np.save(column, np.load(column)[:0])
        meta = json.loads((path / "meta.json").read_text())
        meta["splits"][split]["rows"] = 0
        (path / "meta.json").write_text(json.dumps(meta))
    handle = runner.DatasetHandle("planted", open_store(path), {"name": "planted"})
    specs = _specs(handle, tmp_path / "results", seeds=(0, 1))
    with pytest.raises(DataError, match=f"{split[:5]}[a-z]* split") as info:
        runner.execute(specs, handle, device="cpu", show_progress=False)
    assert ("empty" if rows == 0 else "one class") in str(info.value)
    assert not (tmp_path / "results").exists()
