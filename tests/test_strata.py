"""Strata in `ctrbench report` and the "beats pop" columns, on a real tiny synthetic store.

lr and pop are run through the CLI (2 seeds, 1 epoch) on a 400-user synthetic world; every
figure of strata.csv is recomputed here independently, sample by sample, from the store's
columns and the stored scores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ctrbench.analysis.metrics import auc
from ctrbench.cli import main
from ctrbench.errors import DataError
from ctrbench.record import read_scores
from ctrbench.report.data import ResultSet
from ctrbench.report.strata import activity_buckets, history_buckets, sample_ids
from ctrbench.report.versus_pop import add_pop_columns, one_sided_p

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CARD = """
description = "tiny synthetic world for the strata tests"
reader = "synthetic"
protocol = "din"
version = 1
[reader_params]
seed = 3
n_users = 400
n_items = 300
n_meta_items = 330
n_cates = 12
mean_events = 10.0
max_events = 40
[protocol_params]
max_len = 10
[fields]
user = ["user_id", "occupation"]
context = ["month", "gap_bucket"]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """lr and pop, 2 seeds, on a prepared tiny synthetic store; then `ctrbench report`."""
    root = tmp_path_factory.mktemp("strata")
    (root / "cards" / "datasets").mkdir(parents=True)
    (root / "cards" / "datasets" / "tiny.toml").write_text(CARD)
    results, out = root / "results", root / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTRBENCH_HOME", str(root / "home"))
        mp.setenv("CTRBENCH_CARDS", str(root / "cards"))
        mp.chdir(root)
        ran = CliRunner().invoke(main, ["run", "-m", "lr,pop", "-d", "tiny", "--seeds", "2",
                                        "--epochs", "1", "--device", "cpu", "-q",
                                        "--results", str(results)])
        assert ran.exit_code == 0, ran.output
        rep = CliRunner().invoke(main, ["report", "--results", str(results), "--out", str(out),
                                        "--bootstrap", "0", "--reference", "lr"])
        assert rep.exit_code == 0, rep.output
    store = next((root / "home" / "prepared").glob("tiny-*"))
    return root, results, out, store, rep.output


def _columns(store: Path) -> dict[str, dict[str, np.ndarray]]:
    return {split: {p.stem: np.load(p) for p in (store / split).glob("*.npy")}
            for split in ("train", "test")}


def _per_sample_strata(store: Path) -> pd.DataFrame:
    """The strata of each test row, with a plain loop over samples (the reference)."""
    cols = _columns(store)
    test, train = cols["test"], cols["train"]
    train_pos = pd.Series(train["group"][train["label"] == 1]).value_counts()
    rows, sample = [], -1
    for i in range(len(test["label"])):
        if test["label"][i] == 1:
            sample, first = sample + 1, i
        n = int(test["hist_len"][first])
        history = set(test["hist_cate_id"][first][:n].tolist())
        cate = int(test["cate_id"][first])
        gap = float(test["gap_days"][first])
        rows.append({
            "sample": sample,
            "category": "in history" if cate in history and cate != 1 else "new (not in history)",
            "gap": ("no previous review" if math.isnan(gap)
                    else "> 30 days" if gap > 30 else "<= 30 days"),
            "hist_len": n, "activity": int(train_pos.get(int(test["group"][first]), 0)),
        })
    return pd.DataFrame(rows)


