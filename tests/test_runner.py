"""The multi-run protocol: skip / force, failures, locks, killed runs, concurrent runners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import train_fixtures as tf

from ctrbench.errors import CardError
from ctrbench.models.fast import onednn_linear
from ctrbench.record import read_record, read_scores, record_path
from ctrbench.runs import runner
from ctrbench.runs.lock import RunLock
from ctrbench.runs.plan import plan_commands
from ctrbench.runs.summary import leaderboard

TESTS_DIR = Path(__file__).resolve().parent
NAN_CARD = 'arch = "tiny_logistic"\n[params]\nnan_after = 2\n[train]\nbatch_size = 64\n'
SLOW_CARD = tf.TINY_CARD.replace("epochs = 3", "epochs = 10").replace("patience = 2",
                                                                       "patience = 10")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted",
                                 rows=(640, 200, 200))


@pytest.fixture
def env(tmp_path, monkeypatch, store):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    tf.write_cards(tmp_path / "cards", {"tiny": tf.TINY_CARD,
                                        "tiny_b": tf.TINY_CARD.replace("lr = 0.05", "lr = 0.02"),
                                        "tiny_nan": NAN_CARD, "tiny_slow": SLOW_CARD})
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.chdir(tmp_path)
    handle = runner.DatasetHandle("planted", store, {"name": "planted"})
    return handle, tmp_path / "results"


def specs_for(handle, results, models="tiny", seeds=(0, 1), set_items=(), epochs=None):
    cards = runner.resolve_cards(models, runner.load_overrides(None, set_items), epochs)
    return runner.plan_runs(handle, cards, list(seeds), results)


def statuses(results):
    return [r.status for r in results]


def test_runs_record_then_skip_then_force(env):
    handle, results = env
    specs = specs_for(handle, results)
    first = runner.execute(specs, handle, device="cpu", show_progress=False)
    assert statuses(first) == ["finished", "finished"]
    path = record_path(results, "planted", "tiny", 0)
    record = read_record(path)
    assert record.status == "finished" and record.run_id == specs[0].run_id
    assert record.test["auc"] > 0.5 and record.best_epoch >= 1 and record.epochs
    assert record.dataset_identity == handle.data.identity
    assert record.model_config["train"]["lr"] == 0.05
    env_block = record.environment
    assert env_block["torch"] == torch.__version__ and "git_commit" in env_block
    assert env_block["onednn"] == onednn_linear.status("cpu")  # where xDeepFM's products ran
    scores = read_scores(path)
    assert str(scores["run_id"]) == specs[0].run_id
    assert scores["scores"].shape == scores["labels"].shape == (200,)
    assert not list(path.parent.glob("*.lock"))

    again = runner.execute(specs_for(handle, results), handle, device="cpu", show_progress=False)
    assert statuses(again) == ["skipped", "skipped"]
    assert read_record(path).started_at == record.started_at

    forced = runner.execute(specs_for(handle, results), handle, device="cpu", force=True,
                            show_progress=False)
    assert statuses(forced) == ["finished", "finished"]


def test_changed_config_is_refused_then_replaces_the_record_with_force(env):
    handle, results = env
    runner.execute(specs_for(handle, results, seeds=(0,)), handle, device="cpu",
                   show_progress=False)
    path = record_path(results, "planted", "tiny", 0)
    old = read_record(path)
    changed = specs_for(handle, results, seeds=(0,), set_items=("train.lr=0.01",))
    assert changed[0].run_id != old.run_id
    assert runner.pending(changed) == changed
    refused = runner.execute(changed, handle, device="cpu", show_progress=False)
    assert statuses(refused) == ["refused"] and "--force" in refused[0].detail
    assert "train.lr 0.05 (this run: 0.01)" in refused[0].detail
    assert read_record(path).run_id == old.run_id  # kept, untouched
    assert statuses(runner.execute(changed, handle, device="cpu", force=True,
                                   show_progress=False)) == ["finished"]
    new = read_record(path)
    assert new.run_id == changed[0].run_id and new.model_config["train"]["lr"] == 0.01
    archived = path.parent / "replaced" / f"{old.run_id}.seed-0.json"
    assert read_record(archived).started_at == old.started_at
    assert archived.with_suffix(".npz").is_file()


def test_epochs_cap_and_overrides_resolve_in_order(env, tmp_path):
    config = tmp_path / "over.toml"
    config.write_text("[train]\nlr = 0.3\nepochs = 9\n[models.tiny_b.train]\nlr = 0.2\n")
    overrides = runner.load_overrides(config, ["tiny_b:train.batch_size=32", "train.l2=0.5"])
    tiny, tiny_b = runner.resolve_cards("tiny,tiny_b", overrides, epochs=2)
    assert (tiny.train.lr, tiny.train.l2, tiny.train.epochs) == (0.3, 0.5, 2)
    assert (tiny_b.train.lr, tiny_b.train.batch_size, tiny_b.train.batch_size) == (0.2, 32, 32)
    with pytest.raises(CardError, match="unknown key"):
        runner.resolve_cards("tiny", runner.load_overrides(None, ["train.learning_rate=1"]))
    with pytest.raises(CardError, match="embedding_width"):
        runner.resolve_cards("tiny", runner.load_overrides(None, ["params.embedding_width=8"]))
    with pytest.raises(CardError, match="unknown model"):
        runner.resolve_cards("tiny", runner.load_overrides(None, ["tinyy:train.lr=1"]))


def test_failed_run_is_recorded_and_the_protocol_goes_on(env):
    handle, results = env
    specs = specs_for(handle, results, models="tiny_nan,tiny", seeds=(0,))
    outcome = runner.execute(specs, handle, device="cpu", show_progress=False)
    assert statuses(outcome) == ["failed", "finished"]
    failed = read_record(record_path(results, "planted", "tiny_nan", 0))
    assert failed.status == "failed" and "TrainingDiverged" in failed.error
    assert "epoch 1, step 2" in failed.error and failed.extra["traceback"]
    assert not (record_path(results, "planted", "tiny_nan", 0).with_suffix(".npz")).exists()
    rows, failed_rows = leaderboard(specs)
    assert rows[0][:2] == ["tiny_nan", "0/1"] and rows[1][1] == "1/1"
    assert failed_rows[0][:2] == ["tiny_nan", 0]
    # a failed run is not "finished": the next run tries it again
    assert runner.pending(specs_for(handle, results, models="tiny_nan,tiny", seeds=(0,)))[0] \
        .model == "tiny_nan"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_and_temporaries_are_taken_over(env):
    handle, results = env
    spec = specs_for(handle, results, seeds=(0,))[0]
    spec.record_file.parent.mkdir(parents=True)
    lock = runner.lock_path(spec.record_file)
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    tmp = spec.record_file.parent / ".seed-0.json.tmp-deadbeef"
    tmp.write_text('{"status": "finished"')  # half-written by a killed writer
    assert statuses(runner.execute([spec], handle, device="cpu", show_progress=False)) == [
        "finished"]
    assert not lock.exists() and not tmp.exists()
    assert read_record(spec.record_file).status == "finished"


def test_live_lock_is_respected(env):
    handle, results = env
    spec = specs_for(handle, results, seeds=(0,))[0]
    spec.record_file.parent.mkdir(parents=True)
    holder = RunLock(runner.lock_path(spec.record_file))
    assert holder.acquire()
    try:
        result = runner.execute([spec], handle, device="cpu", show_progress=False)[0]
        assert result.status == "locked" and str(os.getpid()) in result.detail
        assert not spec.record_file.exists()
    finally:
        holder.release()
    assert not runner.lock_path(spec.record_file).exists()


RUN_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
import train_fixtures
from ctrbench.runs import runner
from ctrbench.data.store import open_store
torch.set_num_threads(1)
runner.install_termination_handler()
handle = runner.DatasetHandle("planted", open_store({store!r}), {{"name": "planted"}})
cards = runner.resolve_cards({models!r})
specs = runner.plan_runs(handle, cards, {seeds!r}, __import__("pathlib").Path({results!r}))
out = runner.execute(specs, handle, device="cpu", show_progress=False)
print(json.dumps([[r.spec.model, r.spec.seed, r.status] for r in out]))
"""


