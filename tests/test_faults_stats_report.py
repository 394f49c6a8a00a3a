"""Faults of the reporting and statistics layer (`report`, `check`) found from the CLI.

Each test failed before its fix; all use the committed fixture records (tests/fixtures/records)
or small hand edits of them, no training.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_faults_report import _env, invoke  # noqa: F401 (_env: an autouse fixture)
from test_faults_report import no_traceback as clean

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
BOOKS = FIXTURES / "runs" / "books"


def books(tmp_path: Path, *datasets: str) -> Path:
    """A results root holding copies of the fixture's runs of ``datasets`` (default books)."""
    results = tmp_path / "results"
    for ds in datasets or ("books",):
        shutil.copytree(FIXTURES / "runs" / ds, results / "runs" / ds)
    return results


def edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        target, _, leaf = key.rpartition("__")
        (data[target] if target else data)[leaf] = value
    path.write_text(json.dumps(data))


def report(results: Path, out: Path, *extra: object):
    return invoke("report", "--results", results, "--out", out, "--bootstrap", "0",
                  "--no-plots", *extra)


def seed_aucs(model_dir: Path) -> dict[int, float]:
    out = {}
    for p in sorted(model_dir.glob("seed-*.json")):
        data = json.loads(p.read_text())
        if data["status"] == "finished":
            out[data["seed"]] = data["test"]["auc"]
    return out


# --------------------------------------------------------------------------- non-finite AUC
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_finished_record_with_a_non_finite_test_auc_is_flagged_and_left_out(tmp_path, value):
    """Before: lr showed "5" seeds and the mean of 4, ΔAUC nan ("–", no test) or inf in the
    CSV, nothing said; `check` refused the same record."""
    results, out = books(tmp_path), tmp_path / "out"
    good = seed_aucs(results / "runs" / "books" / "lr")
    edit(results / "runs" / "books" / "lr" / "seed-2.json", test__auc=value)
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("model")
    lr = board.loc["lr"]
    expected = [v for s, v in good.items() if s != 2]
    assert int(lr["n_seeds"]) == 4 and int(lr["n_failed"]) == 1
    assert float(lr["auc_mean"]) == pytest.approx(sum(expected) / 4, abs=1e-6)
    assert math.isfinite(float(lr["delta_auc"])) and math.isfinite(float(lr["ttest_p_holm"]))
    assert lr["significant"] == "yes"
    assert "seed 2" in lr["note"] and "not finite" in lr["note"]
    assert "2:" not in lr["seed_aucs"]
    failed = pd.read_csv(out / "failed.csv", keep_default_na=False)
    row = failed[(failed["model"] == "lr") & (failed["seed"] == 2)]
    assert len(row) == 1 and "not finite" in row["error"].iloc[0]


def test_check_update_never_writes_a_baseline_check_refuses(tmp_path):
    """Before: `check --update` wrote "2:nan" into seed_aucs, and every later `check` stopped
    on a malformed baseline (exit 2) instead of judging."""
    results = books(tmp_path)
    edit(results / "runs" / "books" / "lr" / "seed-2.json", test__auc=math.nan)
    baseline = tmp_path / "ref.csv"
    assert invoke("check", "--baseline", baseline, "--results", results,
                  "--update").exit_code == 0
    frame = pd.read_csv(baseline, keep_default_na=False).set_index("model")
    assert "nan" not in frame.loc["lr", "seed_aucs"] and int(frame.loc["lr", "n_seeds"]) == 4
    res = invoke("check", "--baseline", baseline, "--results", results)
    assert res.exit_code == 3 and clean(res), res.output
    assert "not a finite number" in res.output and "seed 2" in res.output


def test_non_finite_auc_does_not_make_a_model_lose_to_pop(tmp_path):
    """Before: one NaN seed made mian's mean against pop nan, so "does not beat pop"."""
    results = books(tmp_path)
    pop = results / "runs" / "books" / "pop"
    shutil.copytree(results / "runs" / "books" / "lr", pop)
    for p in pop.glob("*.json"):
        data = json.loads(p.read_text())
        data["model"], data["model_config"]["arch"], data["n_parameters"] = "pop", "pop", 0
        p.write_text(json.dumps(data))
    edit(results / "runs" / "books" / "mian" / "seed-1.json", test__auc=math.nan)
    res = report(results, tmp_path / "out")
    assert res.exit_code == 0 and clean(res), res.output
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv").set_index("model")
    assert board.loc["mian", "beats_pop"] == "yes"
    assert math.isfinite(board.loc["mian", "pop_delta_auc"])


