"""Faults of commands running at the same time on one results folder (a shared node).

Each test failed before its fix. The critical sections are run directly, or one writer is
paused on a ``threading.Event`` while the other runs: no test depends on timing.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_tune import MODEL, TEST_CARD, store_dir  # noqa: F401 (store_dir: a fixture)

from ctrbench.report import build as report_build
from ctrbench.report import data as report_data
from ctrbench.report.data import load_results

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
WAIT = 60  # seconds: only a guard against a hang, never a judgement


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(FIXTURES / "cards"))
    monkeypatch.chdir(tmp_path)


def books(tmp_path: Path, name: str = "results", models: tuple[str, ...] = ("lr", "din")
          ) -> Path:
    """A results root holding the fixture's books runs of ``models``."""
    root = tmp_path / name
    for model in models:
        shutil.copytree(FIXTURES / "runs" / "books" / model, root / "runs" / "books" / model)
    return root


def force_rerun(record: Path, auc: float) -> None:
    """What `run --force` does to a record: the old pair moves to replaced/, then new scores,
    then the new record (another run id)."""
    replaced = record.parent / "replaced"
    replaced.mkdir(exist_ok=True)
    os.replace(record.with_suffix(".npz"), replaced / f"old.{record.stem}.npz")
    os.replace(record, replaced / f"old.{record.name}")
    rng = np.random.default_rng(1)
    np.savez(record.with_suffix(".npz"), scores=rng.random(400), labels=rng.integers(0, 2, 400),
             groups=np.arange(400))
    data = json.loads((replaced / f"old.{record.name}").read_text())
    data["run_id"], data["test"]["auc"] = "other-run", auc
    record.write_text(json.dumps(data))


# --------------------------------------------------------------------------- reading records
def test_a_record_moved_away_between_listing_and_reading_is_not_listed(tmp_path, monkeypatch):
    """`run --force` moves a record to replaced/ after `report` listed it: the report listed it
    as an unreadable run ("No such file or directory") instead of a record not yet written."""
    root = books(tmp_path)
    record = root / "runs" / "books" / "lr" / "seed-0.json"
    real = report_data.read_record

    def read_after_the_move(path):
        if Path(path) == record:
            force_rerun(record, 0.5)
            record.unlink()  # the new record is not written yet
        return real(path)

    monkeypatch.setattr(report_data, "read_record", read_after_the_move)
    rs = load_results(root)
    assert "unreadable" not in set(rs.runs["status"]), rs.runs[["path", "error"]]
    assert len(rs.runs) == 9


def test_scores_replaced_after_their_record_was_read_are_not_taken_for_its_own(tmp_path):
    """The report read a record, `run --force` replaced the pair, and the report then read the
    new run's scores as the old record's (bootstrap, DeLong, strata of another run)."""
    root = books(tmp_path)
    record = root / "runs" / "books" / "lr" / "seed-0.json"
    rs = load_results(root)
    force_rerun(record, 0.5)
    assert rs.scores(str(record)) is None
    assert rs.test_groups(str(record)) is None
    assert str(record) in rs.changed


def test_scores_of_an_unchanged_record_are_read(tmp_path):
    root = books(tmp_path)
    rs = load_results(root)
    record = root / "runs" / "books" / "lr" / "seed-0.json"
    assert rs.scores(str(record)) is not None and rs.test_groups(str(record)) is not None
    assert not rs.changed


# --------------------------------------------------------------------------- report --out
def _report(root: Path, out: Path):
    return report_build.build_report(root, out, n_boot=0, make_plots=False)


