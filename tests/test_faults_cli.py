"""Faults of `run`, `plan` and `tune` found by hand (issue notes 6, 8, 9, 10, 11, 12).

- 6: a `--config` file that is not UTF-8 is one message naming it (exit 1, as bad TOML);
- 8, 11, 12: bad option values exit 2 naming the option (click ranges; NaN refused; seeds in
  0..2**32-1; --seeds and --seed-list exclude each other);
- 9: a tuned card written by another study or storage is never replaced silently: refused
  (the study's trials are kept) unless --replace-card;
- 10: Ctrl-C or SIGTERM during a trial: the trial is FAIL and its values are queued again with
  its training seed, as after a kill -9, so the resumed study retries them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from test_tune import MODEL, SRC, TEST_CARD, store_dir  # noqa: F401 (store_dir: a fixture)

from ctrbench import progress
from ctrbench.cli import main
from ctrbench.tune.study import derive_seed

SELECT = ["-m", "lr", "-d", "synthetic"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory with ./models holding the tune test card."""
    monkeypatch.setattr(progress, "_MODE", "auto")
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{MODEL}.toml").write_text(TEST_CARD)
    return tmp_path


def invoke(*args: str):
    progress.set_mode("auto")  # `-q` of an earlier invocation in this process would stick
    return CliRunner().invoke(main, list(args))


# --------------------------------------------------------------------------- 6: --config
def test_config_file_that_is_not_utf8_is_one_clean_error(work):
    config = work / "c6.toml"
    config.write_bytes(b"[train]\nlr = 0.01\n# \xf9\xfe\xff\n")
    result = invoke("plan", *SELECT, "--seeds", "1", "--config", str(config), "--results", "r")
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert str(config) in result.output and "UTF-8" in result.output
    assert "Traceback" not in result.output
    config.write_text("[train\n")  # bad TOML: the same exit status
    assert invoke("plan", *SELECT, "--config", str(config), "--results", "r").exit_code == 1


# --------------------------------------------------------------------------- 8, 11, 12: options
@pytest.mark.parametrize("command,args,option", [
    ("plan", ["--epochs", "0"], "--epochs"),
    ("plan", ["--epochs", "-3"], "--epochs"),
    ("run", ["--epochs", "0"], "--epochs"),
    ("plan", ["--seeds", "0"], "--seeds"),
    ("plan", ["--seeds", "1000000000"], "--seeds"),  # a list of 10^9 runs before: no bound
    ("run", ["--jobs", "0"], "--jobs"),
    ("plan", ["--seed-list", "99999999999999999999"], "--seed-list"),
    ("plan", ["--seed-list", "0,4294967296"], "--seed-list"),
    ("plan", ["--seed-list", "-1"], "--seed-list"),
])
def test_bad_run_and_plan_option_values_exit_2(work, command, args, option):
    result = invoke(command, *SELECT, *args, "--results", "r")
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert option in result.output and "Traceback" not in result.output
    if option == "--seed-list":
        assert "4294967295" in result.output  # the allowed range


def test_seeds_and_seed_list_exclude_each_other(work):
    result = invoke("plan", *SELECT, "--seeds", "2", "--seed-list", "5", "--results", "r")
    assert result.exit_code == 2, result.output
    assert "--seeds" in result.output and "--seed-list" in result.output


