"""Issue 12, D1, D2, D10, D17: records destroyed, written outside their directory, lost on a
refusing disk, or counted by a rule other than the one that skips them.

Real files, real processes and real mounts: D10 uses a read-only bind mount and a small tmpfs
filled with `dd` (both need root and mount(8); the tests are skipped, with the reason shown,
where mounting is impossible).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import train_fixtures as tf
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.errors import CtrbenchError
from ctrbench.record import read_record, record_path
from ctrbench.runs import runner, summary

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "records"
FAST = ["--epochs", "1", "--set", "train.batch_size=2048", "--set", "train.eval_batch_size=8192",
        "--device", "cpu", "-q"]
DIVERGE = ["--set", "train.lr=1e30", "--set", "train.l2_target='all'", "--set", "train.l2=1e30"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")  # synthetic is prepared once for the module


@pytest.fixture
def cli(home, tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(home))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        return CliRunner().invoke(main, list(args))

    return invoke


# --------------------------------------------------------------------------- mounts
def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True)


@pytest.fixture
def read_only(tmp_path):
    """``make(dir)`` turns ``dir`` read-only by a read-only bind mount of itself (root's chmod
    would not stop root); unmounted at the end."""
    mounted: list[Path] = []

    def make(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        first = _sh("mount", "--bind", str(directory), str(directory))
        if first.returncode != 0:
            pytest.skip(f"cannot bind-mount (needs root and mount(8)): {first.stderr.strip()}")
        mounted.append(directory)
        second = _sh("mount", "-o", "remount,bind,ro", str(directory))
        if second.returncode != 0:
            pytest.skip(f"cannot remount read-only: {second.stderr.strip()}")
        return directory

    yield make
    for directory in reversed(mounted):
        _sh("umount", str(directory))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs at ``tmp_path/disk`` (unmounted at the end)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    result = _sh("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root and mount(8)): {result.stderr.strip()}")
    yield disk
    _sh("umount", "-l", str(disk))


def _fill(disk: Path) -> None:
    """Fill ``disk`` to the last byte with dd (dd stops with "No space left on device")."""
    _sh("dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k")
    assert shutil.disk_usage(disk).free < 64 * 1024


# --------------------------------------------------------------------------- D1
def test_failed_rerun_of_another_config_never_destroys_a_finished_record(cli, tmp_path):
    results = tmp_path / "R"
    base = ["run", "-m", "lr", "-d", "synthetic", "--seed-list", "0", "--results", str(results)]
    first = cli(*base, *FAST)
    assert first.exit_code == 0, first.output
    path = record_path(results, "synthetic", "lr", 0)
    record_text, scores_bytes = path.read_text(), path.with_suffix(".npz").read_bytes()

    planned = cli("plan", *base[1:], *FAST[:-1], *DIVERGE)
    assert planned.exit_code == 0 and "would replace a record that is kept" in planned.output
    second = cli(*base, *FAST, *DIVERGE)
    assert second.exit_code == 1, second.output
    assert "refused" in second.output and "--force" in second.output
    assert "Traceback" not in second.output
    assert path.read_text() == record_text  # the finished record and its scores are intact
    assert path.with_suffix(".npz").read_bytes() == scores_bytes
    report = cli("report", "--results", str(results), "--no-plots", "--bootstrap", "0")
    assert report.exit_code == 0, report.output
    assert read_record(path).status == "finished"

    forced = cli(*base, *FAST, *DIVERGE, "--force")  # asked for: replaced, and kept aside
    assert forced.exit_code == 1 and "diverged" in forced.output
    assert read_record(path).status == "failed"
    old = json.loads(record_text)
    kept = path.parent / "replaced" / f"{old['run_id']}.seed-0.json"
    assert kept.read_text() == record_text
    assert kept.with_suffix(".npz").read_bytes() == scores_bytes
    report = cli("report", "--results", str(results), "--no-plots", "--bootstrap", "0")
    # nothing finished: one message listing the failed run (exit 1), replaced/ unread
    assert report.exit_code == 1 and "no finished run" in report.output, report.output
    assert "failed" in report.output and "replaced" not in report.output

    again = cli(*base, *FAST)  # the original configuration runs again over a failed record
    assert again.exit_code == 0, again.output
    assert read_record(path).status == "finished" and kept.is_file()


# --------------------------------------------------------------------------- D2
def test_names_from_records_never_leave_the_output_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_CARDS", str(FIXTURES / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "runs", results / "runs")
    target = tmp_path / "elsewhere"
    target.mkdir()
    hostile = "x/" + "../" * 12 + str(target).lstrip("/") + "/ESCAPED"
    for path in (results / "runs" / "electronics-dien").rglob("seed-*.json"):
        data = json.loads(path.read_text())
        data["dataset"] = hostile
        path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["report", "--results", str(results), "--out",
                                       str(tmp_path / "out"), "--bootstrap", "0"])
    assert list(target.iterdir()) == []  # nothing written outside the output directory
    assert not list(tmp_path.rglob("*ESCAPED*"))
    assert result.exit_code == 1 and "cannot be used in a file name" in result.output
    assert "Traceback" not in result.output


def test_tuned_card_name_from_a_store_never_leaves_models(tmp_path, monkeypatch):
    from test_tune import _tiny_columns

    from ctrbench.data.store import write_store
    from ctrbench.schema import reference_schema

    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    schema = reference_schema(n_items=60, n_cates=8, user_fields={"user_id": 40},
                              context_fields={"month": 14}, max_len=5, neg_history=False)
    rng = __import__("numpy").random.default_rng(0)
    splits = {s: _tiny_columns(n, rng) for s, n in (("train", 300), ("valid", 100),
                                                    ("test", 100))}
    store = write_store(tmp_path / "store", schema, splits,
                        {"dataset": "../../../ESCAPED", "data_hash": "x"}).path
    result = CliRunner().invoke(main, ["tune", "--model", "lr", "--dataset", str(store),
                                       "--trials", "1", "--epochs", "1", "-q"])
    assert result.exit_code == 1, result.output
    assert "cannot be used in a file name" in result.output
    assert not list(tmp_path.rglob("*ESCAPED*"))


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 300, "a\0b", 7])
def test_unsafe_names_are_refused(tmp_path, name):
    from ctrbench.paths import safe_name

    with pytest.raises(CtrbenchError, match="cannot be used in a file name"):
        safe_name("dataset", name)
    with pytest.raises(CtrbenchError):
        record_path(tmp_path, name, "lr", 0)
    assert safe_name("model", "din@synthetic") == "din@synthetic"


def test_inside_follows_symlinks(tmp_path):
    from ctrbench.paths import inside

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(CtrbenchError, match="outside"):
        inside(tmp_path / "out", "link", "x.png")
    assert inside(tmp_path / "out", "plots", "a.png") == tmp_path / "out" / "plots" / "a.png"


# --------------------------------------------------------------------------- D10
def test_read_only_results_give_one_message_and_touch_nothing(cli, tmp_path, read_only):
    results = tmp_path / "R"
    base = ["run", "-m", "lr", "-d", "synthetic", "--results", str(results), *FAST]
    assert cli(*base, "--seed-list", "0").exit_code == 0
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    read_only(results)
    for args in ([*base, "--seed-list", "1"],  # a new record directory cannot be made
                 [*base, "--seed-list", "0", "--force"],  # the existing one is read-only
                 ["report", "--results", str(results), "--no-plots", "--bootstrap", "0"]):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output, result.output
        assert "Read-only file system" in result.output, result.output
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before
    baseline = results / "baseline.csv"
    result = cli("check", "--baseline", str(baseline), "--results", str(results), "--update")
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert not baseline.exists()




@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted",
                                 rows=(640, 200, 200))


def test_disk_full_at_the_record_write_keeps_the_trained_result(tmp_path, small_disk, store,
                                                                 monkeypatch):
    slow = tf.TINY_CARD.replace("epochs = 3", "epochs = 25").replace("patience = 2",
                                                                      "patience = 25")
    tf.write_cards(tmp_path / "cards", {"tiny_slow": slow})
    fallback = tmp_path / "fallback"
    env = {**os.environ, "CTRBENCH_CARDS": str(tmp_path / "cards"),
           "CTRBENCH_HOME": str(tmp_path / "home"), "CTRBENCH_FALLBACK_DIR": str(fallback),
           "OMP_NUM_THREADS": "1"}
    results = small_disk / "results"
    script = tmp_path / "run.py"
    script.write_text(tf.runner_script(HERE, store.path, results, "tiny_slow"))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lock = results / "runs" / "planted" / "tiny_slow" / "seed-0.lock"
    deadline = time.time() + 120
    while not lock.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert lock.exists(), proc.communicate()
    _fill(small_disk)  # training is under way: the disk is full when the record is written
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # no traceback: the runner reports the outcome
    ((status, detail),) = json.loads(out.strip().splitlines()[-1])
    assert status == "unsaved" and "No space left on device" in detail, detail
    (saved,) = (fallback / "planted" / "tiny_slow").glob("*.seed-0.json")  # a name of its own
    assert str(saved) in detail
    record = read_record(saved)
    assert record.status == "finished" and record.test["auc"] > 0.5
    assert saved.with_suffix(".npz").is_file()
    left = sorted(p.name for p in (results / "runs" / "planted" / "tiny_slow").iterdir())
    assert left == []  # no partial record, no temporary file, no lock


# --------------------------------------------------------------------------- D17
@pytest.fixture
def planted(tmp_path, monkeypatch, store):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    tf.write_cards(tmp_path / "cards", {"tiny": tf.TINY_CARD})
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    return runner.DatasetHandle("planted", store, {"name": "planted"}), tmp_path / "results"


def test_summary_uses_the_rule_that_skips_runs(planted):
    handle, results = planted
    specs = runner.plan_runs(handle, runner.resolve_cards("tiny"), [0, 1], results)
    runner.execute(specs, handle, device="cpu", show_progress=False)
    edited = specs[1].record_file
    data = json.loads(edited.read_text())
    data["dataset_identity"]["version"] = 99  # another dataset version, run id left as it was
    data["test"]["auc"] = 0.99
    edited.write_text(json.dumps(data))
    rows, not_counted = summary.leaderboard(specs)
    assert rows[0][1] == "1/2", rows  # the edited record is not averaged in
    assert not_counted[0][:2] == ["tiny", 1] and "edited by hand" in not_counted[0][2]
    again = runner.execute(specs, handle, device="cpu", show_progress=False)
    assert [r.status for r in again] == ["skipped", "refused"]  # and never overwritten silently
    assert json.loads(edited.read_text())["test"]["auc"] == 0.99
    assert runner.pending(specs) == [specs[1]]



def test_report_on_a_full_disk_is_one_message_and_leaves_nothing(small_disk, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("CTRBENCH_CARDS", str(FIXTURES / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    results = small_disk / "results"
    shutil.copytree(FIXTURES / "runs", results / "runs")
    _fill(small_disk)
    for extra in (["--no-plots"], []):
        result = CliRunner().invoke(main, ["report", "--results", str(results), "--bootstrap",
                                           "0", *extra])
        assert result.exit_code == 1, result.output
        assert "No space left on device" in result.output and "Traceback" not in result.output
        assert not [p for p in (results / "report").rglob("*") if p.is_file()]
