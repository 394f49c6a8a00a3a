"""`ctrbench tune`: search-space validation, storages, pruning, failures, resuming, workers.

Every study trains the real trainer (engine.train) with the real `lr` architecture on a tiny
prepared store written with write_store, whose label is planted on the candidate item (item id
divisible by 3, 10% flipped): a sensible learning rate reaches a high validation AUC in one epoch,
a learning rate of 1e-6 stays at chance. Storages are real (SQLite files, a journal file, and
PostgreSQL when CTRBENCH_TEST_POSTGRES_URL is set, e.g. by `eval "$(.ci/postgres.sh)"`).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner
from optuna.trial import TrialState

from ctrbench import cards
from ctrbench.cli import main
from ctrbench.data.store import PreparedData, write_store
from ctrbench.errors import CardError, CtrbenchError
from ctrbench.schema import reference_schema
from ctrbench.tune.space import card_values, grid, parse_dimension, parse_search_space, suggest
from ctrbench.tune.storage import open_storage, redact
from ctrbench.tune.study import derive_seed, make_pruner, make_sampler

MODEL = "lr_tunetest"
TEST_CARD = """
extends = "lr"
description = "lr on the tiny planted store (tests/test_tune.py)"
[train]
lr = 0.05
l2 = 1e-5
batch_size = 64
[search]
"train.lr" = { type = "float", low = 1e-6, high = 0.3, log = true }
"train.l2" = { type = "float", low = 1e-7, high = 1e-4, log = true }
"train.patience" = { type = "int", low = 1, high = 2 }
"train.batch_size" = { type = "categorical", choices = [64] }
"""
GRID_CARD = """
extends = "lr_tunetest"
[search]
"train.lr" = { type = "categorical", choices = [0.05, 0.1] }
"train.l2" = { type = "float", low = 1e-6, high = 2e-6, step = 1e-6 }
"train.patience" = { type = "int", low = 1, high = 1 }
"""
SRC = str(Path(__file__).resolve().parents[1])


def _tiny_columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    item = rng.integers(2, 60, n).astype(np.int32)
    hist_len = rng.integers(0, 6, n).astype(np.int32)
    hist = rng.integers(2, 60, (n, 5)) * (np.arange(5) < hist_len[:, None])
    label = (item % 3 == 0).astype(np.float32)
    flip = rng.random(n) < 0.1
    label[flip] = 1 - label[flip]
    return {"item_id": item, "cate_id": (item % 8).astype(np.int32),
            "hist_item_id": hist.astype(np.int32), "hist_cate_id": (hist % 8).astype(np.int32),
            "user_id": rng.integers(2, 40, n).astype(np.int32),
            "month": rng.integers(2, 14, n).astype(np.int32),
            "hist_len": hist_len, "label": label, "group": rng.integers(0, 30, n)}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    schema = reference_schema(n_items=60, n_cates=8, user_fields={"user_id": 40},
                              context_fields={"month": 14}, max_len=5, neg_history=False)
    rng = np.random.default_rng(0)
    splits = {s: _tiny_columns(n, rng) for s, n in (("train", 1500), ("valid", 400),
                                                    ("test", 400))}
    path = tmp_path_factory.mktemp("store") / "tiny"
    write_store(path, schema, splits, {"dataset": "tiny", "data_hash": "tiny-v1"})
    return path


@pytest.fixture
def work(tmp_path, monkeypatch, store_dir) -> Path:
    """A working directory with the test cards in ./models; CTRBENCH_HOME in tmp."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{MODEL}.toml").write_text(TEST_CARD)
    (tmp_path / "models" / "lr_gridtest.toml").write_text(GRID_CARD)
    return tmp_path