def _script(tmp_path, store, results, models, seeds) -> Path:
    path = tmp_path / f"run_{models.replace(',', '_')}.py"
    path.write_text(textwrap.dedent(RUN_SCRIPT.format(
        tests=str(TESTS_DIR), store=str(store.path), models=models, seeds=list(seeds),
        results=str(results))))
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_leaves_no_finished_looking_record_and_rerun_completes(env, tmp_path, store,
                                                                          sig):
    handle, results = env
    script = _script(tmp_path, store, results, "tiny_slow", [0])
    proc = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    spec = specs_for(handle, results, models="tiny_slow", seeds=(0,))[0]
    lock = runner.lock_path(spec.record_file)
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert lock.exists(), proc.communicate()
    os.kill(proc.pid, sig)
    proc.wait()
    assert not spec.record_file.exists()
    if sig == signal.SIGKILL:  # no cleanup at all: a stale lock of a dead pid stays
        assert lock.exists()
    else:  # SIGTERM -> SystemExit: the lock is released on the way out
        assert proc.returncode == 128 + signal.SIGTERM and not lock.exists()
    assert runner.pending([spec]) == [spec]
    assert statuses(runner.execute([spec], handle, device="cpu", show_progress=False)) == [
        "finished"]
    files = sorted(p.name for p in spec.record_file.parent.iterdir())
    assert files == ["seed-0.json", "seed-0.npz"]


