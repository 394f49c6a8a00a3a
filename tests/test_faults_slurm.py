"""Fault hunt, ``ctrbench run --executor slurm`` (each test failed before its fix).

The tests marked ``slurm`` submit real job arrays to the one-node cluster of ``.ci/slurm.sh``
(skipped, with the reason, where no controller answers and none can be started; the fixtures
come from tests/test_slurm.py and cancel every job they submitted). Tasks are held with
``--sbatch-arg=--hold`` where a test must change something before they start; every wait is
on a real condition (squeue's state, a file), never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import test_slurm
from click.testing import CliRunner
from test_slurm import FAST, TIMEOUT_S, _ended, _submissions, _wait_for

from ctrbench.cli import main
from ctrbench.record import read_record, record_path
from ctrbench.runs import runner, slurm, slurm_runs

cluster, home, work = test_slurm.cluster, test_slurm.home, test_slurm.work  # fixtures
LR = ["-m", "lr", "-d", "synthetic", "--epochs", "1", *FAST]


def _cli(results: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ctrbench.cli", "run", *LR, "--results", str(results),
            "--executor", "slurm", "--time", "20:00", *args]


def _job_of(sub: Path) -> str:
    return _wait_for("the job id", lambda: (sub / "job_id").is_file()
                     and (sub / "job_id").read_text().strip())


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# --------------------------------------------------------------------------- without a cluster
@pytest.fixture
def no_slurm(tmp_path, monkeypatch):
    """No Slurm on PATH, an empty home and working directory: nothing can be submitted."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args, option", [
    (["--max-parallel", "0"], "--max-parallel"),
    (["--cpus-per-run", "0"], "--cpus-per-run"),
    (["--gpus-per-run", "-1"], "--gpus-per-run"),
    (["--time", "4h"], "--time"),
    (["--time", "1:2:3:4"], "--time"),
    (["--sbatch-arg=account=lab"], "--sbatch-arg"),
])
def test_a_bad_slurm_option_value_is_a_usage_error(no_slurm, args, option):
    """docs: exit 2 for a bad option value (before: exit 1, as for a failed run)."""
    result = CliRunner().invoke(main, ["run", "-m", "lr", "-d", "synthetic", "--executor",
                                       "slurm", *args])
    assert result.exit_code == 2, result.output
    assert option in result.output
    _no_traceback(result.output)
    assert "needs Slurm's commands" not in result.output  # checked first
    assert not (no_slurm / "home").exists()


@pytest.mark.parametrize("value", ["120", "1-12", "2-0:30", "90:00", "1-02:00:00"])
def test_every_slurm_time_format_is_accepted(no_slurm, value):
    """Slurm's minutes, days-hours and days-hours:minutes (before: '120' was 'not a Slurm time
    limit'); past the option check, a missing sbatch is the error."""
    assert slurm.SlurmOptions(time=value).time == value
    result = CliRunner().invoke(main, ["run", "-m", "lr", "-d", "synthetic", "--executor",
                                       "slurm", "--time", value])
    assert result.exit_code == 1 and "needs Slurm's commands" in result.output, result.output


@pytest.mark.parametrize("arg", ["--array=0-3", "-a0-3", "--output=x.log", "-o", "--error=e",
                                 "--chdir=/", "-D/", "--wrap=true", "--mem=1G\nrm -rf x"])
def test_sbatch_args_that_break_the_array_are_refused(no_slurm, arg):
    """--array added tasks that crashed on the manifest (IndexError); --output/--error/--chdir
    moved the logs the runs are diagnosed from; a newline wrote a command into job.sh."""
    result = CliRunner().invoke(main, ["run", "-m", "lr", "-d", "synthetic", "--executor",
                                       "slurm", f"--sbatch-arg={arg}"])
    assert result.exit_code == 2, result.output
    assert "--sbatch-arg" in result.output
    _no_traceback(result.output)


def test_the_job_script_quotes_paths_with_spaces(tmp_path):
    text = slurm.array_script(job_name="j", n_tasks=1, log_dir=tmp_path / "a b" / "logs",
                              chdir=tmp_path / "a b", command=["x"],
                              options=slurm.SlurmOptions(partition="p q"))
    assert f'#SBATCH --output="{tmp_path}/a b/logs/%A_%a.log"' in text.splitlines()
    assert f'#SBATCH --chdir="{tmp_path}/a b"' in text.splitlines()


