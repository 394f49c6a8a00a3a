"""Fault hunt 2, ``run``/``tune --executor slurm`` (each test failed before its fix).

Most tests replace ``sbatch``/``squeue`` by an in-process stand-in (:func:`fake_slurm`), so they
run everywhere; those marked ``slurm`` use the one-node cluster of ``.ci/slurm.sh`` (fixtures
from tests/test_slurm.py, which cancel every job they submitted). No test waits on a clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import test_slurm
from click.testing import CliRunner
from test_slurm import FAST, TIMEOUT_S, _ended, _submissions, _wait_for

from ctrbench import progress
from ctrbench.cli import main
from ctrbench.errors import CtrbenchError
from ctrbench.record import read_record, record_path
from ctrbench.runs import runner, slurm, slurm_runs

cluster, home, work = test_slurm.cluster, test_slurm.home, test_slurm.work  # fixtures
LR = ["-m", "lr", "-d", "synthetic", "--epochs", "1", *FAST]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic dataset, prepared once for the module (its own CTRBENCH_HOME)."""
    home = tmp_path_factory.mktemp("home2")
    old = os.environ.get("CTRBENCH_HOME")
    os.environ["CTRBENCH_HOME"] = str(home)
    try:
        yield runner.default_dataset_loader("synthetic")
    finally:
        if old is None:
            os.environ.pop("CTRBENCH_HOME", None)
        else:
            os.environ["CTRBENCH_HOME"] = old