def test_two_concurrent_runners_never_duplicate(env, tmp_path, store):
    _, results = env
    script = _script(tmp_path, store, results, "tiny,tiny_b", [0, 1])
    procs = [subprocess.Popen([sys.executable, str(script)], env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    finished = [tuple(r[:2]) for out in outputs for r in out if r[2] == "finished"]
    assert sorted(finished) == [("tiny", 0), ("tiny", 1), ("tiny_b", 0), ("tiny_b", 1)]
    for out in outputs:
        assert all(r[2] in ("finished", "skipped", "locked") for r in out)
    records = sorted((results / "runs").rglob("*.json"))
    assert len(records) == 4 and all(read_record(p).status == "finished" for p in records)
    assert not list((results / "runs").rglob("*.lock"))
    assert not list((results / "runs").rglob(".*"))


def test_parallel_jobs_in_spawned_workers(env):
    handle, results = env
    specs = specs_for(handle, results, models="tiny,tiny_b", seeds=(0,))
    outcome = runner.execute(specs, handle, device="cpu", jobs=2, devices=["cpu"],
                             show_progress=False)
    assert statuses(outcome) == ["finished", "finished"]
    for model in ("tiny", "tiny_b"):
        record = read_record(record_path(results, "planted", model, 0))
        assert record.status == "finished" and record.environment["threads"] >= 1
        assert np.isfinite(read_scores(record_path(results, "planted", model, 0))["scores"]).all()


def test_plan_commands_are_self_contained(env, tmp_path):
    handle, results = env
    specs = specs_for(handle, results, models="tiny,tiny_b", seeds=(0, 2))
    lines = plan_commands(specs, results_root=results, device="cpu", config_file=None,
                          set_items=("train.lr=0.1", "tiny_b:params.embedding_dim=2"), epochs=2)
    assert len(lines) == 4
    assert lines[0] == (f"ctrbench run --models tiny --dataset planted --seed-list 0 --results "
                        f"{results.resolve()} --device cpu --epochs 2 --set train.lr=0.1")
    assert lines[3].endswith("--set train.lr=0.1 --set tiny_b:params.embedding_dim=2")


def test_lock_left_empty_or_by_a_killed_holder_never_blocks(env, tmp_path):
    """The lock is an OS lock: a file without a live holder (0 bytes, as a holder killed while
    writing it leaves it, or naming a killed process) is taken at once."""
    handle, results = env
    spec = specs_for(handle, results, seeds=(0,))[0]
    lock = runner.lock_path(spec.record_file)
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    assert statuses(runner.execute([spec], handle, device="cpu", show_progress=False)) == [
        "finished"]
    assert not lock.exists()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS_DIR.parent)!r})
        from ctrbench.runs.lock import RunLock
        lock = RunLock({str(tmp_path / 'x.lock')!r})
        assert lock.acquire()
        print("held", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        contender = RunLock(tmp_path / "x.lock")
        assert not contender.acquire() and contender.holder["pid"] == holder.pid
        holder.kill()
        holder.wait()
        assert contender.acquire()  # the kernel dropped the dead holder's lock
        contender.release()
        assert not (tmp_path / "x.lock").exists()
    finally:
        holder.kill()
        holder.wait()