def test_sigterm_during_submission_waits_until_every_run_is_marked():
    """SIGTERM between sbatch and the markers left a job that the next run submitted again;
    it is held, like Ctrl-C, and raised (exit 143) when the block ends."""
    from ctrbench.commands.slurm_options import deferred_interrupt
    from ctrbench.errors import install_termination_handler

    previous = signal.getsignal(signal.SIGTERM)
    install_termination_handler()
    steps = []
    try:
        with pytest.raises(SystemExit) as stopped:
            with deferred_interrupt():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("marked")
        assert stopped.value.code == 143 and steps == ["marked"]
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- the cluster
@pytest.mark.slurm
def test_results_and_working_directory_with_spaces(work, monkeypatch):
    """before: sbatch refused job.sh ('Invalid directive found in batch script: b/...')."""
    here = work.parent / "my dir"
    here.mkdir()
    monkeypatch.chdir(here)
    results = work / "with space"  # under work: the fixture cancels its jobs
    done = subprocess.run(_cli(results, "--seed-list", "0"), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "1 finished" in done.stdout
    assert read_record(record_path(results, "synthetic", "lr", 0)).status == "finished"
    [sub] = _submissions(results)
    assert [p.name for p in (sub / "logs").iterdir()] == [f"{_job_of(sub)}_0.log"]
    (work / "slurm").mkdir(exist_ok=True)  # let the fixture find the job for its teardown
    (work / "slurm" / sub.name).symlink_to(sub)


@pytest.mark.slurm
def test_a_run_that_a_local_run_refuses_is_refused_not_submitted(work):
    """A finished record of another configuration: before, a task was submitted, refused on its
    node, and reported 'failed ... without writing a record (killed, out of memory or node
    failure?)'."""
    results = work
    local = CliRunner().invoke(main, ["run", *LR, "--seed-list", "0", "--results", str(results)])
    assert local.exit_code == 0, local.output
    record_file = record_path(results, "synthetic", "lr", 0)
    before = record_file.read_bytes()
    done = subprocess.run([*_cli(results, "--seed-list", "0"), "--set", "train.lr=0.02"],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 1, done.stderr
    assert "1 refused" in done.stdout and "Pass --force to replace it" in done.stderr
    assert "killed" not in done.stdout + done.stderr
    assert _submissions(results) == []  # nothing was submitted
    assert record_file.read_bytes() == before


@pytest.mark.slurm
def test_a_forced_run_whose_task_is_cancelled_is_not_reported_finished(work):
    """--force, task cancelled: before, the earlier finished record was reported as this run's
    result ('finished test AUC ...', exit 0)."""
    results = work
    local = CliRunner().invoke(main, ["run", *LR, "--seed-list", "0", "--results", str(results)])
    assert local.exit_code == 0, local.output
    record_file = record_path(results, "synthetic", "lr", 0)
    before = record_file.read_bytes()
    waiter = subprocess.Popen(_cli(results, "--seed-list", "0", "--force",
                                   "--sbatch-arg=--hold"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sub = _wait_for("the submission", lambda: (_submissions(results) or [None])[0])
        subprocess.run(["scancel", _job_of(sub)], check=True, timeout=60)
        out, err = waiter.communicate(timeout=TIMEOUT_S)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 1, out + err
    assert "1 failed" in out and "finished test AUC" not in err, out + err
    assert "earlier finished record" in out + err
    assert record_file.read_bytes() == before  # the earlier result is kept


@pytest.mark.slurm
def test_a_task_that_cannot_start_says_why(work):
    """The store unreachable from the node, the manifest corrupted, a task cancelled while
    queued: before, all three were 'ended without writing a record (killed, out of memory or
    node failure?)', with a traceback in the task's log."""
    results = work
    held = ["--no-wait", "--sbatch-arg=--hold"]
    first = subprocess.run(_cli(results, "--seed-list", "0,1", *held), capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    assert first.returncode == 0, first.stderr
    [sub_a] = _submissions(results)
    second = subprocess.run(_cli(results, "--seed-list", "2", *held), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert second.returncode == 0, second.stderr
    [sub_b] = [s for s in _submissions(results) if s != sub_a]
    job_a, job_b = _job_of(sub_a), _job_of(sub_b)
    manifest = json.loads((sub_a / "manifest.json").read_text())
    manifest["store"] = str(results / "not-mounted-here")
    (sub_a / "manifest.json").write_text(json.dumps(manifest))
    (sub_b / "manifest.json").write_text('{"kind": "run", "tas')
    subprocess.run(["scancel", f"{job_a}_1"], check=True, timeout=60)
    subprocess.run(["scontrol", "release", job_a, job_b], check=True, timeout=60)
    _wait_for("both jobs to end", lambda: _ended(job_a) and _ended(job_b))

    handle = runner.default_dataset_loader("synthetic")
    specs = runner.plan_runs(handle, runner.resolve_cards("lr", runner.load_overrides(
        None, FAST[1::2]), epochs=1), [0, 1, 2], results)
    done, attached, todo = slurm_runs.reconcile(specs, handle)
    assert (done, attached, todo) == ([], [], specs)
    errors = [read_record(s.record_file).error for s in specs]
    assert "cannot open the prepared store" in errors[0]
    assert "not-mounted-here" in errors[0]
    assert "before it started" in errors[1]
    assert "cannot read the manifest" in errors[2]
    assert not any("out of memory" in e for e in errors), errors
    for log in [*(sub_a / "logs").iterdir(), *(sub_b / "logs").iterdir()]:
        _no_traceback(log.read_text())


@pytest.mark.slurm
def test_an_unreachable_controller_is_named_as_such(work, tmp_path, monkeypatch):
    """before: 'sbatch refused <a job.sh already deleted>' with the hint 'check --partition,
    --time, --gpus-per-run and --sbatch-arg'."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    port = [line for line in conf.splitlines() if line.startswith("SlurmctldPort=")]
    bad = tmp_path / "slurm.conf"
    bad.write_text(conf.replace(port[0], "SlurmctldPort=1") if port
                   else conf + "SlurmctldPort=1\n")
    monkeypatch.setenv("SLURM_CONF", str(bad))
    done = subprocess.run(_cli(work, "--seed-list", "0"), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 1
    assert "scontrol ping" in done.stderr and "check --partition" not in done.stderr
    assert "job.sh" not in done.stderr, done.stderr
    _no_traceback(done.stderr)
    assert _submissions(work) == []


@pytest.mark.slurm
def test_sigterm_while_waiting_leaves_the_jobs_and_says_how_to_reattach(work):
    """before: exit 143 without a word (Ctrl-C printed the reattach hint)."""
    results = work
    waiter = subprocess.Popen(_cli(results, "--seed-list", "0", "--sbatch-arg=--hold"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in waiter.stderr:
            if line.startswith("slurm job "):
                break
        waiter.send_signal(signal.SIGTERM)
        _, err = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 143, err
    assert "Reattach: run the same command again" in err
    [sub] = _submissions(results)
    assert not _ended(_job_of(sub))  # still queued (held)
