"""`ctrbench check`: the regression gate's verdicts and exit codes (0 ok, 1, 2 usage, 3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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
    assert "paired t, one-sided" in out.output


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
    out = check(baseline, results, "--tolerance", "0.0001")
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
    """As many seeds as the baseline but not the same ones: Welch. (Fewer seeds than the
    baseline are incomparable: tests/test_faults_report.py.)"""
    results, baseline = setup
    old = results / "runs" / "books" / "mian" / "seed-4.json"
    data = json.loads(old.read_text())
    data["seed"] = 7
    (old.parent / "seed-7.json").write_text(json.dumps(data))
    old.unlink()
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
    assert "dataset identity differs: data_hash" in out.output

    def new_protocol(data):
        data["dataset_identity"]["version"] = 2

    edit_records(results, "lr", new_protocol)
    out = check(baseline, results)
    assert out.exit_code == 3
    line = next(ln for ln in out.output.splitlines() if ln.startswith("books") and " lr " in ln)
    assert "version 1 (seed reference) vs 2 (seed 0, 1, 2, 3, 4)" in line


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
    raw = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    raw[raw["model"] != "my_model"].to_csv(baseline, index=False)
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


# --------------------------------------------------------------------------- issue 11 and 12
def test_other_epochs_are_incomparable_and_the_key_is_named(setup):
    """Issue 11 §6: 1-epoch runs against a reference of another epoch cap: exit 3, not 1."""
    results, baseline = setup

    def one_epoch(data):
        data["model_config"]["train"]["epochs"] = 1
        data["test"]["auc"] -= 0.05  # what a shorter training would do

    edit_records(results, "mian", one_epoch)
    out = check(baseline, results)
    assert out.exit_code == 3, out.output
    line = next(ln for ln in out.output.splitlines() if ln.startswith("books") and " mian " in ln)
    assert "incomparable" in line and "model config differs: train.epochs" in line
    assert "5 (seed reference) vs 1 (seed 0, 1, 2, 3, 4)" in line
    assert "WORSE" not in out.output


def test_only_matching_configs_are_compared(setup):
    """Extra runs with another config beside matching ones are ignored, and said so."""
    results, baseline = setup
    src = results / "runs" / "books" / "lr" / "seed-0.json"
    data = json.loads(src.read_text())
    data["seed"], data["model_config"]["train"]["lr"] = 7, 0.5
    (src.parent / "seed-7.json").write_text(json.dumps(data))
    out = check(baseline, results)
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if ln.startswith("books") and " lr " in ln)
    assert "unchanged" in line and "1 run(s) with another config or identity ignored" in line


def test_power_line_per_model_and_one_sided_p(setup):
    results, baseline = setup
    from scipy import stats as sps

    from ctrbench.analysis.power import detectable_drop
    from ctrbench.report.check import check_results

    ref = read_reference(baseline)
    out = check(baseline, results)
    power = [ln for ln in out.output.splitlines() if ln.startswith("power: ")]
    assert len(power) == len(ref)
    mian = ref.set_index("model").loc["mian"]
    seeds = mian["seed_map"]
    std = float(np.std(list(seeds.values()), ddof=1))
    drop = detectable_drop(std, len(seeds), len(seeds), paired=True, tolerance=0.001)
    assert any(ln.startswith(f"power: books/mian: detects a drop of {drop:.4f} AUC with 80%")
               for ln in power)

    def drop_some(data):
        data["test"]["auc"] -= 0.001 + 0.0004 * data["seed"]

    edit_records(results, "mian", drop_some)
    rows = {r.model: r for r in check_results(ref, results).rows}
    cur = [seeds[s] - 0.001 - 0.0004 * s for s in sorted(seeds)]
    want = sps.ttest_rel(cur, [seeds[s] for s in sorted(seeds)], alternative="less").pvalue
    assert rows["mian"].p_worse == pytest.approx(want, rel=1e-4)
    assert rows["mian"].p_better == pytest.approx(1 - want, rel=1e-4)


def test_update_prints_the_power_of_the_new_reference(setup):
    results, baseline = setup
    out = check(baseline, results, "--update")
    assert out.exit_code == 0
    assert sum(ln.startswith("power: books/") for ln in out.output.splitlines()) == 7


@pytest.mark.parametrize("content", [
    "[1, 2, 3]",  # a record that is a JSON list
    "AUC_HIGH",  # a record whose test AUC is a string (filled in below)
])
def test_malformed_records_are_listed_and_never_exit_1(setup, content):
    """Issue 12 D6: a crash inside check exited 1 (= regression); unreadable records listed."""
    results, baseline = setup
    path = results / "runs" / "books" / "din" / "seed-2.json"
    if content == "AUC_HIGH":
        data = json.loads(path.read_text())
        data["test"]["auc"] = "high"
        content = json.dumps(data)
    path.write_text(content)
    out = check(baseline, results)
    assert out.exit_code != 1 and "Traceback" not in out.output, out.output
    assert f"unreadable record (not judged): {path}" in out.output
    line = next(ln for ln in out.output.splitlines() if ln.startswith("books") and " din " in ln)
    assert "Welch" in line  # judged on the 4 readable seeds


def _read_only(folder: Path):
    """Make ``folder`` read-only for real (chmod; for root, the immutable attribute); returns
    the undo function, or None when this machine cannot make it read-only."""
    import os
    import subprocess

    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return lambda: folder.chmod(0o755)
    ok = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    if not ok:
        folder.chmod(0o755)
        return None
    return lambda: (subprocess.run(["chattr", "-i", str(folder)], check=True),
                    folder.chmod(0o755))


def test_update_into_a_read_only_folder_exits_2_with_a_message(setup):
    """Issue 12 D6: a read-only folder gave a traceback and exit 1."""
    results, baseline = setup
    undo = _read_only(baseline.parent)
    if undo is None:
        pytest.skip("cannot make a folder read-only on this machine")
    try:
        out = check(baseline, results, "--update")
    finally:
        undo()
    assert out.exit_code == 2, out.output
    assert f"cannot write baseline {baseline}" in out.output
    assert "Traceback" not in out.output


def test_a_crash_exits_2_with_its_traceback(setup, monkeypatch):
    """Any bug inside the gate exits 2 (never 1, the regression code) and keeps its traceback."""
    results, baseline = setup
    import ctrbench.report.check as gate

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug inside the gate")

    monkeypatch.setattr(gate, "judge", broken)
    out = check(baseline, results)
    assert out.exit_code == 2, out.output
    assert "RuntimeError: a bug inside the gate" in out.output and "crashed" in out.output
