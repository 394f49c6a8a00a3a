"""Faults of `ctrbench report` and `ctrbench check` found by the tester (issue 12 follow-up).

Each test failed before its fix; all use the committed fixture records (tests/fixtures/records)
or small hand edits of them, no training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ctrbench.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
LR0 = FIXTURES / "runs" / "books" / "lr" / "seed-0.json"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(FIXTURES / "cards"))
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def no_traceback(result) -> bool:
    return (result.exception is None or isinstance(result.exception, SystemExit)) and \
        "Traceback" not in result.output


def write_record(results: Path, model: str = "lr", seed: int = 0, **edit) -> Path:
    """A copy of the fixture's books/lr seed-0 record with ``edit`` applied."""
    data = json.loads(LR0.read_text())
    data.update(model=model, seed=seed, **edit)
    path = results / "runs" / "books" / model / f"seed-{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- fault 3
@pytest.mark.parametrize("case", ["failed", "running", "truncated", "unknown_key",
                                  "schema_version", "huge_seed"])
def test_report_without_a_finished_run_is_one_message_and_writes_nothing(tmp_path, case):
    """Fault 3: a KeyError traceback in the plots, after the tables were already written."""
    results, out = tmp_path / "results", tmp_path / "out"
    edits = {"failed": {"status": "failed", "error": "TrainingDiverged: loss is nan"},
             "running": {"status": "running", "error": None},
             "unknown_key": {"colour": "red"}, "schema_version": {"schema_version": 99},
             "huge_seed": {"seed": 10**30}}.get(case, {})
    path = write_record(results, **edits)
    if case == "truncated":
        path.write_text(path.read_text()[:100])
    result = invoke("report", "--results", results, "--out", out, "--bootstrap", "0")
    assert result.exit_code == 1, result.output
    assert no_traceback(result), result.output
    assert "no finished run" in result.output and "books" in result.output
    assert "seed-0.json" in result.output or "lr" in result.output  # the other-runs table
    assert not out.exists() or not any(out.rglob("*.md")), sorted(out.rglob("*"))


def test_a_report_failing_in_its_figures_adds_no_file(tmp_path, monkeypatch):
    """Fault 3: the tables were written before the figures, so a crash in a figure left a
    report folder that looked finished."""
    from ctrbench.report import plots
    from ctrbench.report.build import build_report

    def broken(*_args, **_kwargs):
        raise RuntimeError("a figure that cannot be drawn")

    monkeypatch.setattr(plots, "gim_heatmap", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="cannot be drawn"):
        build_report(FIXTURES, out, datasets=["books"], n_boot=0)
    assert not out.exists() or list(out.iterdir()) == []


def test_huge_seed_is_listed_unreadable_beside_finished_runs(tmp_path):
    """Fault 3: a record whose seed does not fit a 64-bit integer crashed report and check."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "runs" / "books", results / "runs" / "books")
    data = json.loads(LR0.read_text())
    data["seed"] = 10**30
    (results / "runs" / "books" / "lr" / "seed-7.json").write_text(json.dumps(data))
    result = invoke("report", "--results", results, "--out", tmp_path / "o", "--bootstrap",
                    "0", "--no-plots")
    assert result.exit_code == 0 and no_traceback(result), result.output
    failed = pd.read_csv(tmp_path / "o" / "failed.csv")
    row = failed[failed["path"].str.endswith("lr/seed-7.json")].iloc[0]
    assert row["status"] == "unreadable" and "seed" in row["error"]


# --------------------------------------------------------------------------- fault 7
@pytest.mark.parametrize("status", ["running", "weird"])
def test_running_or_unknown_status_is_listed_not_finished(tmp_path, status):
    """Fault 7: IndexError in failed_table for a record without an error message."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "runs" / "books", results / "runs" / "books")
    write_record(results, seed=5, status=status, error=None)
    result = invoke("report", "--results", results, "--out", tmp_path / "o", "--bootstrap",
                    "0", "--no-plots")
    assert result.exit_code == 0 and no_traceback(result), result.output
    failed = pd.read_csv(tmp_path / "o" / "failed.csv", keep_default_na=False)
    lr = failed[(failed["model"] == "lr")]
    assert lr["seed"].tolist() == [5]
    # listed as it is (record.py may come to refuse unknown statuses: then unreadable)
    assert lr["status"].iloc[0] in {status, "unreadable" if status == "weird" else status}
    assert lr["error"].iloc[0]  # says why it is not finished
    board = pd.read_csv(tmp_path / "o" / "leaderboard.csv").set_index("model")
    assert board.loc["lr", "n_seeds"] == 5 and board.loc["lr", "n_failed"] == 1