# --------------------------------------------------------------------------- duplicated seeds
def test_a_record_copied_under_another_seeds_name_is_not_counted_twice(tmp_path):
    """Before: seed-5.json holding seed 0 made lr "6 seeds", seed 0 averaged twice (the mean
    and std wrong, `check --update` wrote n_seeds 6 beside 5 seed AUCs)."""
    results, out = books(tmp_path), tmp_path / "out"
    lr = results / "runs" / "books" / "lr"
    good = seed_aucs(lr)
    shutil.copy(lr / "seed-0.json", lr / "seed-5.json")
    shutil.copy(lr / "seed-0.npz", lr / "seed-5.npz")
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    row = pd.read_csv(out / "leaderboard.csv").set_index("model").loc["lr"]
    assert int(row["n_seeds"]) == 5
    assert float(row["auc_mean"]) == pytest.approx(sum(good.values()) / 5, abs=1e-6)
    failed = pd.read_csv(out / "failed.csv", keep_default_na=False)
    bad = failed[failed["path"].str.endswith("lr/seed-5.json")]
    assert len(bad) == 1 and bad["status"].iloc[0] == "unreadable"
    assert "seed 0" in bad["error"].iloc[0] and "file name" in bad["error"].iloc[0]


def test_a_model_directory_copied_under_another_name_is_not_counted_twice(tmp_path):
    """Before: runs/books/din_copy/ (records still saying model din) made din "10 seeds",
    every seed averaged twice."""
    results, out = books(tmp_path), tmp_path / "out"
    din = results / "runs" / "books" / "din"
    shutil.copytree(din, din.with_name("din_copy"))
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    assert "din" not in board.index or int(board.loc["din", "n_seeds"]) <= 5
    failed = pd.read_csv(out / "failed.csv", keep_default_na=False)
    assert (failed["error"].str.contains("more than one record")).sum() == 10


# --------------------------------------------------------------------------- Markdown
def test_a_pipe_in_a_cell_does_not_break_the_markdown_tables(tmp_path):
    """Before: an error "expected str | None" added a column to its row of failed.md."""
    results, out = books(tmp_path), tmp_path / "out"
    edit(results / "runs" / "books" / "lr" / "seed-1.json", status="failed",
         error="TypeError: expected str | None, got int")
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    for name in ("failed.md", "leaderboard.md"):
        rows = [ln for ln in (out / name).read_text().splitlines() if ln.startswith("|")]
        counts = {ln.replace("\\|", "").count("|") for ln in rows}
        assert len(counts) == 1, (name, rows)
    assert "str \\| None" in (out / "failed.md").read_text()


# --------------------------------------------------------------------------- check --update
def test_update_of_one_dataset_keeps_the_other_datasets_rows(tmp_path):
    """Before: `check --update --dataset books` rewrote a two-dataset baseline with the books
    rows only: the electronics-dien reference rows were gone without a word."""
    results = books(tmp_path, "books", "electronics-dien")
    baseline = tmp_path / "ref.csv"
    assert invoke("check", "--baseline", baseline, "--results", results,
                  "--update").exit_code == 0
    before = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    res = invoke("check", "--baseline", baseline, "--results", results, "--update",
                 "--dataset", "books")
    assert res.exit_code == 0 and clean(res), res.output
    after = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    other = before[before["dataset"] == "electronics-dien"].reset_index(drop=True)
    kept = after[after["dataset"] == "electronics-dien"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, other)
    assert set(after["dataset"]) == {"books", "electronics-dien"}
    assert "kept" in res.output


# --------------------------------------------------------------------------- malformed baselines
@pytest.fixture()
def gate(tmp_path):
    """The books fixture runs and a baseline written from them with --update."""
    results, baseline = books(tmp_path), tmp_path / "ref.csv"
    assert invoke("check", "--baseline", baseline, "--results", results,
                  "--update").exit_code == 0
    return results, baseline


@pytest.mark.parametrize("column,value", [("model_config", "[1, 2]"),
                                          ("dataset_identity", "3"),
                                          ("model_config", '"text"')])
