"""``ctrbench run --executor slurm`` on a real Slurm cluster (``.ci/slurm.sh``: one node, 2 CPUs).

The integration tests submit real job arrays; they are skipped, with the reason, only where no
Slurm controller answers and ``.ci/slurm.sh`` cannot start one. Every job they submit is
cancelled at teardown. The tests without a cluster check the script and the option handling.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ctrbench
from ctrbench import progress
from ctrbench.cli import main
from ctrbench.record import read_record, read_scores, record_path
from ctrbench.runs import runner, slurm, slurm_runs

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "train.batch_size=2048", "--set", "train.eval_batch_size=8192"]
TIMEOUT_S = 600


# --------------------------------------------------------------------------- without a cluster
def test_array_script_asks_for_what_the_options_say(tmp_path):
    options = slurm.SlurmOptions(partition="gpu", time="1-02:00:00", gpus_per_run=1,
                                 cpus_per_run=4, max_parallel=3,
                                 sbatch_args=("--account=lab",))
    text = slurm.array_script(job_name="ctrbench-x", n_tasks=5, log_dir=tmp_path / "logs",
                              chdir=tmp_path, command=["python", "-m", "m", "a b"],
                              options=options)
    lines = text.splitlines()
    for expected in ("#SBATCH --array=0-4%3", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1",
                     "#SBATCH --cpus-per-task=4", "#SBATCH --time=1-02:00:00",
                     "#SBATCH --account=lab", f"#SBATCH --output={tmp_path}/logs/%A_%a.log"):
        assert expected in lines
    assert lines[-1] == "exec python -m m 'a b' \"$SLURM_ARRAY_TASK_ID\""
    plain = slurm.array_script(job_name="j", n_tasks=1, log_dir=tmp_path, chdir=tmp_path,
                               command=["x"], options=slurm.SlurmOptions())
    assert "#SBATCH --array=0-0" in plain and "--partition" not in plain and "gres" not in plain


@pytest.mark.parametrize("kwargs, message", [
    ({"time": "four hours"}, "not a Slurm time limit"),
    ({"max_parallel": 0}, "--max-parallel must be >= 1"),
    ({"cpus_per_run": 0}, "--cpus-per-run must be >= 1"),
    ({"sbatch_args": ("account=lab",)}, "is not an sbatch option"),
])
def test_bad_slurm_options_are_refused(kwargs, message):
    from ctrbench.errors import CtrbenchError

    with pytest.raises(CtrbenchError, match=message):
        slurm.SlurmOptions(**kwargs)


def test_slurm_options_without_the_slurm_executor_are_a_usage_error():
    result = CliRunner().invoke(main, ["run", "-m", "lr", "-d", "synthetic", "--partition",
                                       "gpu", "--max-parallel", "2"])
    assert result.exit_code == 2
    assert "--partition, --max-parallel only apply with --executor slurm" in result.output


def test_missing_slurm_commands_give_one_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    for command in (["run", "-m", "lr", "-d", "synthetic"],
                    ["tune", "--model", "lr", "--dataset", "synthetic", "--workers", "2"]):
        result = CliRunner().invoke(main, [*command, "--executor", "slurm", "--time", "10:00"])
        assert result.exit_code == 1
        assert "needs Slurm's commands; not found: sbatch, squeue" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "home").exists()  # nothing was prepared


# --------------------------------------------------------------------------- the cluster
def _slurm_answers() -> str | None:
    """None when a controller answers and a partition is up, else why not."""
    if shutil.which("sinfo") is None:
        return "Slurm's commands are not installed"
    done = subprocess.run(["sinfo", "--noheader", "-o", "%a %T"], capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        return f"sinfo failed: {done.stderr.strip()}"
    if not any(line.startswith("up ") and line.split()[1].startswith(("idle", "mixed", "alloc"))
               for line in done.stdout.splitlines()):
        return f"no partition is up with a usable node: {done.stdout.strip()!r}"
    return None


@pytest.fixture(scope="module")
def cluster():
    """A Slurm cluster that accepts jobs, started with .ci/slurm.sh when none answers."""
    why = _slurm_answers()
    if why is not None and os.geteuid() == 0 and shutil.which("bash"):
        with open("/tmp/ctrbench-slurm-start.lock", "a") as lock:  # one starter (xdist)
            fcntl.flock(lock, fcntl.LOCK_EX)
            started = subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh")],
                                     capture_output=True, text=True, timeout=600)
        for line in started.stdout.splitlines():
            if line.startswith("export SLURM_CONF="):
                os.environ["SLURM_CONF"] = line.split("=", 1)[1]
        why = _slurm_answers() if started.returncode == 0 else (
            f".ci/slurm.sh failed: {started.stderr.strip()[-500:]}")
    if why is not None:
        pytest.skip(f"Slurm cannot start here ({why}); start it with "
                    "`eval \"$(bash .ci/slurm.sh)\"`")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One CTRBENCH_HOME for the module, so that synthetic is prepared once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def work(cluster, home, tmp_path_factory, monkeypatch):
    """A results directory, a CTRBENCH_HOME, fast polling; cancels every job it submitted."""
    root = tmp_path_factory.mktemp("slurm")
    monkeypatch.setenv("CTRBENCH_HOME", str(home))
    monkeypatch.setenv("CTRBENCH_SLURM_POLL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    # the tasks (same interpreter) import the ctrbench that this test process imported
    source = str(Path(ctrbench.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (source, os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.chdir(root)
    monkeypatch.setattr(progress, "_MODE", "auto")  # another test's -q leaves it "quiet"
    results = root / "results"
    yield results
    job_ids = [p.read_text().strip() for p in (results / "slurm").glob("*/job_id")]
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def _invoke(results: Path, *args: str):
    return CliRunner().invoke(main, ["run", *args, "--results", str(results), "--executor",
                                     "slurm", "--max-parallel", "2", "--time", "20:00"])


def _submissions(results: Path) -> list[Path]:
    return sorted(p for p in (results / "slurm").glob("*") if p.is_dir())


def _wait_for(what: str, check, timeout: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ended(job_id: str) -> bool:
    states = slurm.query([job_id])
    return not any(s.active for s in states.values())


@pytest.mark.slurm
def test_submit_four_runs_then_rerun_submits_nothing(work, one_torch_thread):
    results = work
    args = ["-m", "lr,din", "-d", "synthetic", "--seeds", "2", "--epochs", "1", *FAST]
    first = _invoke(results, *args)
    assert first.exit_code == 0, first.output
    assert "submitted 4 run(s) as Slurm job array" in first.output
    assert "4 finished" in first.output
    [sub] = _submissions(results)
    job_id = (sub / "job_id").read_text().strip()
    for model in ("lr", "din"):
        for seed in (0, 1):
            record = read_record(record_path(results, "synthetic", model, seed))
            assert record.status == "finished" and record.test["auc"] > 0.55
            assert record.model_config["train"]["epochs"] == 1
    logs = sorted(p.name for p in (sub / "logs").iterdir())
    assert logs == [f"{job_id}_{i}.log" for i in range(4)]
    assert "finished test AUC" in (sub / "logs" / f"{job_id}_3.log").read_text()
    manifest = json.loads((sub / "manifest.json").read_text())
    assert [(t["model"], t["seed"]) for t in manifest["tasks"]] == [
        ("lr", 0), ("lr", 1), ("din", 0), ("din", 1)]

    # the same record a local run writes: same run id, same test scores to the last bit
    local = CliRunner().invoke(main, ["run", "-m", "lr", "-d", "synthetic", "--seed-list", "0",
                                      "--epochs", "1", *FAST, "--results",
                                      str(results.parent / "local")])
    assert local.exit_code == 0, local.output
    here = record_path(results.parent / "local", "synthetic", "lr", 0)
    there = record_path(results, "synthetic", "lr", 0)
    assert read_record(here).run_id == read_record(there).run_id
    assert read_record(here).test == read_record(there).test
    assert np.array_equal(read_scores(here)["scores"], read_scores(there)["scores"])

    again = _invoke(results, *args)
    assert again.exit_code == 0, again.output
    assert "nothing to submit" in again.output and "4 skipped" in again.output
    assert _submissions(results) == [sub]  # no new job array


@pytest.mark.slurm
def test_a_refused_submission_is_one_clear_error_and_leaves_nothing(work):
    results = work
    result = _invoke(results, "-m", "lr", "-d", "synthetic", "--seed-list", "0", "--epochs",
                     "1", "--partition", "no_such_partition")
    assert result.exit_code == 1
    assert "sbatch refused" in result.output and "invalid partition" in result.output.lower()
    assert "Traceback" not in result.output
    assert _submissions(results) == []
    assert not slurm_runs.marker_path(record_path(results, "synthetic", "lr", 0)).exists()


@pytest.mark.slurm
def test_ctrl_c_scancel_and_kill_are_recorded_failed_and_redone(work):
    results = work
    cmd = [sys.executable, "-m", "ctrbench.cli", "run", "-m", "lr", "-d", "synthetic",
           "--seed-list", "2", "--epochs", "10", "--results", str(results),
           "--executor", "slurm", "--time", "20:00"]
    # the run cancelled below trains ~17 s on an idle machine (10 epochs at batch 16, no early
    # stop), so that the scancel lands while it trains: at batch 128 its 10 epochs took ~2.5 s
    # and the task finished first in one CI run
    slow = [*cmd, "--set", "train.batch_size=16", "--set", "train.patience=20"]
    # 1. Ctrl-C while waiting: the job keeps running, the message says how to reattach
    waiter = subprocess.Popen(slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in waiter.stderr:
        seen.append(line)
        if "submitted 1 run(s)" in line:
            break
    waiter.send_signal(signal.SIGINT)
    _, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 130, "".join(seen) + err
    assert "Reattach: run the same command again" in err
    [sub] = _submissions(results)
    job_id = (sub / "job_id").read_text().strip()
    assert not _ended(job_id)  # still queued or running

    # 2. scancel while it trains: recorded as failed
    log = sub / "logs" / f"{job_id}_0.log"
    _wait_for("the task to start", lambda: log.is_file() and " on " in log.read_text())
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    _wait_for("the cancelled task to end", lambda: _ended(job_id))
    record_file = record_path(results, "synthetic", "lr", 2)
    _wait_for("a record", record_file.is_file, timeout=30)
    record = read_record(record_file)
    assert record.status == "failed" and f"Slurm task {job_id}_0" in record.error

    # 3. the next run submits it again (and only it) and finishes it
    redo = subprocess.run(slow, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert redo.returncode == 0, redo.stderr
    assert "submitted 1 run(s)" in redo.stderr and "1 finished" in redo.stdout
    assert read_record(record_file).status == "finished"

    # 4. a task killed with SIGKILL (out of memory, say) leaves no record: the next reconcile
    #    records it failed, clears its lock and submits it again
    cmd3 = [*cmd[:cmd.index("2")], "3", *cmd[cmd.index("2") + 1:]]
    submitted = subprocess.run([*cmd3, "--no-wait"], capture_output=True, text=True,
                               timeout=300)
    assert submitted.returncode == 0 and "not waiting" in submitted.stderr, submitted.stderr
    sub = _submissions(results)[-1]
    job_id = (sub / "job_id").read_text().strip()
    record_file = record_path(results, "synthetic", "lr", 3)
    lock = record_file.with_suffix(".lock")
    info = slurm_runs.task_info_path(sub, 0)
    _wait_for("the task to take its run's lock", lambda: lock.is_file() and info.is_file())
    os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
    _wait_for("the killed task to end", lambda: _ended(job_id))
    assert lock.is_file() and not record_file.exists()

    handle = runner.default_dataset_loader("synthetic")
    specs = runner.plan_runs(handle, runner.resolve_cards("lr", epochs=10), [3], results)
    done, attached, todo = slurm_runs.reconcile(specs, handle)
    assert (done, attached, todo) == ([], [], specs)
    record = read_record(record_file)
    assert record.status == "failed" and "without writing a record" in record.error
    assert not lock.exists()

    redo = subprocess.run(cmd3, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert redo.returncode == 0, redo.stderr
    assert "submitted 1 run(s)" in redo.stderr and "1 finished" in redo.stdout
    assert read_record(record_file).status == "finished"


# --------------------------------------------------------------------------- tune workers
TUNE_CARD = """
extends = "lr"
description = "lr on a tiny planted store (tests/test_slurm.py)"
[train]
lr = 0.05
batch_size = 256
[search]
"train.lr" = { type = "float", low = 1e-3, high = 0.3, log = true }
"""


def _tiny_store(path: Path) -> Path:
    """A tiny prepared store whose label is planted on the candidate item (item % 3 == 0)."""
    import numpy as np

    from ctrbench.data.store import write_store
    from ctrbench.schema import reference_schema

    schema = reference_schema(n_items=60, n_cates=8, user_fields={"user_id": 40},
                              context_fields={"month": 14}, max_len=5, neg_history=False)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 1500), ("valid", 400), ("test", 400)):
        item = rng.integers(2, 60, n).astype(np.int32)
        hist_len = rng.integers(0, 6, n).astype(np.int32)
        hist = (rng.integers(2, 60, (n, 5)) * (np.arange(5) < hist_len[:, None])).astype(np.int32)
        splits[split] = {"item_id": item, "cate_id": (item % 8).astype(np.int32),
                         "hist_item_id": hist, "hist_cate_id": (hist % 8).astype(np.int32),
                         "user_id": rng.integers(2, 40, n).astype(np.int32),
                         "month": rng.integers(2, 14, n).astype(np.int32), "hist_len": hist_len,
                         "label": (item % 3 == 0).astype(np.float32),
                         "group": rng.integers(0, 30, n)}
    write_store(path, schema, splits, {"dataset": "tiny", "data_hash": "tiny-slurm-v1"})
    return path


@pytest.mark.slurm
@pytest.mark.parametrize("storage", ["journal", "postgres"])
def test_tune_runs_two_slurm_workers_on_one_study(work, storage):
    """N workers share one study: the count is never overshot and both take trials; a re-run of
    a finished study submits no worker. A PostgreSQL password never reaches the disk."""
    results = work
    study = "lr_slurmtune@tiny"
    extra: list[str] = []
    if storage == "postgres":
        url = os.environ.get("CTRBENCH_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("CTRBENCH_TEST_POSTGRES_URL is not set (eval \"$(.ci/postgres.sh)\")")
        study = f"lr_slurmtune-{uuid.uuid4().hex[:8]}"
        extra = ["--storage", url, "--study", study]
    (results.parent / "models").mkdir()
    (results.parent / "models" / "lr_slurmtune.toml").write_text(TUNE_CARD)
    store = _tiny_store(results.parent / "tiny-store")
    args = ["tune", "--model", "lr_slurmtune", "--dataset", str(store), "--trials", "6",
            "--epochs", "1", "--results", str(results), "--executor", "slurm", "--workers", "2",
            "--time", "20:00", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "submitted 2 worker(s) as Slurm job array" in result.output
    out_dir = results / "tuning" / study
    with (out_dir / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(done) == 6  # the two workers share the count, neither overshoots it
    assert len({r["worker"] for r in done}) == 2  # both array tasks ran trials
    assert (results.parent / "models" / "tuned" / "lr_slurmtune@tiny.toml").is_file()
    [sub] = (out_dir / "slurm").iterdir()
    if storage == "journal":  # the default storage with --executor slurm
        assert (results.resolve() / "tuning" / "lr_slurmtune@tiny.log").is_file()
    else:
        secret = ":" + url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1] + "@"
        for path in sub.rglob("*"):  # no "user:password@" in the script, manifest or logs
            assert not path.is_file() or secret not in path.read_text()

    again = CliRunner().invoke(main, args)  # the study is done: no worker is submitted
    assert again.exit_code == 0, again.output
    assert "submitted" not in again.output
    assert list((out_dir / "slurm").iterdir()) == [sub]


def test_tune_on_slurm_refuses_sqlite_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", "/nonexistent")  # the storage is checked first, Slurm or not
    result = CliRunner().invoke(main, ["tune", "--model", "lr", "--dataset", "synthetic",
                                       "--storage", "sqlite:///x.db", "--executor", "slurm"])
    assert not (tmp_path / "home").exists()  # refused before preparing the dataset
    assert result.exit_code == 1
    assert "cannot share a SQLite storage between nodes" in result.output