@pytest.fixture
def fake_slurm(synthetic, monkeypatch, tmp_path):
    """sbatch and squeue stood in for: each submission is a new job (101, 102, ...) whose tasks
    are PENDING until the test changes ``jobs[id]`` or forgets the job (``del jobs[id]``)."""
    jobs: dict[str, str] = {}

    def submit(script, env=None):
        job = str(101 + len(jobs))
        jobs[job] = "PENDING"
        return job

    def query(job_ids):
        return {(j, i): slurm.TaskState(jobs[j], "(Priority)")
                for j in set(job_ids) if j in jobs for i in range(4)}

    monkeypatch.setattr(slurm, "submit", submit)
    monkeypatch.setattr(slurm, "query", query)
    monkeypatch.setattr(slurm, "require_slurm", lambda: None)
    monkeypatch.setenv("CTRBENCH_HOME", os.environ["CTRBENCH_HOME"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(progress, "_MODE", "lines")
    return jobs


def _specs(handle, results: Path, *sets: str, seeds=(0,)) -> list[runner.RunSpec]:
    overrides = runner.load_overrides(None, [*FAST[1::2], *sets])
    cards = runner.resolve_cards("lr", overrides, epochs=1)
    return runner.plan_runs(handle, cards, list(seeds), results)


def _submit(specs, handle, results: Path, force: bool = False):
    return slurm_runs.submit_runs(specs, handle, slurm.SlurmOptions(), results_root=results,
                                  device="cpu", force=force)


# --------------------------------------------------------------------------- 1. markers
def test_two_configurations_of_one_run_keep_their_own_markers(synthetic, fake_slurm, tmp_path):
    """lr seed 0 queued with lr=0.01 (job 101), then with lr=0.02 (job 102): the second marker
    replaced the first (one file per seed), so the first configuration was submitted again
    while its task was still queued, and its waiter read job 102's marker as its own."""
    results = tmp_path / "results"
    a, b = _specs(synthetic, results), _specs(synthetic, results, "train.lr=0.02")
    tracked_a = _submit(a, synthetic, results)
    assert slurm_runs.reconcile(b, synthetic)[2] == b
    _submit(b, synthetic, results)
    done, attached, todo = slurm_runs.reconcile(a, synthetic)
    assert (done, todo) == ([], []) and [t.task for t in attached] == ["101_0"]
    assert [t.task for t in slurm_runs.reconcile(b, synthetic)[1]] == ["102_0"]

    del fake_slurm["101"]  # job 101 ends without a record: its own task is named, not 102's
    slurm_runs.poll(tracked_a, synthetic, now=0.0)
    slurm_runs.poll(tracked_a, synthetic, now=slurm_runs.SETTLE_S + 1)
    record = read_record(a[0].record_file)
    assert record.run_id == a[0].run_id and "Slurm task 101_0 ended" in record.error


def test_a_marker_of_the_previous_format_is_still_read(synthetic, fake_slurm, tmp_path):
    """``seed-<k>.slurm-job`` (one per record file) still attaches its own run; another
    configuration's is ignored."""
    results = tmp_path / "results"
    a, b = _specs(synthetic, results), _specs(synthetic, results, "train.lr=0.02")
    [tracked] = _submit(a, synthetic, results)
    marker = slurm_runs.read_marker(a[0])
    for path in a[0].record_file.parent.glob("*.slurm-job"):
        path.unlink()
    legacy = a[0].record_file.with_suffix(".slurm-job")
    legacy.write_text(json.dumps(marker))
    assert [t.task for t in slurm_runs.reconcile(a, synthetic)[1]] == [tracked.task]
    assert slurm_runs.reconcile(b, synthetic)[2] == b


# --------------------------------------------------------------------------- 2. local runs
def test_a_local_run_does_not_run_what_is_queued_on_slurm(synthetic, fake_slurm, tmp_path):
    """before: the local run trained lr seed 0 while its Slurm task was queued (the same run
    twice; with a forced submission, the task then replaced the local record)."""
    results = tmp_path / "results"
    [spec] = _specs(synthetic, results)
    _submit([spec], synthetic, results)
    args = ["run", *LR, "--seed-list", "0", "--results", str(results)]
    held = CliRunner().invoke(main, args)
    assert held.exit_code == 0, held.output
    assert "1 queued" in held.output and "101_0" in held.output
    assert "scancel 101_0" in held.output and "--executor slurm" in held.output
    assert not spec.record_file.exists()

    fake_slurm["101"] = "RUNNING"
    assert "1 queued" in CliRunner().invoke(main, args).output
    del fake_slurm["101"]  # Slurm no longer knows the job (ended, cancelled): no hold
    ran = CliRunner().invoke(main, args)
    assert ran.exit_code == 0 and "1 finished" in ran.output, ran.output
    assert read_record(spec.record_file).status == "finished"


def test_force_runs_here_what_is_queued_on_slurm(synthetic, fake_slurm, tmp_path, monkeypatch):
    results = tmp_path / "results"
    specs = _specs(synthetic, results)
    _submit(specs, synthetic, results)
    monkeypatch.setattr(runner, "execute_one",
                        lambda spec, *a, **k: runner.RunResult(spec, "finished", "stand-in"))
    held = slurm_runs.held_by_slurm(specs)
    assert [r.status for r in runner.execute(specs, synthetic, held=held)] == ["queued"]
    assert slurm_runs.held_by_slurm(specs, force=True) == {}
    assert [r.status for r in runner.execute(specs, synthetic, force=True)] == ["finished"]


def test_an_unreachable_controller_does_not_stop_a_local_run(synthetic, fake_slurm, tmp_path,
                                                             monkeypatch):
    results = tmp_path / "results"
    specs = _specs(synthetic, results)
    _submit(specs, synthetic, results)

    def down(job_ids):
        raise CtrbenchError("squeue failed: Unable to contact slurm controller")

    monkeypatch.setattr(slurm, "query", down)
    monkeypatch.setattr(runner, "execute_one",
                        lambda spec, *a, **k: runner.RunResult(spec, "finished", "stand-in"))
    held = slurm_runs.held_by_slurm(specs)
    assert held == {}
    assert [r.status for r in runner.execute(specs, synthetic, held=held)] == ["finished"]


# --------------------------------------------------------------------------- 3. slow sbatch
@pytest.fixture
def slow_sbatch(tmp_path, monkeypatch):
    """An sbatch that never answers (and an squeue that knows nothing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexec sleep 60\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "COMMAND_TIMEOUT_S", 1)


def test_an_sbatch_that_does_not_answer_keeps_its_submission(synthetic, slow_sbatch, tmp_path):
    """before: the submission directory was removed on the timeout although the job may have
    been submitted: its tasks then failed on a missing manifest."""
    results = tmp_path / "results"
    specs = _specs(synthetic, results)
    with pytest.raises(CtrbenchError) as raised:
        _submit(specs, synthetic, results)
    [sub] = _submissions(results)
    assert (sub / "manifest.json").is_file() and (sub / "job.sh").is_file()
    message = f"{raised.value} {raised.value.hint}"
    assert "may have been submitted" in message and str(sub) in message
    assert "squeue" in message and "CTRBENCH_SLURM_TIMEOUT" in message


def test_the_slurm_command_timeout_can_be_set(monkeypatch):
    monkeypatch.setenv("CTRBENCH_SLURM_TIMEOUT", "300")
    assert slurm.command_timeout() == 300
    monkeypatch.setenv("CTRBENCH_SLURM_TIMEOUT", "soon")
    with pytest.raises(CtrbenchError, match="CTRBENCH_SLURM_TIMEOUT"):
        slurm.command_timeout()


# --------------------------------------------------------------------------- 4. tune
def test_sigterm_while_tune_waits_says_how_to_reattach(monkeypatch, capsys, tmp_path):
    """before: exit 143 without a word (run printed the reattach hint, tune did not)."""
    from ctrbench.commands.slurm_options import tune_on_slurm
    from ctrbench.tune import slurm_workers
    from ctrbench.tune.study import TuneSettings

    def terminated(*args, **kwargs):
        raise SystemExit(143)

    monkeypatch.setattr(slurm, "require_slurm", lambda: None)
    monkeypatch.setattr(slurm_workers, "live_workers",
                        lambda out_dir: {("77", 0): slurm.TaskState("RUNNING", "vm")})
    monkeypatch.setattr(slurm_workers, "wait_workers", terminated)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(SystemExit) as stopped:
        tune_on_slurm(study, None, workers=1, model="lr", store=tmp_path, storage_url="",
                      heartbeat=0, settings=TuneSettings(n_trials=3), signature={},
                      out_dir=tmp_path, options=slurm.SlurmOptions(), no_wait=False)
    assert stopped.value.code == 143
    err = capsys.readouterr().err
    assert "Terminated: the Slurm job(s) 77 keep running. Reattach" in err


# --------------------------------------------------------------------------- the cluster
@pytest.mark.slurm
def test_a_local_run_of_a_queued_slurm_run_says_so(work):
    """A held (queued) task on the real cluster: the local run does not run it, names the
    task; once it is cancelled (Slurm forgets it, or lists it ended) the local run runs it."""
    results = work
    submit = [sys.executable, "-m", "ctrbench.cli", "run", *LR, "--seed-list", "0",
              "--results", str(results), "--executor", "slurm", "--time", "20:00",
              "--no-wait", "--sbatch-arg=--hold"]
    done = subprocess.run(submit, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    [sub] = _submissions(results)
    job = _wait_for("the job id", lambda: (sub / "job_id").is_file()
                    and (sub / "job_id").read_text().strip())
    local = CliRunner().invoke(main, ["run", *LR, "--seed-list", "0", "--results", str(results)])
    assert local.exit_code == 0, local.output
    assert "1 queued" in local.output and f"{job}_0" in local.output
    record_file = record_path(results, "synthetic", "lr", 0)
    assert not record_file.exists()
    subprocess.run(["scancel", job], check=True, timeout=60)
    _wait_for("the job to end", lambda: _ended(job))
    again = CliRunner().invoke(main, ["run", *LR, "--seed-list", "0", "--results", str(results)])
    assert again.exit_code == 0 and "1 finished" in again.output, again.output


# --------------------------------------------------------------------------- task exit status
@pytest.mark.parametrize("status,code", [("refused", 1), ("unsaved", 1), ("failed", 1),
                                         ("finished", 0), ("skipped", 0), ("locked", 0)])
def test_a_task_whose_run_was_not_done_exits_1(synthetic, tmp_path, monkeypatch, status, code):
    """A task refused (another configuration held the run's lock) or unsaved ended 0, so Slurm
    listed it COMPLETED though its run was not done; `run` itself exits 1 for these."""
    from ctrbench.runs import slurm_task

    (spec,) = _specs(synthetic, tmp_path / "results")
    manifest = {"dataset": synthetic.name, "store": str(synthetic.data.path),
                "dataset_config": synthetic.config, "device": "cpu", "force": False,
                "tasks": [{"card": spec.card.resolved(), "seed": spec.seed,
                           "run_id": spec.run_id, "record": str(spec.record_file)}]}
    monkeypatch.setattr(runner, "execute_one", lambda s, *a, **k: runner.RunResult(s, status))
    assert slurm_task.run_task(manifest, 0) == code


# --------------------------------------------------------------------------- 5. late jobs
def _fake(bin_dir: Path, name: str, body: str) -> None:
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


def _job_name(sub: Path) -> str:
    """The job name written in submission ``sub``'s script."""
    [name] = [line.split("=", 1)[1] for line in (sub / "job.sh").read_text().splitlines()
              if line.startswith("#SBATCH --job-name=")]
    return name


def _late_job(sub: Path, bin_dir: Path, job: str = "555") -> None:
    """squeue now lists ``job`` under the job name written in ``sub``'s script (task 0 pending)."""
    name = _job_name(sub)
    _fake(bin_dir, "squeue", f'case "$*" in *--name={name}*) echo {job};; '
                             f'*--jobs*{job}*) echo "{job}|0|PENDING|(Priority)";; esac')


def _unanswered(results: Path, specs, handle) -> Path:
    with pytest.raises(CtrbenchError, match="may have been submitted"):
        _submit(specs, handle, results)
    [sub] = _submissions(results)
    return sub


def test_a_late_job_of_an_unanswered_sbatch_is_found_by_the_next_run(synthetic, slow_sbatch,
                                                                     tmp_path):
    """before: the next `run --executor slurm` submitted the run again (the late job had no
    markers); now it finds the job by its unique name, marks it and attaches to it."""
    results = tmp_path / "results"
    specs = _specs(synthetic, results)
    sub = _unanswered(results, specs, synthetic)
    _late_job(sub, tmp_path / "bin")
    args = ["run", *LR, "--seed-list", "0", "--results", str(results), "--executor", "slurm",
            "--no-wait"]
    again = CliRunner().invoke(main, args)  # a second sbatch would not answer either: exit 1
    assert again.exit_code == 0, again.output
    assert "already queued or running in Slurm job(s) 555" in again.output
    marker = slurm_runs.read_marker(specs[0])
    assert (marker["job_id"], marker["index"], marker["submission"]) == ("555", 0, str(sub))
    assert (sub / "job_id").read_text().strip() == "555" and _submissions(results) == [sub]


def test_a_late_job_of_an_unanswered_sbatch_holds_a_local_run(synthetic, slow_sbatch,
                                                             tmp_path):
    """before: a local `run` trained the run that the late job's task was about to train."""
    results = tmp_path / "results"
    [spec] = _specs(synthetic, results)
    sub = _unanswered(results, [spec], synthetic)
    _late_job(sub, tmp_path / "bin")
    local = CliRunner().invoke(main, ["run", *LR, "--seed-list", "0", "--results",
                                      str(results)])
    assert local.exit_code == 0, local.output
    assert "1 queued" in local.output and "555_0" in local.output
    assert not spec.record_file.exists()


def test_an_unanswered_sbatch_whose_job_never_came_is_forgotten(synthetic, slow_sbatch,
                                                               tmp_path, monkeypatch):
    """Slurm lists no job of that name (past the grace time): the submission folder goes and
    the run is submitted again (before: the folder stayed, with nothing to say it was dead)."""
    results = tmp_path / "results"
    specs = _specs(synthetic, results)
    _unanswered(results, specs, synthetic)
    monkeypatch.setattr(slurm_runs, "UNCONFIRMED_GRACE_S", 0, raising=False)
    done, attached, todo = slurm_runs.reconcile(specs, synthetic)
    assert (done, attached, todo) == ([], [], specs)
    assert _submissions(results) == []
    assert not list(specs[0].record_file.parent.glob("*.slurm-job"))


@pytest.mark.parametrize("squeue", ["echo 'Unable to contact slurm controller' >&2; exit 1",
                                    "exit 0"])
def test_an_unanswered_sbatch_is_not_submitted_twice_while_unsettled(synthetic, slow_sbatch,
                                                                    tmp_path, squeue):
    """Slurm cannot be asked, or does not list the job yet (within the grace time): the run is
    refused, naming the submission and what to do by hand (before: submitted again)."""
    results = tmp_path / "results"
    specs = _specs(synthetic, results)
    sub = _unanswered(results, specs, synthetic)
    _fake(tmp_path / "bin", "squeue", squeue)
    done, attached, todo = slurm_runs.reconcile(specs, synthetic)
    assert (attached, todo) == ([], [])
    [result] = done
    assert result.status == "refused" and str(sub) in result.detail
    assert "squeue" in result.detail and "--name=" in result.detail
    held = slurm_runs.held_by_slurm(specs)
    assert [r.status for r in held.values()] == ["refused"]
    assert _submissions(results) == [sub]


# --------------------------------------------------------------------------- 6. late tune jobs
def _unanswered_tune(out_dir: Path, workers: int = 2) -> Path:
    """``tune --executor slurm`` submitting ``workers`` workers to an sbatch that never
    answers; returns the submission folder it kept."""
    from ctrbench.tune import slurm_workers
    from ctrbench.tune.study import TuneSettings

    with pytest.raises(CtrbenchError, match="may have been submitted") as raised:
        slurm_workers.submit_workers(
            workers, model="lr", store=out_dir, study_name="lr@synthetic",
            storage_url="journal:/shared/lr.log", heartbeat=0, settings=TuneSettings(),
            signature={}, out_dir=out_dir, options=slurm.SlurmOptions())
    assert "ctrbench tune" in raised.value.hint and "--name=" in raised.value.hint
    [sub] = sorted((out_dir / "slurm").iterdir())
    return sub


def test_a_late_tune_worker_job_is_counted_by_the_next_tune(slow_sbatch, tmp_path):
    """before: a worker job that sbatch submitted after ctrbench stopped waiting was in no list
    (its job name was the study's, not unique, and nothing noted it), so the next `tune`
    counted no live worker and submitted --workers more."""
    from ctrbench.tune import slurm_workers

    out_dir = tmp_path / "study"
    sub = _unanswered_tune(out_dir)
    _late_job(sub, tmp_path / "bin")  # squeue now lists job 555 (task 0 pending) by its name
    live = slurm_workers.live_workers(out_dir)
    assert live == {("555", 0): slurm.TaskState("PENDING", "(Priority)")}
    assert json.loads((out_dir / "slurm-jobs.json").read_text()) == ["555"]  # noted by id


@pytest.mark.parametrize("squeue", ["exit 0", "echo 'Unable to contact slurm controller' >&2; "
                                               "exit 1"])
def test_an_unlisted_tune_submission_counts_as_its_workers_until_the_grace_time(
        slow_sbatch, tmp_path, monkeypatch, squeue):
    """Slurm does not list the job yet, or cannot be asked: its two tasks count (the next
    `tune` submits none in their place); past the grace time, one never listed is forgotten."""
    from ctrbench.tune import slurm_workers

    out_dir = tmp_path / "study"
    sub = _unanswered_tune(out_dir)
    _fake(tmp_path / "bin", "squeue", squeue)
    live = slurm_workers.live_workers(out_dir)
    name = _job_name(sub)
    assert sorted(live) == [(name, 0), (name, 1)]
    assert {s.state for s in live.values()} == {slurm_workers.UNCONFIRMED}
    assert "workers: 0 pending, 0 running, 2 of a submission sbatch did not confirm" in \
        slurm_workers.study_line(optuna.create_study(), live)
    if squeue == "exit 0":
        monkeypatch.setattr(slurm_workers, "UNCONFIRMED_GRACE_S", 0)
        assert slurm_workers.live_workers(out_dir) == {}
        assert json.loads((out_dir / "slurm-jobs.json").read_text()) == []
