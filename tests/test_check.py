"""`ctrbench check`: the regression gate's verdicts and exit codes (0 ok, 1, 2 usage, 3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.report.check import read_reference

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(FIXTURES / "cards"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def setup(tmp_path):
    """A copy of the books fixture runs and a baseline written from them with --update."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "runs" / "books", results / "runs" / "books")
    baseline = tmp_path / "reference" / "books.csv"
    out = check(baseline, results, "--update")
    assert out.exit_code == 0, out.output
    return results, baseline


def check(baseline: Path, results: Path, *extra: str):
    return CliRunner().invoke(main, ["check", "--baseline", str(baseline), "--results",
                                     str(results), *extra])


def edit_records(results: Path, model: str, change, seeds=range(5)) -> None:
    for seed in seeds:
        path = results / "runs" / "books" / model / f"seed-{seed}.json"
        if path.exists():
            data = json.loads(path.read_text())
            change(data)
            path.write_text(json.dumps(data))


def verdicts(output: str) -> dict[str, str]:
    rows = [line.split() for line in output.splitlines() if line.startswith("books")]
    return {r[1]: r[2] for r in rows}


def test_identical_rerun_passes(setup):
    results, baseline = setup
    ref = read_reference(baseline)
    assert set(ref["model"]) == {"lr", "din", "dien", "mian", "mian_wo_iuim", "mian_wo_gim",
                                 "mian_postln"}
    out = check(baseline, results)
    assert out.exit_code == 0, out.output
    assert set(verdicts(out.output).values()) == {"unchanged"}


def test_injected_regression_fails(setup):
    results, baseline = setup

    def drop(data):
        data["test"]["auc"] -= 0.02

    edit_records(results, "mian", drop)
    out = check(baseline, results)
    assert out.exit_code == 1, out.output
    v = verdicts(out.output)
    assert v["mian"] == "WORSE" and v["din"] == "unchanged"
    assert "paired t" in out.output


def test_drop_within_tolerance_or_not_significant_is_unchanged(setup):
    results, baseline = setup

    def tiny(data):
        data["test"]["auc"] -= 0.0005  # below --tolerance 0.001

    edit_records(results, "mian", tiny)
    assert check(baseline, results).exit_code == 0

    def undo(data):
        data["test"]["auc"] += 0.0005

    edit_records(results, "mian", undo)
    flips = iter([-0.01, +0.01, -0.01, +0.01, -0.01])

    def noisy(data):  # large but inconsistent changes: the paired test does not reject
        data["test"]["auc"] += next(flips)

    edit_records(results, "din", noisy)
    out = check(baseline, results, "--tolerance", "0.0001", "--k", "0")
    assert out.exit_code == 0, out.output
    assert verdicts(out.output)["din"] == "unchanged"


def test_improvement_is_better_and_passes(setup):
    results, baseline = setup

    def gain(data):
        data["test"]["auc"] += 0.03

    edit_records(results, "lr", gain)
    out = check(baseline, results)
    assert out.exit_code == 0 and verdicts(out.output)["lr"] == "better"


def test_different_seeds_use_welch(setup):
    results, baseline = setup
    (results / "runs" / "books" / "mian" / "seed-4.json").unlink()
    out = check(baseline, results)
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if ln.startswith("books") and " mian " in ln)
    assert "Welch" in line


def test_different_dataset_identity_is_incomparable(setup):
    results, baseline = setup

    def rehash(data):
        data["dataset_identity"]["data_hash"] = "0" * 16

    edit_records(results, "din", rehash)
    out = check(baseline, results)
    assert out.exit_code == 3, out.output
    assert verdicts(out.output)["din"] == "incomparable"
    assert "dataset identity differs" in out.output

    def new_protocol(data):
        data["dataset_identity"]["version"] = 2

    edit_records(results, "lr", new_protocol)
    out = check(baseline, results)
    assert out.exit_code == 3 and "protocol/version differ: din v1 -> din v2" in out.output


def test_missing_model_is_incomparable_but_regression_wins(setup):
    results, baseline = setup
    shutil.rmtree(results / "runs" / "books" / "din")
    out = check(baseline, results)
    assert out.exit_code == 3, out.output
    assert "missing runs" in out.output

    def drop(data):
        data["test"]["auc"] -= 0.05

    edit_records(results, "mian", drop)
    assert check(baseline, results).exit_code == 1


def test_update_rewrites_the_reference(setup):
    results, baseline = setup

    def drop(data):
        data["test"]["auc"] -= 0.02

    edit_records(results, "mian", drop)
    before = read_reference(baseline).set_index("model").loc["mian", "auc_mean"]
    assert check(baseline, results).exit_code == 1
    out = check(baseline, results, "--update")
    assert out.exit_code == 0 and "wrote" in out.output
    after = read_reference(baseline).set_index("model").loc["mian", "auc_mean"]
    assert after == pytest.approx(before - 0.02, abs=1e-5)
    assert check(baseline, results).exit_code == 0
    assert not list(baseline.parent.glob(".*tmp*"))  # written atomically, no leftovers


def test_update_skips_refused_rows_and_new_models_are_listed(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "runs", results / "runs")
    baseline = tmp_path / "ref.csv"
    assert check(baseline, results, "--update").exit_code == 0
    ref = read_reference(baseline)
    assert ("electronics-dien", "lr") not in set(zip(ref["dataset"], ref["model"]))
    trimmed = ref[ref["model"] != "my_model"].drop(columns=["seed_map"])
    trimmed.to_csv(baseline, index=False)
    out = check(baseline, results)
    assert out.exit_code == 0, out.output
    assert "new" in out.output and "not in the baseline" in out.output


def test_bad_baselines_are_usage_errors(tmp_path):
    results = FIXTURES
    out = check(tmp_path / "missing.csv", results)
    assert out.exit_code == 2 and "does not exist" in out.output
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"dataset": ["books"], "model": ["mian"]}).to_csv(bad, index=False)
    out = check(bad, results)
    assert out.exit_code == 2 and "lacks column" in out.output
    assert "Traceback" not in out.output


def test_no_results_at_all_is_incomparable(setup, tmp_path):
    _, baseline = setup
    out = check(baseline, tmp_path / "empty")
    assert out.exit_code == 3 and "missing runs" in out.output