def tune(*args: str, store: Path, expect: int = 0):
    argv = ["tune", "--model", MODEL, "--dataset", str(store), "--results", "res", "--epochs",
            "1", "-q", *args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result


def load(study: str = f"{MODEL}@tiny") -> optuna.Study:
    url = f"sqlite:///{Path('res/tuning').resolve()}/{study}.db"
    return optuna.load_study(study_name=study, storage=url)


def table(study: str = f"{MODEL}@tiny") -> list[dict[str, str]]:
    with open(Path("res/tuning") / study / "trials.csv") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- search space
def test_search_space_is_validated():
    assert parse_dimension("train.lr", {"type": "float", "low": 1e-4, "high": 1.0,
                                        "log": True}).is_discrete is False
    bad = [
        {"type": "uniform", "low": 0, "high": 1},  # unknown type
        {"type": "float", "low": 0.1, "high": 1, "lgo": True},  # unknown option
        {"type": "float", "low": 1.0, "high": 0.1},  # empty range
        {"type": "float", "low": 0.0, "high": 1.0, "log": True},  # log of 0
        {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1},
        {"type": "int", "low": 1.5, "high": 3},  # not an integer
        {"type": "categorical", "choices": []},
        {"type": "float", "high": 1.0},  # missing low
        "0.1..1",
    ]
    for spec in bad:
        with pytest.raises(CardError):
            parse_dimension("train.lr", spec)


def test_search_keys_are_checked_against_the_card(work):
    card = cards.load_model_card(MODEL)
    # the shared space of _paper.toml (lr, l2, batch size; dropout is optional and LR has
    # none) as restated by the test card
    assert [d.key for d in parse_search_space(card)] == [
        "train.batch_size", "train.l2", "train.lr", "train.patience"]
    for key in ("train.lrr", "params.no_such_param", "lr", "model.lr"):
        broken = cards.model_card_from_dict({**cards.load_raw_card("models", MODEL),
                                             "search": {key: {"type": "int", "low": 1,
                                                              "high": 2}}})
        with pytest.raises(CardError, match="search"):
            parse_search_space(broken)
    # the card's own values are a point of its space (queued as the first trial)
    assert card_values(card, parse_search_space(card)) == {
        "train.batch_size": 64, "train.l2": 1e-5, "train.lr": 0.05, "train.patience": 2}
    outside = cards.model_card_from_dict({**cards.load_raw_card("models", MODEL),
                                          "train": {"lr": 0.5}})
    assert card_values(outside, parse_search_space(outside)) is None  # lr above 0.3


def test_every_model_card_has_a_valid_search_space():
    from ctrbench.models import ARCHITECTURES

    for name in cards.model_names():
        card = cards.load_model_card(name)
        if not ARCHITECTURES.get(card.arch).trainable:  # pop: nothing to tune (test_pop.py)
            continue
        dims = parse_search_space(card)
        assert dims, name


def test_grid_needs_a_discrete_space(work):
    space = parse_search_space(cards.load_model_card("lr_gridtest"))
    assert grid(space) == {"train.batch_size": [64], "train.l2": [1e-6, 2e-6],
                           "train.lr": [0.05, 0.1], "train.patience": [1]}
    with pytest.raises(CardError, match="continuous"):
        grid(parse_search_space(cards.load_model_card(MODEL)))


def test_trial_seeds_are_derived_and_distinct():
    seeds = {derive_seed(0, "train", k) for k in range(100)}
    assert len(seeds) == 100
    assert derive_seed(0, "train", 3) == derive_seed(0, "train", 3)
    assert derive_seed(0, "train", 3) != derive_seed(1, "train", 3)
    assert derive_seed(0, "train", 3) != derive_seed(0, "sampler", 3)


def test_samplers_are_seeded(work):
    space = parse_search_space(cards.load_model_card(MODEL))

    def draws(kind: str, seed: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(kind, space, seed))
        for _ in range(4):
            trial = study.ask()
            study.tell(trial, suggest(trial, space)["train.lr"])
        return [t.params for t in study.trials]

    for kind in ("tpe", "random"):
        assert draws(kind, 7) == draws(kind, 7)
        assert draws(kind, 7) != draws(kind, 8)
    assert isinstance(make_pruner("median", 3, 1), MedianPruner)
    assert isinstance(make_pruner("hyperband", 3, 1), HyperbandPruner)
    assert isinstance(make_pruner("none", 3, 1), NopPruner)


# --------------------------------------------------------------------------- storages
def test_storage_urls(tmp_path):
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("sqlite:////x/m@d.db") == "sqlite:////x/m@d.db"
    with pytest.raises(CtrbenchError, match="not a storage URL"):
        open_storage("not a url", tmp_path, "s")
    with pytest.raises(CtrbenchError, match=r"cannot open storage postgresql://u:\*\*\*@"):
        open_storage("postgresql://u:secret@127.0.0.1:1/db", tmp_path, "s")
    default = open_storage(None, tmp_path, "m@d")
    assert default.display == f"sqlite:///{(tmp_path / 'tuning' / 'm@d.db').resolve()}"
    assert default.heartbeat
    journal = open_storage(f"journal:{tmp_path / 'j' / 's.log'}", tmp_path, "s")
    assert not journal.heartbeat


# --------------------------------------------------------------------------- studies
def test_tiny_study_writes_table_card_and_plots(work, store_dir, monkeypatch):
    def no_test_split(self, split, *args, **kwargs):
        assert split != "test", "tuning must never read the test split"
        return original(self, split, *args, **kwargs)

    original = PreparedData.split
    monkeypatch.setattr(PreparedData, "split", no_test_split)
    result = tune("--trials", "3", "--pruner", "none", store=store_dir)
    study = load()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    rows = table()
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert all(r["train_seed"] == str(derive_seed(0, "train", int(r["number"]))) for r in rows)
    assert Path("res/tuning", f"{MODEL}@tiny", "trials.md").read_text().count("| COMPLETE") == 3
    assert Path("res/tuning", f"{MODEL}@tiny", "history.png").stat().st_size > 5000
    assert Path("res/tuning", f"{MODEL}@tiny", "importances.png").stat().st_size > 5000
    # the tuned card round-trips: found by name, its values are the best trial's
    name = f"{MODEL}@tiny"
    assert Path("models/tuned", f"{name}.toml").is_file()
    assert cards.resolve_model_spec(name) == [name]
    tuned = cards.load_model_card(name)
    best = study.best_trial
    assert tuned.arch == "lr" and tuned.extends_chain[0] == MODEL
    assert tuned.train.lr == best.params["train.lr"]
    assert tuned.train.l2 == best.params["train.l2"]
    assert tuned.train.patience == best.params["train.patience"]
    assert tuned.train.batch_size == best.params["train.batch_size"]
    assert tuned.train.batch_size == 64  # inherited from the tuned card
    assert tuned.tuned_from["trial"] == best.number
    assert tuned.tuned_from["value"] == best.value
    assert tuned.tuned_from["study"] == name
    assert f"tuned card: {Path.cwd() / 'models/tuned' / name}.toml" in result.output


def test_single_complete_trial_skips_importances(work, store_dir):
    result = tune("--trials", "1", store=store_dir)
    assert "importances: skipped: needs at least 2 complete trials" in result.output
    assert not Path("res/tuning", f"{MODEL}@tiny", "importances.png").exists()


def test_hopeless_trial_is_pruned(work, store_dir):
    tune("--trials", "1", store=store_dir)  # trial 0: the card's own values (lr 0.05)
    load().enqueue_trial({"train.lr": 1e-6})  # hopeless: no learning in one epoch
    tune("--trials", "2", "--pruner", "median", "--prune-after", "1", store=store_dir)
    trials = load().trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].params["train.lr"] == 0.05
    assert trials[0].value > 0.8
    assert trials[1].params["train.lr"] == 1e-6
    assert trials[1].state == TrialState.PRUNED
    assert trials[1].user_attrs["pruned_at_epoch"] == 1
    assert len(trials) == 2  # --trials counts complete and pruned trials
    assert table()[1]["pruned_at_epoch"] == "1"