def test_a_baseline_whose_json_column_is_no_object_is_malformed(gate, column, value):
    """Before: a `TypeError` traceback ("ctrbench check crashed (a bug)") once the row's
    config or identity did not match, instead of naming the line."""
    results, baseline = gate
    frame = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    row = frame.index[frame["model"] == "lr"][0]
    frame.loc[row, column] = value
    frame.loc[row, "config" if column == "model_config" else "identity"] = "other"
    frame.to_csv(baseline, index=False)
    res = invoke("check", "--baseline", baseline, "--results", results)
    assert res.exit_code == 2 and clean(res), res.output
    assert "crashed" not in res.output and column in res.output and "books/lr" in res.output


@pytest.mark.parametrize("entry", ["-1:0.6", "99999999999999999999:0.6"])
def test_a_baseline_seed_outside_the_seed_range_is_malformed(gate, entry):
    """Before: "-1:0.6;0:0.6" was read as two seeds, judged with Welch, "ok", exit 0."""
    results, baseline = gate
    frame = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    frame.loc[frame["model"] == "lr", "seed_aucs"] = f"{entry};0:0.6"
    frame.to_csv(baseline, index=False)
    res = invoke("check", "--baseline", baseline, "--results", results)
    assert res.exit_code == 2 and clean(res), res.output
    assert entry in res.output and "books/lr" in res.output


# --------------------------------------------------------------------------- the pop floor
def _pop_only(tmp_path: Path, *others: str) -> Path:
    """books: a `pop` (copies of lr's records, arch pop) and ``others`` on another data hash."""
    results = tmp_path / "results"
    pop = results / "runs" / "books" / "pop"
    shutil.copytree(BOOKS / "lr", pop)
    for p in pop.glob("*.json"):
        data = json.loads(p.read_text())
        data["model"], data["model_config"]["arch"], data["n_parameters"] = "pop", "pop", 0
        p.write_text(json.dumps(data))
    for model in others:
        shutil.copytree(BOOKS / model, results / "runs" / "books" / model)
        for p in (results / "runs" / "books" / model).glob("*.json"):
            data = json.loads(p.read_text())
            data["dataset_identity"]["data_hash"] = "another"
            p.write_text(json.dumps(data))
    return results


@pytest.mark.parametrize("others", [(), ("din",)])
def test_pop_header_never_says_every_model_beats_it_when_none_was_compared(tmp_path, others):
    """Before: "pop (item popularity) test AUC 0.6396; every model beats it" with no other
    model, or with din on another dataset version (never compared with pop)."""
    out = tmp_path / "out"
    res = report(_pop_only(tmp_path, *others), out)
    assert res.exit_code == 0 and clean(res), res.output
    header = next(ln for ln in res.output.splitlines() if ln.startswith("[books]"))
    assert "every model beats it" not in header, header
    assert "no model compared with it" in header
    if others:
        assert "din" in header and "identity" in header


# --------------------------------------------------------------------------- the Holm family
def test_the_holm_family_size_in_the_header_is_the_one_adjusted(tmp_path):
    """Before: "the Holm family, m = 6" while Holm adjusted 5 p-values (mian_postln, 1 seed,
    has no test): lr's adjusted p was 5 x p, not 6 x p."""
    results, out = books(tmp_path), tmp_path / "out"
    res = report(results, out, "--reference", "dien")
    assert res.exit_code == 0 and clean(res), res.output
    header = next(ln for ln in res.output.splitlines() if ln.startswith("[books]"))
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    tested = board["ttest_p"].notna()
    m = int(tested.sum())
    assert f"the Holm family, m = {m})" in header, header
    smallest = board.loc[tested, "ttest_p"].min()
    assert board.loc[tested, "ttest_p_holm"].min() == pytest.approx(m * smallest, rel=1e-3)
    assert "mian_postln vs dien (n 1)" in header and "no test possible" in header


# --------------------------------------------------------------------------- stale files
def test_a_new_report_leaves_no_file_of_the_previous_one_in_its_folder(tmp_path):
    """Before: after a report of books + electronics-dien, a report of books without mian into
    the same --out kept learning-electronics-dien.png and gim-books-mian.png beside the new
    tables ("wrote 18 file(s)"), figures of runs that report never read."""
    results, out = books(tmp_path, "books", "electronics-dien"), tmp_path / "out"
    first = invoke("report", "--results", results, "--out", out, "--bootstrap", "0")
    assert first.exit_code == 0, first.output
    assert (out / "plots" / "learning-electronics-dien.png").is_file()
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    shutil.rmtree(results / "runs" / "electronics-dien")
    shutil.rmtree(results / "runs" / "books" / "mian")
    second = invoke("report", "--results", results, "--out", out, "--bootstrap", "0")
    assert second.exit_code == 0 and clean(second), second.output
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
            and not p.name.startswith(".")}
    assert "plots/learning-electronics-dien.png" not in left
    assert "plots/gim-books-mian.png" not in left and "plots/gim-books-mian_postln.png" in left
    assert mine.read_text() == "the user's own file"
    assert "removed 3 file(s)" in second.output