@pytest.mark.parametrize("args,option", [
    (["--trials", "-1"], "--trials"),
    (["--epochs", "0"], "--epochs"),
    (["--timeout", "-5"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (["--prune-after", "-3"], "--prune-after"),
    (["--heartbeat", "-1"], "--heartbeat"),
    (["--models", "lr", "--timeout-per-model", "nan"], "--timeout-per-model"),
])
def test_bad_tune_option_values_exit_2(work, args, option):
    # an unknown dataset: before the fix the bad values got as far as that (exit 1), no training
    select = [] if "--models" in args else ["--model", "lr"]
    result = invoke("tune", *select, "--dataset", "no_such_dataset", *args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert option in result.output and "Traceback" not in result.output


def test_override_for_a_model_not_selected_is_an_error(work):
    result = invoke("plan", *SELECT, "--seeds", "1", "--set", "din:train.lr=0.1",
                    "--results", "r")
    assert result.exit_code == 1, result.output
    assert "--set din:train.lr=0.1: names a model that is not selected" in result.output


# --------------------------------------------------------------------------- 9: tuned cards
def tune(store: Path, *args: str, expect: int = 0):
    result = invoke("tune", "--model", MODEL, "--dataset", str(store), "--epochs", "1",
                    "--pruner", "none", "-q", *args)
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result


def load(results: str, study: str) -> optuna.Study:
    url = f"sqlite:///{Path(results, 'tuning').resolve()}/{study}.db"
    return optuna.load_study(study_name=study, storage=url)


def test_tuned_card_of_another_study_or_storage_is_not_replaced(work, store_dir):  # noqa: F811
    card = work / "models" / "tuned" / f"{MODEL}@tiny.toml"
    tune(store_dir, "--results", "res", "--study", "shared", "--trials", "1")
    first = card.read_bytes()
    assert b"study = \"shared\"" in first
    tune(store_dir, "--results", "res", "--study", "shared", "--trials", "2")  # same study
    first = card.read_bytes()

    other = tune(store_dir, "--results", "res", "--study", "other", "--trials", "1", expect=1)
    assert card.read_bytes() == first
    assert "'shared'" in other.output and "--replace-card" in other.output
    assert [t.state for t in load("res", "other").trials] == [TrialState.COMPLETE]  # kept
    assert (work / "res/tuning/other/trials.csv").is_file()

    elsewhere = tune(store_dir, "--results", "res2", "--study", "shared", "--trials", "1",
                     expect=1)  # the same study name in another results folder
    assert card.read_bytes() == first and "res/tuning/shared.db" in elsewhere.output
    group = invoke("tune", "--models", MODEL, "--dataset", str(store_dir), "--epochs", "1",
                   "--pruner", "none", "-q", "--results", "res3", "--trials", "1")
    assert group.exit_code == 1 and card.read_bytes() == first, group.output
    assert "--replace-card" in group.output

    replaced = tune(store_dir, "--results", "res", "--study", "other", "--trials", "1",
                    "--replace-card")
    assert b"study = \"other\"" in card.read_bytes() and "replaced" in replaced.output
    assert len(load("res", "other").trials) == 1  # no trial was run again


# --------------------------------------------------------------------------- 10: interruptions
@pytest.mark.parametrize("stop,code", [(KeyboardInterrupt, 130), (SystemExit(143), 143)])
def test_interrupted_trial_is_retried_with_its_seed(work, store_dir, monkeypatch, stop,  # noqa: F811
                                                    code):
    import ctrbench.engine.train as train_module

    tune(store_dir, "--results", "res", "--study", "straight", "--trials", "1")
    reference = load("res", "straight").trials[0]
    original = train_module.train_and_evaluate

    def interrupted(*args, **kwargs):
        raise stop

    monkeypatch.setattr(train_module, "train_and_evaluate", interrupted)
    tune(store_dir, "--results", "res", "--study", "cut", "--trials", "1", expect=code)
    trials = load("res", "cut").trials
    assert trials[0].state == TrialState.FAIL and "interrupted" in trials[0].user_attrs["error"]
    assert trials[1].state == TrialState.WAITING  # its values, queued again

    monkeypatch.setattr(train_module, "train_and_evaluate", original)
    tune(store_dir, "--results", "res", "--study", "cut", "--trials", "1", "--replace-card")
    retry = load("res", "cut").trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.params == reference.params and retry.value == reference.value
    assert retry.user_attrs["train_seed"] == derive_seed(0, "train", 0)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signalled_worker_leaves_its_trial_queued_again(work, store_dir, signum, code):  # noqa: F811
    # trials long enough that the signal always lands inside the first one, even on a loaded
    # CI machine: the search space's patience (1-2) stopped them within a second or two, and
    # a worker there finished both trials before the signal (exit 0)
    (work / "models" / "lr_long.toml").write_text(
        f'extends = "{MODEL}"\n[train]\nepochs = 100000\npatience = 100000\n[search]\n'
        '"train.patience" = { type = "int", low = 100000, high = 100000 }\n')
    # a hung worker is sent SIGABRT, and faulthandler writes every thread's stack to its stderr
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    argv = [sys.executable, "-m", "ctrbench.cli", "tune", "--model", "lr_long", "--dataset",
            str(store_dir), "--epochs", "100000", "--pruner", "none", "--results", "res",
            "--study", "sig", "--trials", "2", "-q"]
    stderr = work / "worker.err"
    with open(stderr, "wb") as err:
        worker = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        running = []
        while time.monotonic() < deadline and worker.poll() is None and not running:
            try:
                running = [t for t in load("res", "sig").trials
                           if t.state == TrialState.RUNNING and len(t.params) == 4]
            except Exception:  # storage or study not created yet
                time.sleep(0.05)
        assert running, "the worker never started a trial"
        worker.send_signal(signum)
        try:
            status = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGABRT)
            worker.wait(timeout=30)
            pytest.fail("the worker had not exited 60 s after the signal; its stacks:\n"
                        + stderr.read_text(errors="replace")[-6000:])
        assert status == code, stderr.read_text(errors="replace")[-3000:]
    finally:
        worker.kill()
        worker.wait()
    trials = load("res", "sig").trials
    cut = trials[running[0].number]
    assert cut.state == TrialState.FAIL and "interrupted" in cut.user_attrs["error"]
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == cut.number]
    assert retry.state == TrialState.WAITING and retry.user_attrs["train_seed"] == \
        cut.user_attrs["train_seed"]


@pytest.mark.parametrize("command,says", [
    (("download", "movielens-100k"), "nothing half-written is taken for finished"),
    (("run", "-m", "lr", "-d", "synthetic"), "finished results are kept"),
])
def test_ctrl_c_says_what_it_leaves_for_the_command_it_stopped(work, monkeypatch, command,
                                                               says):
    """Ctrl-C in ``download`` said "the next run resumes", which is about ``run``."""
    import ctrbench.cards as cards

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cards, "load_dataset_card", interrupted)
    result = invoke(*command)
    assert result.exit_code == 130, result.output
    assert says in result.output
    assert ("resumes" in result.output) == (command[0] == "run")


