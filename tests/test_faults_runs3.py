"""A third fault hunt on local `ctrbench run` (resumable runs, `--jobs N` workers, records,
locks, `--force`, the closing summary); each test failed before its fix.

The crashing runs use a plugin architecture (a module outside ctrbench, imported by the
workers as any plugin is) whose training step kills its own process: SIGKILL as the kernel's
OOM killer or a kill -9 would, ``os.abort()`` as a crash in native code would.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import train_fixtures as tf
from click.testing import CliRunner

from ctrbench.record import read_record
from ctrbench.runs import runner, summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGIN = '''
import os
import signal
from dataclasses import dataclass

from ctrbench.models.config import Integer, param
from ctrbench.models.registry import ARCHITECTURES, register
from train_fixtures import TinyConfig, TinyLogistic


@dataclass(frozen=True)
class CrashConfig(TinyConfig):
    crash: int = param(0, Integer(0))  # 9: SIGKILL at the first step, 6: os.abort()


class Crashing(TinyLogistic):
    config_class = CrashConfig

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.crash = config.crash

    def forward_train(self, batch):
        if self.crash == 9:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.crash == 6:
            os.abort()
        return super().forward_train(batch)


if "crashing_plugin" not in ARCHITECTURES:
    register("crashing_plugin")(Crashing)
'''


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted",
                                 rows=(640, 200, 200))


@pytest.fixture
def planted(tmp_path, monkeypatch, store):
    """A planted dataset, cards ``tiny`` (1 epoch), ``crash9`` and ``crash6``; the plugin module
    importable here and in spawned workers (spawn passes ``sys.path`` on)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "crashing_arch.py").write_text(textwrap.dedent(PLUGIN))
    tests_dir = str(Path(__file__).resolve().parent)
    monkeypatch.syspath_prepend(tests_dir)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", ":".join([str(plugins), tests_dir,
                                               *[p for p in sys.path if p]]))
    __import__("crashing_arch")
    tiny = tf.TINY_CARD.replace("epochs = 3", "epochs = 1")
    crash = tiny.replace('"tiny_logistic"', '"crashing_plugin"').replace("[train]",
                                                                        "crash = {}\n[train]")
    tf.write_cards(tmp_path / "cards", {"tiny": tiny, "crash9": crash.format(9),
                                        "crash6": crash.format(6)})
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    return runner.DatasetHandle("planted", store, {"name": "planted"})


def _specs(handle, results: Path, models: str, seeds=(0,)):
    return runner.plan_runs(handle, runner.resolve_cards(models), list(seeds), results)


# --------------------------------------------------------------------------- dead workers
@pytest.mark.parametrize("model, signame, seeds", [("crash9", "SIGKILL", (0, 1)),
                                                   ("crash6", "SIGABRT", (0,))])
def test_a_dead_worker_fails_its_own_run_and_the_others_go_on(planted, tmp_path, model,
                                                              signame, seeds):
    """Before: one worker killed (kill -9, OOM) or crashed (abort) broke the whole process
    pool: every run of the command "interrupted", none recorded, the others' work thrown away
    and exit status 0."""
    results = tmp_path / "results"
    specs = _specs(planted, results, model) + _specs(planted, results, "tiny", seeds)
    out = runner.execute(specs, planted, device="cpu", jobs=2, show_progress=False)
    crashed, *others = out
    assert crashed.status == "failed", crashed
    assert signame in crashed.detail, crashed.detail
    record = read_record(crashed.spec.record_file)  # recorded: report lists it as failed
    assert record.status == "failed" and signame in record.error
    assert [r.status for r in others] == ["finished"] * len(seeds), others
    assert not list(results.rglob("*.lock")), "a dead worker's lock file was left"
    assert not list(results.rglob(".*tmp-*"))
    assert runner.pending(specs) == [crashed.spec]  # redone next time


def test_the_cli_exits_1_when_a_worker_died(planted, tmp_path, monkeypatch):
    from ctrbench.cli import main

    monkeypatch.setattr(runner, "default_dataset_loader", lambda name: planted)
    result = CliRunner().invoke(main, ["run", "-m", "crash9,tiny", "-d", "planted",
                                       "--seed-list", "0", "--jobs", "2", "--device", "cpu",
                                       "-q", "--results", str(tmp_path / "results")])
    assert result.exit_code == 1, result.output
    assert "1 failed, 1 finished" in result.stdout
    assert "SIGKILL" in result.stdout  # the failed runs' table names the cause