def test_two_reports_into_one_folder_never_leave_a_mix(tmp_path, monkeypatch):
    """Report A paused after its first table while report B wrote all of its own: the folder
    ended with A's leaderboard beside B's other tables (each file whole, the set mixed)."""
    root_a = books(tmp_path, "a", ("lr", "din"))
    root_b = books(tmp_path, "b", ("lr", "din", "mian"))
    expected = {}
    for name, root in (("a", root_a), ("b", root_b)):
        alone = tmp_path / f"alone-{name}"
        _report(root, alone)
        expected[name] = {p.name: p.read_text() for p in alone.glob("*.csv")}
    out = tmp_path / "out"
    a_paused, a_go, b_progress = threading.Event(), threading.Event(), threading.Event()
    real_write = report_build.atomic_write_text

    def write(path, text):
        real_write(path, text)
        if threading.current_thread().name == "A" and Path(path).name == "leaderboard.csv":
            a_paused.set()
            assert a_go.wait(WAIT)

    monkeypatch.setattr(report_build, "atomic_write_text", write)
    real_lock = getattr(report_build, "exclusive", None)

    def lock(path):
        if threading.current_thread().name == "B":
            b_progress.set()  # B is about to wait for A
        return real_lock(path)

    if real_lock is not None:
        monkeypatch.setattr(report_build, "exclusive", lock)
    errors = []

    def run(root):
        try:
            _report(root, out)
        except BaseException as exc:
            errors.append(exc)
        finally:
            b_progress.set()

    a = threading.Thread(target=run, args=(root_a,), name="A")
    a.start()
    assert a_paused.wait(WAIT)
    b = threading.Thread(target=run, args=(root_b,), name="B")
    b.start()
    assert b_progress.wait(WAIT)
    a_go.set()
    a.join(WAIT), b.join(WAIT)
    assert not errors, errors
    written = {p.name: p.read_text() for p in out.glob("*.csv")}
    assert written in (expected["a"], expected["b"]), sorted(
        name for name in written if written[name] != expected["b"].get(name))


def test_what_a_killed_report_left_is_removed_by_the_next(tmp_path):
    """A report killed mid-write left its temporary files and staged figures in --out
    forever (never under a final name, but never removed either)."""
    root, out = books(tmp_path), tmp_path / "out"
    left = [out / ".leaderboard.csv.tmp-0123abcd", out / ".plots.tmp-89abcdef" / "x.png",
            out / ".ctrbench-report" / ".files.json.tmp-deadbeef"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    mine = out / ".notes.tmp-mine.txt"  # not a name ctrbench writes: kept
    mine.write_text("keep")
    _report(root, out)
    assert not any(p.exists() for p in left), [p for p in left if p.exists()]
    assert not (out / ".plots.tmp-89abcdef").exists() and mine.exists()


KILLED_REPORT = """
import sys, time
from pathlib import Path
from ctrbench.report import build
real = build.atomic_write_text
def write(path, text):
    if Path(path).name == "timing.csv":
        tmp = Path(path).with_name(".timing.csv.tmp-0123abcd")
        tmp.write_text(text[: len(text) // 2])
        Path(sys.argv[3]).write_text("paused")
        while True:
            time.sleep(1)
    real(path, text)
build.atomic_write_text = write
build.build_report(Path(sys.argv[1]), Path(sys.argv[2]), n_boot=0, make_plots=False)
"""


def _wait_for(path: Path, process) -> None:
    """Until ``path`` exists (the child says it is paused) or the child ends."""
    import time

    deadline = time.monotonic() + WAIT
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), process.communicate()


def test_a_report_killed_mid_write_leaves_nothing_half_written(tmp_path):
    """SIGKILL of `report` while it writes a table: the old table or none under the final
    name, never half of one; the next report writes every table whole, and nothing else."""
    import signal
    import subprocess
    import sys

    root, out, paused = books(tmp_path), tmp_path / "out", tmp_path / "paused"
    _report(books(tmp_path, "old", ("lr",)), out)
    before = (out / "timing.csv").read_text()
    child = subprocess.Popen([sys.executable, "-c", KILLED_REPORT, str(root), str(out),
                              str(paused)], env={**os.environ, "PYTHONPATH": os.getcwd()
                                                 + os.pathsep + str(Path(__file__).parents[1])},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(paused, child)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert (out / "timing.csv").read_text() == before
    _report(root, out)
    alone = tmp_path / "alone"
    _report(root, alone)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in alone.iterdir())
    for table in (p for p in alone.iterdir() if p.is_file()):
        assert (out / table.name).read_text() == table.read_text(), table.name


# --------------------------------------------------------------------------- tune
@pytest.fixture(params=["journal", "sqlite"])
def storage(request, tmp_path) -> str:
    if request.param == "journal":
        return f"journal:{tmp_path / 'res' / 'tuning' / 'study.log'}"
    return f"sqlite:///{tmp_path / 'res' / 'tuning' / 'study.db'}"


def _opened(storage: str, name: str = "s"):
    """A study of the tuning test card in ``storage`` (a second call: a second worker)."""
    import optuna

    from ctrbench.tune.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handle = open_storage(storage, Path("res"), name, heartbeat=0)
    try:
        return optuna.create_study(study_name=name, storage=handle.storage,
                                   direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=handle.storage)