def test_diverging_trial_fails_and_the_study_goes_on(work, store_dir):
    tune("--trials", "0", store=store_dir)  # creates the study; trial 0 (the card) is queued
    with pytest.warns(UserWarning, match="out of range"):
        load().enqueue_trial({"train.lr": 1e30})  # outside the space: an inf/NaN loss
        result = tune("--trials", "2", "--pruner", "none", store=store_dir)
    trials = load().trials
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params["train.lr"] == 1e30
    assert "TrainingDiverged" in trials[1].user_attrs["error"]
    assert "TrainingDiverged" in table()[1]["error"]
    assert "2 complete, 0 pruned, 1 failed" in result.output


def test_interrupted_study_resumes_as_if_uninterrupted(work, store_dir):
    tune("--trials", "1", "--study", "once", store=store_dir)
    tune("--trials", "3", "--study", "once", store=store_dir)
    tune("--trials", "3", "--study", "straight", "--replace-card", store=store_dir)  # its card
    resumed, straight = load("once"), load("straight")
    assert len(resumed.trials) == 3
    assert [t.state for t in resumed.trials] == [TrialState.COMPLETE] * 3
    # same seed: the resumed study drew and trained exactly what an uninterrupted one did
    assert [t.params for t in resumed.trials] == [t.params for t in straight.trials]
    assert [t.value for t in resumed.trials] == [t.value for t in straight.trials]
    # --trials counts the study's trials: asking for 2 when 3 are done runs nothing
    result = tune("--trials", "2", "--study", "once", "--replace-card", store=store_dir)
    assert "the study has 3 complete or pruned trials" in result.output
    assert len(load("once").trials) == 3