# --------------------------------------------------------------------------- GIM figures
@pytest.mark.parametrize("weights", [np.empty((0, 7)), np.zeros(7)])
def test_a_gim_sample_that_is_no_matrix_is_skipped_not_a_crash(tmp_path, weights):
    """Before: `ValueError` (zero-size max) or `IndexError` (1-D) traceback from one score
    file, and the whole report failed, nothing written."""
    results, out = books(tmp_path), tmp_path / "out"
    path = results / "runs" / "books" / "mian" / "seed-0.npz"
    arrays = dict(np.load(path))
    arrays["explain__gim"] = weights
    np.savez(path, **arrays)
    res = invoke("report", "--results", results, "--out", out, "--bootstrap", "0")
    assert res.exit_code == 0 and clean(res), res.output
    assert (out / "plots" / "gim-books-mian.png").is_file()  # drawn from another seed
    assert (out / "leaderboard.md").is_file()


def test_the_tuned_table_leaves_a_non_finite_auc_out_too(tmp_path):
    """Before: defaults vs tuned counted lr's NaN seed in n_default (5) but not in the mean
    (pandas skips nan), and the paired test was nan ("–")."""
    results, out = books(tmp_path), tmp_path / "out"
    tuned = results / "runs" / "books" / "lr@books"
    shutil.copytree(BOOKS / "din", tuned)
    for p in tuned.glob("*.json"):
        edit(p, model="lr@books")
    edit(results / "runs" / "books" / "lr" / "seed-2.json", test__auc=math.nan)
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    row = pd.read_csv(out / "tuned.csv").iloc[0]
    assert row["model"] == "lr" and int(row["n_default"]) == 4
    assert math.isfinite(row["p_value"]) and math.isfinite(row["delta_auc"])


# ---------------------------------------------------------------- tuned: one configuration
def _with_tuned_lr(tmp_path: Path) -> Path:
    """books with a tuned card ``lr@books`` beside lr (din's records renamed, no training)."""
    results = books(tmp_path)
    tuned = results / "runs" / "books" / "lr@books"
    shutil.copytree(BOOKS / "din", tuned)
    for p in tuned.glob("*.json"):
        edit(p, model="lr@books")
    return results


def _nested(path: Path, section: str, key: str, value: object) -> None:
    data = json.loads(path.read_text())
    sub = data[section]
    *parents, leaf = key.split(".")
    for part in parents:
        sub = sub[part]
    sub[leaf] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("model,section,key,value,says", [
    ("lr", "model_config", "train.epochs", 3, "mix configurations"),
    ("lr@books", "dataset_identity", "data_hash", "another", "mix dataset identities"),
])
def test_the_tuned_table_never_averages_what_the_leaderboard_refuses(tmp_path, model, section,
                                                                     key, value, says):
    """Before: tuned.csv averaged lr's 5 seeds across two configurations (or lr@books across
    two dataset versions) into one ΔAUC and p, while the leaderboard refused the model."""
    results, out = _with_tuned_lr(tmp_path), tmp_path / "out"
    for seed in (3, 4):
        _nested(results / "runs" / "books" / model / f"seed-{seed}.json", section, key, value)
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    assert board.loc[model, "status"].startswith("mixed_")
    row = pd.read_csv(out / "tuned.csv").iloc[0]
    assert row["model"] == "lr" and row["tuned_card"] == "lr@books"
    assert not math.isfinite(row["delta_auc"]) and not math.isfinite(row["p_value"])
    assert row["status"] == "not compared"
    assert model in row["note"] and says in row["note"]
    assert not math.isfinite(row["auc_default" if model == "lr" else "auc_tuned"])
    ordering = pd.read_csv(out / "tuned_ordering.csv").iloc[0]
    assert int(ordering["n_models"]) == 0 and "lr" in ordering["left_out"]
    md = (out / "tuned.md").read_text()
    assert "not compared" in md and says in md