def _complete(study, value: float) -> None:
    """A finished trial, as another worker records one."""
    trial = study.ask()
    trial.suggest_float("train.lr", 1e-6, 0.3, log=True)
    study.tell(trial, value)


def test_two_workers_writing_the_trials_table_at_once_never_mix_it(tmp_path, storage,
                                                                    monkeypatch):
    """Worker A paused between trials.csv and trials.md while worker B (one more trial in the
    study) wrote both: the csv was B's, the md A's, one trial short."""
    from ctrbench.tune import outputs

    out = tmp_path / "res" / "tuning" / "s"
    study_a, study_b = _opened(storage), _opened(storage)
    _complete(study_a, 0.6)
    a_paused, a_go, b_progress = threading.Event(), threading.Event(), threading.Event()
    real_write, real_lock = outputs.atomic_write_text, getattr(outputs, "exclusive", None)

    def write(path, text):
        real_write(path, text)
        if threading.current_thread().name == "A" and Path(path).name == "trials.csv":
            a_paused.set()
            assert a_go.wait(WAIT)

    def lock(path):
        if threading.current_thread().name == "B":
            b_progress.set()
        return real_lock(path)

    monkeypatch.setattr(outputs, "atomic_write_text", write)
    if real_lock is not None:
        monkeypatch.setattr(outputs, "exclusive", lock)
    errors = []

    def worker(study):
        try:
            outputs.write_trials_table(study, out)
        except BaseException as exc:
            errors.append(exc)
        finally:
            b_progress.set()

    a = threading.Thread(target=worker, args=(study_a,), name="A")
    a.start()
    assert a_paused.wait(WAIT)
    _complete(study_b, 0.7)
    b = threading.Thread(target=worker, args=(study_b,), name="B")
    b.start()
    assert b_progress.wait(WAIT)
    a_go.set()
    a.join(WAIT), b.join(WAIT)
    assert not errors, errors
    csv_rows = (out / "trials.csv").read_text().strip().splitlines()[1:]
    md_rows = (out / "trials.md").read_text().strip().splitlines()[6:]
    assert len(csv_rows) == len(md_rows) == 2, (csv_rows, md_rows)


def _tune_one(store: Path, storage: str, execute, study: str = "s"):
    """``tune_one`` of the test card, its trials run by ``execute`` (a worker's summary)."""
    from ctrbench.cards import load_model_card
    from ctrbench.data.store import open_store
    from ctrbench.tune.group import tune_one
    from ctrbench.tune.study import TuneSettings

    (Path("models")).mkdir(exist_ok=True)
    Path("models", f"{MODEL}.toml").write_text(TEST_CARD)
    return tune_one(load_model_card(MODEL), open_store(store), TuneSettings(n_trials=2),
                    results_root=Path("res"), storage=storage, study_name=study,
                    heartbeat=0, execute=execute)


def _summary(study, best):
    from ctrbench.tune.study import TuneSummary

    return TuneSummary(study.study_name, "x", 1, 0, 0, 0, "done", best)


def test_a_worker_whose_best_is_stale_never_writes_an_older_card(tmp_path, storage,
                                                                  store_dir):  # noqa: F811
    """Two workers of one study finish at once: worker A read its summary (best: trial 0)
    before worker B's better trial 1 completed, and wrote its card after B's: the tuned card
    went back to trial 0 and the study's best was lost from it."""
    import tomllib

    def worker_a(opened):
        _complete(opened.study, 0.6)
        stale = _summary(opened.study, opened.study.best_trial)
        _complete(opened.study, 0.7)  # worker B's trial, finished meanwhile
        return stale

    outcome = _tune_one(store_dir, storage, worker_a)
    card = tomllib.loads(outcome.card_path.read_text())
    assert card["tuned_from"]["trial"] == 1 and card["tuned_from"]["value"] == 0.7, card
    assert card["tuned_from"]["trials_complete"] == 2