# --------------------------------------------------------------------------- fault 5
def _with_pop(tmp_path: Path) -> Path:
    """electronics-dien din and my_model, plus a `pop` (arch pop) with the best valid AUC."""
    results = tmp_path / "results"
    base = FIXTURES / "runs" / "electronics-dien"
    for model in ("din", "my_model"):
        shutil.copytree(base / model, results / "runs" / "electronics-dien" / model)
    shutil.copytree(base / "din", results / "runs" / "electronics-dien" / "pop")
    for p in (results / "runs" / "electronics-dien" / "pop").glob("*.json"):
        data = json.loads(p.read_text())
        data["model"], data["model_config"]["arch"] = "pop", "pop"
        data["valid"]["auc"], data["n_parameters"] = 0.99, 0
        p.write_text(json.dumps(data))
    return results


def test_pop_is_never_the_reference(tmp_path):
    """Fault 5: pop (best validation AUC here) became the leaderboard's reference."""
    results = _with_pop(tmp_path)
    result = invoke("report", "--results", results, "--out", tmp_path / "o", "--bootstrap",
                    "0", "--no-plots")
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "o" / "leaderboard.csv").set_index("model")
    assert set(board["reference"]) != {"pop"}
    assert "Reference: pop" not in result.output
    assert board.loc["pop", "beats_pop"] == "pop"


def test_reference_pop_is_refused(tmp_path):
    """Fault 5: `--reference pop` was accepted."""
    results = _with_pop(tmp_path)
    result = invoke("report", "--results", results, "--out", tmp_path / "o", "--bootstrap",
                    "0", "--no-plots", "--reference", "pop")
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "pop" in result.output and "never the reference" in result.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- fault 12
def test_unknown_paper_dataset_in_paper_map_is_refused(tmp_path):
    """Fault 12: `--paper-map books=nosuch` was accepted without a word."""
    result = invoke("report", "--results", FIXTURES, "--out", tmp_path / "o", "--no-plots",
                    "--bootstrap", "0", "--paper-map", "books=nosuch")
    assert result.exit_code == 2 and no_traceback(result), result.output
    assert "nosuch" in result.output and "electronics" in result.output


# --------------------------------------------------------------------------- the gate
@pytest.fixture()
def gate(tmp_path):
    """A copy of the books fixture runs and a baseline written from them with --update."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "runs" / "books", results / "runs" / "books")
    baseline = tmp_path / "reference" / "books.csv"
    out = invoke("check", "--baseline", baseline, "--results", results, "--update")
    assert out.exit_code == 0, out.output
    return results, baseline


def check(results: Path, baseline: Path):
    return invoke("check", "--baseline", baseline, "--results", results)


def verdict(output: str, model: str) -> str:
    line = next(ln for ln in output.splitlines() if ln.startswith("books") and
                ln.split()[1] == model)
    return line.split()[2]


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_baseline_auc_is_a_malformed_baseline(gate, value):
    """Fault 4a: NaN AUCs in the baseline gave "no test possible", "ok", exit 0."""
    results, baseline = gate
    frame = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    row = frame.index[frame["model"] == "lr"][0]
    frame.loc[row, "auc_mean"] = value
    frame.loc[row, "seed_aucs"] = ";".join(f"{s}:{value}" for s in range(5))
    frame.to_csv(baseline, index=False)
    out = check(results, baseline)
    assert out.exit_code == 2 and no_traceback(out), out.output
    assert "lr" in out.output and value in out.output


def test_duplicate_baseline_rows_are_a_malformed_baseline(gate):
    """Fault 12: a baseline with a duplicated row judged the model twice, exit 0."""
    results, baseline = gate
    frame = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    pd.concat([frame, frame[frame["model"] == "din"]]).to_csv(baseline, index=False)
    out = check(results, baseline)
    assert out.exit_code == 2 and no_traceback(out), out.output
    assert "books/din" in out.output and "more than once" in out.output


@pytest.mark.parametrize("how", ["missing", "failed"])
def test_fewer_finished_seeds_than_the_baseline_is_incomparable(gate, how):
    """Fault 4b: a missing or failed seed passed as "unchanged", exit 0."""
    results, baseline = gate
    path = results / "runs" / "books" / "lr" / "seed-1.json"
    if how == "missing":
        path.unlink()
    else:
        data = json.loads(path.read_text())
        data["status"], data["error"] = "failed", "TrainingDiverged: loss is nan"
        path.write_text(json.dumps(data))
    out = check(results, baseline)
    assert out.exit_code == 3, out.output
    assert verdict(out.output, "lr") == "incomparable"
    assert "seed 1" in out.output


def test_finished_record_with_nan_test_auc_does_not_pass(gate):
    """Fault 4c: a finished record whose test AUC is NaN passed as "unchanged"."""
    results, baseline = gate
    path = results / "runs" / "books" / "lr" / "seed-2.json"
    data = json.loads(path.read_text())
    data["test"]["auc"] = float("nan")
    path.write_text(json.dumps(data))
    out = check(results, baseline)
    assert out.exit_code not in (0, 2), out.output
    assert verdict(out.output, "lr") == "incomparable"
    assert "not a finite number" in out.output and "seed 2" in out.output