def test_a_forced_rerun_whose_worker_died_keeps_the_earlier_record(planted, tmp_path):
    """With --force over the run's own finished record, a worker that dies must not leave the
    earlier record reported as the rerun's result, nor replace it by a failed one."""
    results = tmp_path / "results"
    (spec,) = _specs(planted, results, "crash9")
    # plant a finished record of this very configuration (as an earlier, healthy run left)
    (tiny,) = _specs(planted, tmp_path / "other", "tiny")
    assert runner.execute([tiny], planted, device="cpu", show_progress=False)[0].status \
        == "finished"
    data = json.loads(tiny.record_file.read_text())
    data.update(run_id=spec.run_id, model=spec.model, model_config=spec.card.resolved(),
                finished_at="2000-01-01T00:00:00+00:00")
    spec.record_file.parent.mkdir(parents=True)
    spec.record_file.write_text(json.dumps(data))
    before = spec.record_file.read_bytes()
    assert runner.finished_record(spec) is not None
    (other,) = _specs(planted, results, "tiny")
    out = runner.execute([spec, other], planted, device="cpu", jobs=2, force=True,
                         show_progress=False)
    assert [r.status for r in out] == ["failed", "finished"], out
    assert "SIGKILL" in out[0].detail and "kept" in out[0].detail
    assert spec.record_file.read_bytes() == before


# --------------------------------------------------------------------------- closing summary
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_closing_summary_leaves_a_non_finite_auc_out_as_report_does(planted, tmp_path,
                                                                         value):
    """Before: one finished record whose test AUC is NaN (a one-class test split, a hand edit)
    made the closing summary say "3/3 nan ± nan", hiding the other seeds, while `report` left
    that seed out of every mean and listed it as failed."""
    specs = _specs(planted, tmp_path / "results", "tiny", seeds=(0, 1))
    assert [r.status for r in runner.execute(specs, planted, device="cpu",
                                             show_progress=False)] == ["finished"] * 2
    good = read_record(specs[0].record_file).test
    data = json.loads(specs[1].record_file.read_text())
    data["test"]["auc"] = value
    specs[1].record_file.write_text(json.dumps(data))
    assert runner.finished_record(specs[1]) is not None  # still this run's finished record

    (row,), failed = summary.leaderboard(specs)
    assert row[:4] == ["tiny", "1/2", f"{good['auc']:.4f} ± –",
                       f"{good['logloss']:.4f} ± –"], row
    (listed,) = failed
    assert listed[:2] == ["tiny", 1] and "not finite" in listed[2], listed


# --------------------------------------------------------------------------- hand-edited types
@pytest.mark.parametrize("key, value", [("seed", None), ("seed", "abc"), ("seed", True),
                                        ("model_config", [1]), ("dataset_identity", "x"),
                                        ("test", 5), ("run_id", 5), ("epochs", [5]),
                                        ("status", ["finished"])])
def test_a_record_with_a_value_of_the_wrong_type_is_unreadable_not_a_traceback(
        planted, tmp_path, key, value):
    """Before: `run` (its skip check and its closing summary) died with a TypeError /
    ValueError / AttributeError traceback on such a hand edit; now the record is a file this
    ctrbench cannot read: named, refused, kept byte for byte and never averaged."""
    (spec,) = _specs(planted, tmp_path / "results", "tiny")
    assert runner.execute([spec], planted, device="cpu", show_progress=False)[0].status \
        == "finished"
    data = json.loads(spec.record_file.read_text())
    data[key] = value
    spec.record_file.write_text(json.dumps(data))
    before = spec.record_file.read_bytes()

    (result,) = runner.execute([spec], planted, device="cpu", show_progress=False)
    assert result.status == "refused" and key in result.detail, result.detail
    assert spec.record_file.read_bytes() == before
    (row,), (listed,) = summary.leaderboard([spec])
    assert row[1] == "0/1" and "not counted" in listed[2] and key in listed[2], listed