@pytest.mark.slow
def test_trial_of_a_killed_worker_is_failed_and_retried(work, store_dir):
    """A worker killed mid-trial leaves it RUNNING; its heartbeat stops; the next worker fails
    it (heartbeat grace = 2 x 1 s) and re-queues its parameters once."""
    env = {**os.environ, "PYTHONPATH": SRC}
    argv = [sys.executable, "-m", "ctrbench.cli", "tune", "--model", MODEL, "--dataset",
            str(store_dir), "--results", "res", "--epochs", "40", "--heartbeat", "1", "-q"]
    worker = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                running = [t for t in load().trials if t.state == TrialState.RUNNING]
            except Exception:  # the worker has not created the storage or study yet
                running = []
            if running and len(running[0].params) == 4:  # every value drawn
                break
            time.sleep(0.2)
        else:
            pytest.fail("the worker never started a trial")
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    killed = running[0]
    done_before = sum(t.state == TrialState.COMPLETE for t in load().trials)
    time.sleep(2.5)  # longer than the grace period: the trial is stale
    tune("--trials", str(done_before + 2), "--heartbeat", "1", "--pruner", "none", "--epochs",
         "40", store=store_dir)
    trials = load().trials
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == done_before + 2
    assert "worker killed" in table()[killed.number]["error"]