def test_the_tuned_table_compares_only_on_one_dataset_identity(tmp_path):
    """Before: lr (data hash ce31…) and lr@books run on another data hash were compared: a
    ΔAUC between two test sets. The leaderboard never compares across identities."""
    results, out = _with_tuned_lr(tmp_path), tmp_path / "out"
    for p in (results / "runs" / "books" / "lr@books").glob("seed-*.json"):
        _nested(p, "dataset_identity", "data_hash", "another")
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    row = pd.read_csv(out / "tuned.csv").iloc[0]
    assert not math.isfinite(row["delta_auc"]) and row["status"] == "not compared"
    assert "dataset identity" in row["note"]
    # each side is one configuration on one identity: its own mean is still shown
    assert math.isfinite(row["auc_default"]) and math.isfinite(row["auc_tuned"])


def test_the_tuned_table_still_compares_a_clean_pair(tmp_path):
    results, out = _with_tuned_lr(tmp_path), tmp_path / "out"
    res = report(results, out)
    assert res.exit_code == 0 and clean(res), res.output
    row = pd.read_csv(out / "tuned.csv", keep_default_na=False).iloc[0]
    assert row["status"] == "ok" and row["test"] == "paired t" and int(row["n_common"]) == 5
    lr = seed_aucs(results / "runs" / "books" / "lr")
    tuned = seed_aucs(results / "runs" / "books" / "lr@books")
    expected = sum(tuned.values()) / 5 - sum(lr.values()) / 5
    assert float(row["delta_auc"]) == pytest.approx(expected, abs=1e-9)
    assert int(pd.read_csv(out / "tuned_ordering.csv").iloc[0]["n_models"]) == 1


# --------------------------------------------------------------------------- bootstrap memory
def _bootstrap_case(n_rows: int = 150, n_users: int = 40, seed: int = 3):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_users, n_rows)  # (rows,)
    labels = (rng.random(n_rows) < 0.4).astype(int)  # (rows,)
    scores = [np.round(rng.random(n_rows), 1), rng.random(n_rows)]  # ties in the first
    return groups, labels, scores


@pytest.mark.parametrize("max_bytes", [1, 8 * (150 + 40) * 3, 8 * (150 + 40) * 37, 2**30])
def test_chunked_bootstrap_equals_the_unchunked_computation_exactly(max_bytes):
    """Before: one (resamples, rows) float64 matrix: --bootstrap 100000 on 6,000 rows = 4.8 GB.
    Chunked, the same seed consumes the same random stream in the same order."""
    from ctrbench.analysis import cluster

    groups, labels, scores = _bootstrap_case()
    weights = cluster.user_weights(groups, 37, np.random.default_rng(11))  # (37, 150)
    full = cluster.weighted_aucs(scores, labels, weights)  # (2, 37)
    rng = np.random.default_rng(11)
    got = cluster.bootstrap_aucs(scores, labels, groups, 37, rng, max_bytes=max_bytes)
    np.testing.assert_array_equal(got, full)
    # the generator is left where the unchunked draw leaves it (later draws unchanged)
    after = np.random.default_rng(11)
    cluster.user_weights(groups, 37, after)
    assert rng.integers(0, 2**62) == after.integers(0, 2**62)


def test_report_bootstrap_works_in_bounded_chunks_with_auto_sizing(tmp_path, monkeypatch):
    """The report's bootstrap (``--bootstrap auto``: 1000 resamples on the 400-row fixture)
    never builds more than ``CHUNK_BYTES`` of weights at once, and its intervals equal the
    ones computed in one chunk."""
    from ctrbench.analysis import cluster
    from ctrbench.report.tables import auto_resamples

    results = books(tmp_path)
    columns = ["auc_boot_low", "auc_boot_high", "boot_delta_low", "boot_delta_high", "boot_n"]
    one = invoke("report", "--results", results, "--out", tmp_path / "one", "--no-plots")
    assert one.exit_code == 0 and clean(one), one.output
    seen: list[tuple[int, ...]] = []
    real = cluster.weighted_aucs

    def spy(scores, labels, weights, *args, **kwargs):
        seen.append(np.shape(weights))
        return real(scores, labels, weights, *args, **kwargs)

    budget = 100 * 400 * 8  # the float64 weights of 100 replicates of the 400 test rows
    monkeypatch.setattr(cluster, "weighted_aucs", spy)
    monkeypatch.setattr(cluster, "CHUNK_BYTES", budget)
    res = invoke("report", "--results", results, "--out", tmp_path / "two", "--no-plots")
    assert res.exit_code == 0 and clean(res), res.output
    n_vectors = len(list((results / "runs" / "books").glob("*/seed-*.npz")))
    assert auto_resamples(n_vectors, 400) == 1000 and "bootstrap: 1000 resamples" in res.output
    assert sum(s[0] for s in seen) == 1000 and len(seen) > 10  # every resample, in chunks
    assert all(s[1] == 400 and 8 * s[0] * s[1] <= budget for s in seen)
    a = pd.read_csv(tmp_path / "one" / "leaderboard.csv").set_index("model")[columns]
    b = pd.read_csv(tmp_path / "two" / "leaderboard.csv").set_index("model")[columns]
    pd.testing.assert_frame_equal(a, b)
    assert a["auc_boot_low"].notna().any()