def test_strata_sizes_and_aucs_match_a_per_sample_recomputation(world):
    _, results, out, store, _ = world
    table = pd.read_csv(out / "strata.csv")
    assert set(table["stratum"]) == {"category", "gap", "history", "activity", "profile",
                                     "season"}
    ref = _per_sample_strata(store)
    labels = _columns(store)["test"]["label"]
    n_samples = int(labels.sum())
    models = table[table["model"] != "oracle"]
    for _, part in models.groupby("stratum"):
        sizes = part.drop_duplicates("bucket")
        assert sizes["n_samples"].sum() == n_samples and sizes["n_rows"].sum() == len(labels)
    for family in ("category", "gap"):
        for bucket in ref[family].unique():
            mask = ref[family].to_numpy() == bucket
            row = models[(models["stratum"] == family) & (models["bucket"] == bucket)]
            assert row["n_rows"].iloc[0] == mask.sum()
            for model in ("lr", "pop"):
                seeds = {}
                for seed in (0, 1):
                    scores = read_scores(results / "runs" / "tiny" / model / f"seed-{seed}.json")
                    seeds[seed] = auc(labels[mask], scores["scores"][mask])
                got = row[row["model"] == model].iloc[0]
                # the CSV keeps 6 significant digits, seed_aucs 8
                assert got["auc_mean"] == pytest.approx(np.mean(list(seeds.values())), abs=1e-6)
                recorded = dict(item.split(":") for item in got["seed_aucs"].split(";"))
                assert {int(k): float(v) for k, v in recorded.items()} == pytest.approx(
                    seeds, abs=1e-8)
    first = ref.drop_duplicates("sample")
    history = models[models["stratum"] == "history"].drop_duplicates("bucket")
    history = history.set_index("bucket")["n_samples"]
    assert history.get("10 (full)", 0) == (first["hist_len"] == 10).sum()  # max_len = 10
    assert history.get("5-9", 0) == first["hist_len"].between(5, 9).sum()
    # activity buckets: the user's positive training rows, edges at the training quartiles
    activity = models[models["stratum"] == "activity"].drop_duplicates("bucket")
    assert activity["n_samples"].sum() == len(first)
    top = activity.iloc[-1]
    low = int(top["bucket"].rstrip("+"))
    assert top["n_samples"] == (first["activity"] >= low).sum()


def _lift_bucket(lift: float) -> str:
    return ("lift < 0.5" if lift < 0.5 else "0.5-1" if lift < 1 else "1-2" if lift < 2
            else ">= 2")


def test_profile_and_season_lifts_match_a_plain_count_over_training_positives(world):
    """profile / season: P(c | occupation or month) / P(c), add-one smoothed over the
    categories, counted with plain Python over the training positives only."""
    _, _, out, store, _ = world
    cols = _columns(store)
    train, test = cols["train"], cols["test"]
    pos = train["label"] == 1
    cates = [int(c) for c in train["cate_id"][pos]]
    n_cates = max(max(cates), int(test["cate_id"].max())) + 1
    table = pd.read_csv(out / "strata.csv")
    models = table[table["model"] == "lr"]
    for family, fld in (("profile", "occupation"), ("season", "month")):
        values = [int(v) for v in train[fld][pos]]
        pair, per_value, per_cate = {}, {}, {}
        for v, c in zip(values, cates):
            pair[(v, c)] = pair.get((v, c), 0) + 1
            per_value[v] = per_value.get(v, 0) + 1
            per_cate[c] = per_cate.get(c, 0) + 1
        expected: dict[str, int] = {}
        for i in np.flatnonzero(test["label"] == 1):
            v, c = int(test[fld][i]), int(test["cate_id"][i])
            lift = ((pair.get((v, c), 0) + 1) / (per_value.get(v, 0) + n_cates)) / (
                (per_cate.get(c, 0) + 1) / (len(cates) + n_cates))
            bucket = _lift_bucket(lift)
            expected[bucket] = expected.get(bucket, 0) + 1
        got = models[models["stratum"] == family].set_index("bucket")["n_samples"].to_dict()
        assert {k: int(v) for k, v in got.items()} == expected, family


def test_strata_keep_samples_whole_and_compare_with_the_reference(world):
    _, _, out, _, stdout = world
    table = pd.read_csv(out / "strata.csv")
    assert set(table["reference"]) == {"lr"}
    lr = table[table["model"] == "lr"]
    assert (lr["significant"] == "reference").all() and lr["delta_auc"].isna().all()
    pop = table[table["model"] == "pop"].set_index(["stratum", "bucket"])
    lr = lr.set_index(["stratum", "bucket"])
    np.testing.assert_allclose(pop["delta_auc"], pop["auc_mean"] - lr.loc[pop.index, "auc_mean"],
                               atol=2e-6)
    assert pop["ttest_p_holm"].notna().all()
    # a sample's rows are never split: every bucket has positive rate 1 / (1 + negatives)
    assert np.allclose(table["positive_rate"], 0.5)
    oracle = table[table["model"] == "oracle"]
    assert len(oracle) == len(table.drop_duplicates(["stratum", "bucket"]))
    assert oracle["auc_mean"].between(0.5, 1.0).all()
    assert "Test AUC by stratum" in stdout and "new (not in history)" in stdout
    plot = out / "plots" / "strata-tiny.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "strata.md").read_text()
    assert "### category" in md and "(ref)" in md and "oracle" in md


