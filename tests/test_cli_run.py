"""`ctrbench run` and `ctrbench plan` through click's CliRunner, on the real synthetic dataset."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.record import read_record, read_scores, record_path

FAST = ["--epochs", "1", "--set", "train.batch_size=2048", "--set", "train.eval_batch_size=8192",
        "--device", "cpu", "-q"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One CTRBENCH_HOME for the module, so that synthetic is prepared once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def cli(home, tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(home))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"

    def invoke(*args: str):
        return CliRunner().invoke(main, [*args, "--results", str(results)])

    return invoke, results


def test_run_plan_and_rerun_on_synthetic(cli):
    invoke, results = cli
    planned = invoke("plan", "-m", "lr,mian", "-d", "synthetic", "--seed-list", "0", *FAST[:-1])
    assert planned.exit_code == 0, planned.output
    commands = [line for line in planned.output.splitlines() if line.startswith("ctrbench run")]
    assert len(commands) == 2 and "--models lr" in commands[0] and "--models mian" in commands[1]
    assert "2 of 2 runs pending" in planned.output

    # each planned line is a runnable command: run the first one as printed
    args = shlex.split(commands[0])[1:]
    done = CliRunner().invoke(main, [*args, "--threads", "1", "-q"])
    assert done.exit_code == 0, done.output
    assert "lr" in done.output and "1/1" in done.output and "test AUC" in done.output
    record = read_record(record_path(results, "synthetic", "lr", 0))
    assert record.status == "finished" and record.dataset == "synthetic"
    assert record.model_config["train"]["batch_size"] == 2048
    assert record.model_config["train"]["epochs"] == 1
    assert record.test["auc"] > 0.55 and 0 < record.test["oracle_auc"] <= 1

    replanned = invoke("plan", "-m", "lr,mian", "-d", "synthetic", "--seed-list", "0", *FAST[:-1])
    assert [line for line in replanned.output.splitlines()
            if line.startswith("ctrbench run")] == [commands[1]]

    both = invoke("run", "-m", "lr,mian", "-d", "synthetic", "--seed-list", "0", *FAST,
                  "--threads", "1")
    assert both.exit_code == 0, both.output
    assert "1 finished, 1 skipped" in both.output
    mian = read_record(record_path(results, "synthetic", "mian", 0))
    assert mian.extra["explain_parts"]["gim"][0] == "item"
    scores = read_scores(record_path(results, "synthetic", "mian", 0))
    assert scores["explain__gim"].shape == (256, 7) and scores["explain_rows"].shape == (256,)
    assert np.isin(["scores", "labels", "groups", "oracle"], list(scores)).all()
    # the thread count and the machine's load sit beside every epoch's timings
    assert mian.environment["threads"] == 1
    assert all(e.threads == 1 and e.load_avg_1m is not None and e.load_avg_1m >= 0
               for e in mian.epochs)


def test_nan_run_is_listed_as_failed_and_exit_is_1(cli):
    invoke, results = cli
    result = invoke("run", "-m", "lr", "-d", "synthetic", "--seeds", "1", *FAST,
                    "--threads", "1", "--set", "train.lr=1e30", "--set", "train.l2_target='all'",
                    "--set", "train.l2=1e30")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "Failed runs" in result.output and "diverged" in result.output
    assert read_record(record_path(results, "synthetic", "lr", 0)).status == "failed"


@pytest.mark.parametrize("args,message", [
    (["-m", "main", "-d", "synthetic"], "Did you mean: mian"),
    (["-m", "lr", "-d", "synthetc"], "Unknown dataset"),
    (["-m", "lr", "-d", "synthetic", "--set", "train.lrr=1"], "did you mean 'lr'"),
    (["-m", "lr", "-d", "synthetic", "--set", "params.bogus=1"], "bogus"),
    (["-m", "lr", "-d", "synthetic", "--device", "cuda:99"], "cuda:99"),
])
def test_user_errors_exit_1_with_one_message(cli, args, message):
    invoke, _ = cli
    result = invoke("run", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_usage_errors_exit_2(cli):
    invoke, _ = cli
    assert invoke("run", "-m", "lr", "-d", "synthetic", "--seed-list", "a,b").exit_code == 2
    for command in ("run", "plan"):  # a device name no command accepts: the option's value
        for option in ("--device=tpu", "--device=cuda:x", "--devices=cpu,tpu"):
            if command == "plan" and option.startswith("--devices"):
                continue
            result = invoke(command, "-m", "lr", "-d", "synthetic", option)
            named = "tpu" in result.output or "cuda:x" in result.output
            assert result.exit_code == 2 and named, result.output
    assert invoke("run", "-m", "lr", "-d", "synthetic", "--jobs", "0").exit_code == 2
    for bad in ("0", "two", "-1"):
        result = invoke("run", "-m", "lr", "-d", "synthetic", "--threads", bad)
        assert result.exit_code == 2 and "--threads" in result.output, result.output
    assert invoke("run", "-d", "synthetic").exit_code == 2