def test_two_studies_finishing_at_once_never_replace_a_card_silently(tmp_path, storage,
                                                                     store_dir, monkeypatch):  # noqa: F811
    """Studies X and Y (two --study names) finish at once: X found no card, Y then wrote its
    card, and X wrote over it without a word, though another study's card is replaced only
    with --replace-card. X is paused right after its last check while Y runs."""
    from ctrbench.tune import group

    x_checked, x_go, y_progress = threading.Event(), threading.Event(), threading.Event()
    real_holder, real_lock = group.card_holder, getattr(group, "exclusive", None)
    calls = {"X": 0, "Y": 0}

    def holder(*args):
        found = real_holder(*args)
        name = threading.current_thread().name
        calls[name] += 1
        if name == "X" and calls[name] == 2:  # the check before the card is written
            x_checked.set()
            assert x_go.wait(WAIT)
        return found

    def lock(path):
        if threading.current_thread().name == "Y":
            y_progress.set()
        return real_lock(path)

    monkeypatch.setattr(group, "card_holder", holder)
    if real_lock is not None:
        monkeypatch.setattr(group, "exclusive", lock)
    outcomes, errors = {}, []

    def study(name):
        def worker(opened):
            _complete(opened.study, 0.6 if name == "X" else 0.7)
            return _summary(opened.study, opened.study.best_trial)

        try:
            outcomes[name] = _tune_one(store_dir, storage, worker, study=name)
        except BaseException as exc:
            errors.append(exc)
        finally:
            y_progress.set()

    x = threading.Thread(target=study, args=("X",), name="X")
    x.start()
    assert x_checked.wait(WAIT)
    y = threading.Thread(target=study, args=("Y",), name="Y")
    y.start()
    assert y_progress.wait(WAIT)
    x_go.set()
    x.join(WAIT), y.join(WAIT)
    assert not errors, errors
    written = [n for n, o in outcomes.items() if o.card_path is not None]
    silently = [n for n in written if outcomes[n].replaced is None]
    assert len(silently) == 1, {n: (o.card_path, o.replaced, o.refused)
                                for n, o in outcomes.items()}


def test_what_a_killed_tune_left_beside_its_tables_is_removed_by_the_next(tmp_path, storage):
    """A `tune` killed while writing its trials table or plots left `.trials.csv.tmp-…` and
    `.history.tmp-….png` in the study folder forever (never under a final name)."""
    from ctrbench.tune.outputs import write_trials_table

    out = tmp_path / "res" / "tuning" / "s"
    out.mkdir(parents=True)
    left = [out / ".trials.csv.tmp-0123abcd", out / ".history.tmp-89abcdef.png"]
    other = out / ".budget.json.tmp-0123abcd"  # a group's budget table: not the study's
    for path in [*left, other]:
        path.write_text("half")
    study = _opened(storage)
    _complete(study, 0.6)
    write_trials_table(study, out)
    assert not any(p.exists() for p in left) and other.exists()
    assert len((out / "trials.csv").read_text().splitlines()) == 2


# --------------------------------------------------------------------------- check --update
def test_two_updates_of_one_baseline_for_two_datasets_keep_both(tmp_path, monkeypatch):
    """Before: `check --update --dataset books` and `--dataset electronics-dien` at once both
    read the old baseline, and the last to write dropped the other's new rows (a lost update).
    Here the books update pauses after it has read the old rows, the other runs meanwhile."""
    from ctrbench.report import check

    root = tmp_path / "results"
    for dataset in ("books", "electronics-dien"):
        shutil.copytree(FIXTURES / "runs" / dataset, root / "runs" / dataset)
    baseline = tmp_path / "ref.csv"
    baseline.write_text("dataset,model\nold,lr\n")  # a row of a third dataset, to be kept
    read_old, other_done = threading.Event(), threading.Event()
    real = check._with_other_datasets

    def pausing(path, text, datasets):
        kept = real(path, text, datasets)
        if datasets == {"books"}:
            read_old.set()
            other_done.wait(2)  # with the lock the other cannot finish meanwhile: no hang
        return kept

    monkeypatch.setattr(check, "_with_other_datasets", pausing)
    books_update = threading.Thread(target=check.update_reference, args=(baseline, root),
                                    kwargs={"datasets": ["books"]})
    books_update.start()
    assert read_old.wait(WAIT)
    other = threading.Thread(target=lambda: (check.update_reference(
        baseline, root, datasets=["electronics-dien"]), other_done.set()))
    other.start()
    books_update.join(WAIT)
    other.join(WAIT)
    written = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    assert set(written["dataset"]) == {"books", "electronics-dien", "old"}