# --------------------------------------------------------------------------- Welch, zero variance
@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_welch_with_one_constant_side_is_the_one_sample_limit_without_warnings(alternative):
    """Before: scipy's "Precision loss occurred in moment calculation" RuntimeWarning (on
    `check`'s stderr). With one side's variance 0, Welch's t is (mean a - mean b) / (s_b /
    sqrt(n_b)) on n_b - 1 df: the one-sample t-test of b against mean(a)."""
    from scipy import stats as sps

    from ctrbench.analysis import stats

    const, other = [0.65] * 5, [0.60, 0.615, 0.63, 0.62, 0.64]
    flip = {"two-sided": "two-sided", "less": "greater", "greater": "less"}[alternative]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got_a = stats.welch_ttest(const, other, alternative)
        got_b = stats.welch_ttest(other, const, alternative)
        want_a = sps.ttest_1samp(other, 0.65, alternative=flip).pvalue
        want_b = sps.ttest_1samp(other, 0.65, alternative=alternative).pvalue
        jitter = stats.welch_ttest([0.65, 0.65 + 1e-9, 0.65 - 1e-9, 0.65, 0.65], other,
                                   alternative)
    assert got_a == pytest.approx(want_a, rel=1e-9)
    assert got_b == pytest.approx(want_b, rel=1e-9)
    assert jitter == pytest.approx(got_a, rel=1e-4)  # continuous in the data


@pytest.mark.parametrize("a,b,alternative,p", [
    ([0.7] * 3, [0.7] * 4, "two-sided", 1.0), ([0.7] * 3, [0.6] * 4, "two-sided", 0.0),
    ([0.7] * 3, [0.6] * 4, "greater", 0.0), ([0.7] * 3, [0.6] * 4, "less", 1.0),
    ([0.1 + 0.2] * 3 + [0.3], [0.3] * 2, "two-sided", 1.0), ([0.7], [0.6, 0.7], "less", None),
])
def test_welch_with_both_sides_constant(a, b, alternative, p):
    from ctrbench.analysis import stats

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = stats.welch_ttest(a, b, alternative)
    assert (math.isnan(got) if p is None else got == p)


def test_check_with_welch_on_equal_seed_aucs_prints_no_scipy_warning(gate):
    """Before: `check` printed scipy's "Precision loss occurred in moment calculation" when
    the current seeds (all one AUC) were compared with the baseline's other seeds by Welch."""
    from scipy import stats as sps

    results, baseline = gate
    for p in (results / "runs" / "books" / "lr").glob("seed-*.json"):
        edit(p, test__auc=0.64)
    frame = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    row = frame["model"] == "lr"
    shifted = ";".join(f"{int(s) + 5}:{v}" for s, v in
                       (e.split(":") for e in frame.loc[row, "seed_aucs"].iloc[0].split(";")))
    frame.loc[row, "seed_aucs"] = shifted
    frame.to_csv(baseline, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = invoke("check", "--baseline", baseline, "--results", results)
    assert clean(res) and "crashed" not in res.output, res.output
    assert "Precision loss" not in res.output and "RuntimeWarning" not in res.output
    assert res.exit_code == 0, res.output
    lr = next(ln.split() for ln in res.output.splitlines() if ln.startswith("books      lr "))
    ref = [float(e.split(":")[1]) for e in shifted.split(";")]
    want = sps.ttest_1samp(ref, 0.64, alternative="greater").pvalue  # the constant-side limit
    assert "Welch," in lr and lr[lr.index("one-sided") + 1] == f"{want:.3g}"