def test_leaderboard_marks_models_that_do_not_beat_pop(world):
    _, _, out, _, stdout = world
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    assert board.loc["pop", "beats_pop"] == "pop"
    lr = board.loc["lr"]
    # the CSV rounds each figure to 6 decimals: a difference of two rounded means is within
    # 1e-6 of the rounded difference
    assert lr["pop_delta_auc"] == pytest.approx(lr["auc_mean"] - board.loc["pop", "auc_mean"],
                                                abs=2e-6)
    assert lr["pop_test"] == "t-test" and lr["beats_pop"] == (
        "yes" if lr["pop_delta_auc"] > 0 and lr["pop_p_holm"] < 0.05 else "no")
    assert "beats pop" in stdout and "pop (item popularity) test AUC" in stdout


def test_store_not_found_skips_strata_with_a_message(world, tmp_path, monkeypatch):
    root, results, _, store, _ = world
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(root / "cards"))
    monkeypatch.chdir(tmp_path)
    args = ["report", "--results", str(results), "--bootstrap", "0", "--no-plots"]
    missing = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert missing.exit_code == 0, missing.output
    assert not (tmp_path / "a" / "strata.csv").exists()
    assert "no prepared store" in missing.output and "--store" in missing.output
    given = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--store",
                                      str(store.parent)])
    assert given.exit_code == 0, given.output
    assert (tmp_path / "b" / "strata.csv").is_file()
    bad = CliRunner().invoke(main, [*args, "--store", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "nowhere" in bad.output


# --------------------------------------------------------------------------- units
def test_samples_must_not_mix_users():
    labels = np.array([1, 0, 1, 0, 0], dtype=np.float32)
    sid, first = sample_ids(labels, np.array([7, 7, 8, 8, 8]))
    assert sid.tolist() == [0, 0, 1, 1, 1] and first.tolist() == [0, 2]
    with pytest.raises(DataError, match="different users"):
        sample_ids(labels, np.array([7, 8, 8, 8, 8]))
    with pytest.raises(DataError, match="start with a positive"):
        sample_ids(np.array([0, 1], dtype=np.float32), None)


def test_bucket_edges_and_labels():
    edges, labels = history_buckets(30)
    assert labels == ["0", "1-4", "5-9", "10-19", "20-29", "30 (full)"]
    assert np.searchsorted(edges, [0, 1, 4, 5, 29, 30], side="right").tolist() == [0, 1, 1, 2,
                                                                                   4, 5]
    assert history_buckets(4)[1] == ["0", "1-3", "4 (full)"]
    edges, labels = activity_buckets(np.arange(1, 101))
    assert labels == ["0", "1-25", "26-50", "51-75", "76+"]
    assert np.searchsorted(edges, [0, 1, 25, 26, 76, 500], side="left").tolist() == [0, 1, 1, 2,
                                                                                     4, 4]
    assert activity_buckets(np.zeros(0))[1] == ["0", "1+"]


def test_pop_verdicts_by_test_and_by_mean():
    assert one_sided_p(np.array([0.80, 0.81, 0.82]), 0.70) < 0.01
    assert one_sided_p(np.array([0.60, 0.61, 0.62]), 0.70) > 0.99
    assert math.isnan(one_sided_p(np.array([0.9]), 0.7))
    runs = pd.DataFrame([
        ("d", "pop", s, "finished", "id", 0.70) for s in (0, 1)] + [
        ("d", "good", s, "finished", "id", 0.80 + 0.01 * s) for s in (0, 1, 2)] + [
        ("d", "close", s, "finished", "id", 0.70 + 0.001 * (-1) ** s) for s in (0, 1, 2)] + [
        ("d", "single", 0, "finished", "id", 0.71)] + [
        ("d", "other", 0, "finished", "id2", 0.99)],
        columns=["dataset", "model", "seed", "status", "identity", "test_auc"])
    rs = ResultSet(Path("."), runs, pd.DataFrame(), {})
    board = runs.groupby(["dataset", "model", "identity"], as_index=False)["test_auc"].mean()
    board = board.rename(columns={"test_auc": "auc_mean"}).assign(status="ok")
    out = add_pop_columns(board, rs, alpha=0.05).set_index("model")
    assert out.loc["pop", "beats_pop"] == "pop"
    assert (out.loc["good", "beats_pop"], out.loc["good", "pop_test"]) == ("yes", "t-test")
    assert out.loc["close", "beats_pop"] == "no"  # above by 0.0003 on average, not significant
    assert (out.loc["single", "beats_pop"], out.loc["single", "pop_test"]) == ("yes", "mean")
    assert out.loc["other", "beats_pop"] == ""  # another dataset identity: not compared