def test_journal_storage_and_fail_running(work, store_dir):
    storage = f"journal:{work / 'j' / 'study.log'}"
    tune("--trials", "1", "--storage", storage, store=store_dir)
    handle = open_storage(storage, work, "x")
    study = optuna.load_study(study_name=f"{MODEL}@tiny", storage=handle.storage)
    orphan = study.ask()  # as if its worker died: RUNNING forever (no heartbeat in journals)
    result = tune("--trials", "2", "--storage", storage, store=store_dir)
    assert "running in other workers" in result.output
    tune("--trials", "2", "--storage", storage, "--fail-running", store=store_dir)
    trials = optuna.load_study(study_name=f"{MODEL}@tiny", storage=handle.storage).trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_grid_sampler_stops_when_the_grid_is_done(work, store_dir):
    argv = ["tune", "--model", "lr_gridtest", "--dataset", str(store_dir), "--results", "res",
            "--epochs", "1", "-q", "--sampler", "grid", "--trials", "9", "--pruner", "none"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    trials = load("lr_gridtest@tiny").trials
    assert sorted((t.params["train.lr"], t.params["train.l2"]) for t in trials) == [
        (0.05, 1e-6), (0.05, 2e-6), (0.1, 1e-6), (0.1, 2e-6)]
    assert "asked for 4" in result.output


def test_user_errors_are_clean(work, store_dir):
    result = tune("--sampler", "grid", expect=1, store=store_dir)
    assert "continuous" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["tune", "--model", "lr_tunetst", "--dataset",
                                       str(store_dir)])
    assert result.exit_code == 1 and "Did you mean" in result.output
    result = tune("--storage", "postgresql://u:pw@127.0.0.1:1/x", expect=1, store=store_dir)
    assert "cannot open storage" in result.output and "pw" not in result.output
    tune("--trials", "0", "--study", "shared", store=store_dir)
    argv = ["tune", "--model", "lr_gridtest", "--dataset", str(store_dir), "--results", "res",
            "--study", "shared", "--storage",
            f"sqlite:///{Path('res/tuning/shared.db').resolve()}", "--trials", "0"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1 and "made for other settings" in result.output


# --------------------------------------------------------------------------- several workers
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import ctrbench.cli, ctrbench.engine.train, optuna, torch  # import before the start signal
    torch.set_num_threads(1)
    # Each trial lasts at least a second, so that one worker cannot finish every trial before
    # the other has opened the study (an LR trial on this tiny store takes well under that).
    train = ctrbench.engine.train.train_and_evaluate
    def slow_train(*args, **kwargs):
        time.sleep(1.0)
        return train(*args, **kwargs)
    ctrbench.engine.train.train_and_evaluate = slow_train
    ready, go = Path(sys.argv[1]), Path(sys.argv[2])
    ready.write_text("ready")
    while not go.exists():
        time.sleep(0.05)
    ctrbench.cli.main(sys.argv[3:])
""")


def _two_workers(work: Path, store: Path, storage: str, study: str, n_trials: int) -> None:
    script = work / "worker.py"
    script.write_text(WORKER)
    go = work / "go"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    argv = ["tune", "--model", MODEL, "--dataset", str(store), "--results", str(work / "res"),
            "--epochs", "1", "--pruner", "none", "--storage", storage, "--study", study,
            "--trials", str(n_trials), "-q"]
    procs, readies = [], []
    for i in range(2):
        ready = work / f"ready-{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, str(script), str(ready), str(go), *argv],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.write_text("go")  # both start at once
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out


def _check_shared(study: optuna.Study, n_trials: int) -> None:
    trials = study.trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # no duplicated or missing numbers
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == n_trials
    # the only other trials are ones dropped because the other worker started them first
    assert all("surplus" in t.user_attrs.get("error", "") for t in trials if t not in done)
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers ran trials
    assert sum(t.user_attrs.get("origin") == "card" for t in trials) == 1  # queued once


def test_a_queued_trial_another_worker_recorded_first_is_not_a_crash(work, store_dir,
                                                                      monkeypatch):
    """SQLite has no row lock, so two workers sharing a study can both pop one queued trial;
    optuna then refuses the second tell ("Cannot tell a COMPLETE trial"). That once stopped a
    worker of the two-worker test below with a traceback; the study must go on."""
    real = optuna.study.Study.optimize
    calls = []

    def told_twice(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Cannot tell a COMPLETE trial.")

    monkeypatch.setattr(optuna.study.Study, "optimize", told_twice)
    tune("--trials", "2", store=store_dir)  # exit 0 (was the ValueError's traceback)
    assert len(calls) >= 2 and sum(t.state == TrialState.COMPLETE for t in load().trials) == 2


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(work, store_dir):
    storage = f"sqlite:///{work / 'shared.db'}"
    _two_workers(work, store_dir, storage, "shared", 4)
    _check_shared(optuna.load_study(study_name="shared", storage=storage), 4)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("CTRBENCH_TEST_POSTGRES_URL"),
                    reason="CTRBENCH_TEST_POSTGRES_URL is not set (eval \"$(.ci/postgres.sh)\" "
                           "starts a local server and sets it)")
def test_two_workers_share_a_postgres_study(work, store_dir):
    url = os.environ["CTRBENCH_TEST_POSTGRES_URL"]
    study_name = f"ctrbench-test-{uuid.uuid4().hex[:12]}"
    try:
        _two_workers(work, store_dir, url, study_name, 4)
        storage = open_storage(url, work, study_name, heartbeat=0).storage
        _check_shared(optuna.load_study(study_name=study_name, storage=storage), 4)
    finally:
        storage = open_storage(url, work, study_name, heartbeat=0).storage
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
        except KeyError:
            pass