def test_sigterm_during_generate_leaves_no_temporary_folder(tmp_path):
    """SIGTERM killed ``generate`` outright: its ``.<out>.tmp-<hex>/`` stayed beside ``--out``
    and nothing ever removed it. Every command now turns SIGTERM into exit 143 after its
    cleanup."""
    out = tmp_path / "world"
    env = {**os.environ, "CTRBENCH_HOME": str(tmp_path / "home")}
    child = subprocess.Popen([sys.executable, "-m", "ctrbench.cli", "generate", "--scale",
                              "electronics", "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.is_dir() and any(p.iterdir()) for p in tmp_path.glob(".world.tmp-*")):
        assert child.poll() is None and time.monotonic() < deadline, "no temporary folder"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err.decode()
    assert list(tmp_path.glob(".world.tmp-*")) == [] and not out.exists()
    assert b"Traceback" not in err


@pytest.mark.parametrize("card", ['extends = "din"\n[params]\nheads_typo = 3\n',
                                  'arch = "nosuch"\ndescription = "x"\n'])
def test_list_models_names_a_card_it_cannot_build_and_lists_the_rest(work, card):
    """A user card with a bad param or architecture stopped ``list models`` at that card: one
    error, nothing listed."""
    (work / "models" / "odd.toml").write_text(card)
    result = invoke("list", "models")
    assert result.exit_code == 1, result.output
    assert "odd" in result.output and "skipped a card" in result.output
    assert "mian" in result.output and "din" in result.output  # the others are listed
    assert "Traceback" not in result.output


def test_a_name_in_other_case_suggests_the_registered_one(work):
    """``-m LR`` suggested nothing: the close-match search is case-sensitive."""
    result = invoke("plan", "-m", "LR", "-d", "synthetic", "--results", "r")
    assert result.exit_code == 1 and "Did you mean: lr?" in result.output, result.output


def test_tune_refuses_a_device_name_as_a_bad_option_value(work):
    """``tune --device tpu`` exited 1 after loading the store (a usage error is 2)."""
    result = invoke("tune", "--model", "lr", "--dataset", "synthetic", "--device", "tpu")
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output, result.output
