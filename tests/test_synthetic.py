"""The synthetic world: determinism, exact raw formats, the oracle, planted effects, the reader."""

from __future__ import annotations

import ast
import datetime as dt
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctrbench.analysis.metrics import auc
from ctrbench.cards import dataset_card_from_dict
from ctrbench.data.sources.amazon import read_amazon
from ctrbench.data.synthetic import (
    META_FILE,
    ORACLE_FILE,
    PARAMS_FILE,
    REVIEWS_FILE,
    SCALES,
    USERS_FILE,
    SyntheticOracle,
    WorldParams,
    generate,
    world_params,
)
from ctrbench.data.synthetic.world import _lengths
from ctrbench.errors import CardError, DataError

TINY = dict(n_users=400, n_items=300, n_meta_items=330, n_cates=12, mean_events=10.0,
            max_events=40)
REVIEW_KEYS = ["reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall",
               "summary", "unixReviewTime", "reviewTime"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate(WorldParams(seed=7, **TINY), tmp_path_factory.mktemp("w") / "world")


@pytest.fixture(scope="module")
def oracle(world) -> SyntheticOracle:
    return SyntheticOracle(world)


def _gz_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def _events(world: Path) -> pd.DataFrame:
    """Reviews (file order = user by user, oldest first) joined with categories and users."""
    rows = [json.loads(line) for line in _gz_lines(world / REVIEWS_FILE)]
    frame = pd.DataFrame({"user": [r["reviewerID"] for r in rows],
                          "item": [r["asin"] for r in rows],
                          "ts": [r["unixReviewTime"] for r in rows]})
    cats = {}
    for line in _gz_lines(world / META_FILE):
        meta = ast.literal_eval(line)
        cats[meta["asin"]] = meta["categories"][-1][-1]
    frame["cate"] = frame["item"].map(cats)
    users = pd.read_csv(world / USERS_FILE).set_index("reviewerID")
    frame["occupation"] = users.loc[frame["user"], "occupation"].to_numpy()
    frame["month"] = pd.to_datetime(frame["ts"], unit="s").dt.month
    return frame


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_different_seed_differs(tmp_path, world):
    again = generate(WorldParams(seed=7, **TINY), tmp_path / "again")
    for name in (REVIEWS_FILE, META_FILE, USERS_FILE, PARAMS_FILE):
        assert (again / name).read_bytes() == (world / name).read_bytes(), name
    a, b = np.load(world / ORACLE_FILE), np.load(again / ORACLE_FILE)
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    other = generate(WorldParams(seed=8, **TINY), tmp_path / "other")
    assert (other / REVIEWS_FILE).read_bytes() != (world / REVIEWS_FILE).read_bytes()


def test_generate_refuses_existing_directory(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataError, match="already exists"):
        generate(WorldParams(seed=1, **TINY), tmp_path / "taken")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temp dir left behind


# --------------------------------------------------------------------------- formats
def test_reviews_are_amazon_json_lines(world):
    lines = _gz_lines(world / REVIEWS_FILE)
    written = json.loads((world / PARAMS_FILE).read_text())
    assert len(lines) == written["reviews"] > TINY["n_users"] * 5 - 1
    without_name = 0
    for line in lines:
        record = json.loads(line)
        keys = [k for k in REVIEW_KEYS if k in record]
        assert list(record) == keys  # the real field order, nothing extra
        without_name += "reviewerName" not in record
        assert re.fullmatch(r"A[0-9A-Z]{13}", record["reviewerID"])
        assert re.fullmatch(r"B\d{9}", record["asin"])
        assert record["overall"] in (1.0, 2.0, 3.0, 4.0, 5.0)
        yes, total = record["helpful"]
        assert 0 <= yes <= total
        assert record["unixReviewTime"] % 86400 == 0  # whole days
        day = dt.datetime.fromtimestamp(record["unixReviewTime"], dt.timezone.utc)
        assert record["reviewTime"] == f"{day.month:02d} {day.day}, {day.year}"
    assert 0 < without_name < len(lines)  # reviewerName is optional, as in the real files


def test_meta_lines_are_python_literals_and_users_csv(world):
    lines = _gz_lines(world / META_FILE)
    assert len(lines) == TINY["n_meta_items"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])  # single quotes, like the real crawl
    records = [ast.literal_eval(line) for line in lines]
    assert all(next(iter(r)) == "asin" and r["categories"][-1][-1].startswith("Cate ")
               for r in records)
    assert any(len(r["categories"]) == 2 for r in records)  # DIN rule: last of last path
    assert any("'" in r["title"] for r in records)  # exercises double-quoted literals
    users = pd.read_csv(world / USERS_FILE)
    assert list(users.columns) == ["reviewerID", "occupation", "age", "gender"]
    assert len(users) == users["reviewerID"].nunique() == TINY["n_users"]


def test_raw_files_parse_with_the_amazon_reader(world, oracle):
    tables = read_amazon(world / REVIEWS_FILE, world / META_FILE,
                         category_rule="last_of_last", strict=True)
    assert len(tables.interactions) == oracle.n_lines
    assert tables.interactions["line"].tolist() == list(range(oracle.n_lines))
    assert tables.items["category"].str.startswith("Cate ").all()
    assert tables.items["category"].nunique() == TINY["n_cates"]
    # timestamps strictly increase per user, so sorting by time keeps the generator's order
    inter = tables.interactions
    assert (inter.groupby("user", sort=False)["ts"].diff().dropna() > 0).all()


# --------------------------------------------------------------------------- oracle
def test_oracle_is_a_distribution_over_items(oracle):
    n_items = len(oracle.item_cate)
    rng = np.random.default_rng(0)
    first = np.flatnonzero(oracle.pos == 0)[:2]
    after_gap = np.flatnonzero(oracle.long_gap)[:3]
    late = np.flatnonzero(oracle.pos >= 15)[:3]
    for line in [*first, *after_gap, *late, *rng.integers(0, oracle.n_lines, 4)]:
        probs = oracle.score_index(np.full(n_items, line), np.arange(n_items))
        assert np.all((probs >= 0) & (probs <= 1))
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)
        seen = oracle.item[(oracle.user == oracle.user[line]) & (oracle.pos < oracle.pos[line])]
        assert np.all(probs[seen] == 0)  # nobody reviews an item twice
        assert np.all(probs[TINY["n_items"]:] == 0)  # meta-only items are never reviewed


def test_oracle_prefers_the_true_next_item(oracle):
    lines = np.arange(oracle.n_lines)
    rng = np.random.default_rng(1)
    true = oracle.score_index(lines, oracle.item)
    random = oracle.score_index(lines, rng.integers(0, TINY["n_items"], len(lines)))
    assert true.min() > 0
    assert true.mean() > 5 * random.mean()
    labels = np.r_[np.ones(len(lines)), np.zeros(len(lines))]
    assert auc(labels, np.r_[true, random]) > 0.8


def test_oracle_scores_raw_asins(oracle, world):
    lines = _gz_lines(world / REVIEWS_FILE)
    asins = np.array([json.loads(line)["asin"] for line in lines[:50]], dtype=object)
    np.testing.assert_allclose(oracle.score(np.arange(50), asins),
                               oracle.score_index(np.arange(50), oracle.item[:50]))
    assert oracle.score(np.array([0]), np.array(["B000000000"], dtype=object))[0] == 0.0
    with pytest.raises(DataError, match="did not write"):
        oracle.score(np.array([oracle.n_lines]), asins[:1])


# --------------------------------------------------------------------------- planted effects
def _chi2_ratio(a: pd.Series, b: pd.Series) -> float:
    """Chi-square statistic of the (a, b) contingency table over its degrees of freedom."""
    from scipy.stats import chi2_contingency

    table = pd.crosstab(a, b).to_numpy()
    stat, _, dof, _ = chi2_contingency(table)
    return stat / dof


def test_planted_effects_are_measurable_in_the_raw_data(world):
    ev = _events(world)
    # context x category and profile x category: far from independence (ratio 11 and 24 here;
    # 1.6 with season_strength = 0, 2.3 with profile_strength = age_strength = 0)
    assert _chi2_ratio(ev["month"], ev["cate"]) > 5
    assert _chi2_ratio(ev["occupation"], ev["cate"]) > 10
    # recent-category affinity: the previous review's category repeats more often than that of
    # a random other review of the same user (a within-user shuffle): +0.061 here, +0.031 with
    # mix = (0, 0.9, 0.1) (no history component: only the seasons' month adjacency remains)
    prev_cate = ev.groupby("user", sort=False)["cate"].shift()
    has_prev = prev_cate.notna()
    rng = np.random.default_rng(0)
    shuffled = ev.groupby("user", sort=False)["cate"].transform(
        lambda s: rng.permutation(s.to_numpy()))
    shuffled_prev = shuffled.groupby(ev["user"], sort=False).shift()
    repeat = (ev["cate"] == prev_cate)[has_prev].mean()
    assert repeat > (shuffled == shuffled_prev)[has_prev].mean() + 0.045
    shares = ev["cate"].value_counts(normalize=True)
    # new demands after inactivity: fewer repeats after a > 30-day gap
    gap = ev.groupby("user", sort=False)["ts"].diff() / 86400
    long = (gap > 30)[has_prev]
    same = (ev["cate"] == prev_cate)[has_prev]
    assert 0.05 < long.mean() < 0.3
    assert same[long].mean() < same[~long].mean() - 0.1
    # Zipf popularity inside a category: the top item of the biggest category dominates
    biggest = ev[ev["cate"] == shares.index[0]]["item"].value_counts(normalize=True)
    assert biggest.iloc[0] > 3 / len(biggest)


# --------------------------------------------------------------------------- parameters
def test_world_params_validation():
    assert world_params({}) == WorldParams()
    electronics = world_params({"scale": "electronics", "seed": 3})
    assert (electronics.total_events, electronics.n_meta_items) == (1_689_188, 498_196)
    assert electronics.seed == 3
    assert world_params({"scale": "books"}).total_events == SCALES["books"]["total_events"]
    with pytest.raises(CardError, match="n_user"):
        world_params({"n_user": 5})
    with pytest.raises(CardError, match="unknown scale"):
        world_params({"scale": "huge"})
    with pytest.raises(CardError, match="summing to 1"):
        world_params({"mix": [0.5, 0.5, 0.5]})
    with pytest.raises(CardError, match="generator version"):
        world_params({"generator_version": 999})


def test_lengths_hit_an_exact_total():
    params = WorldParams(n_users=1000, mean_events=9.0, max_events=50, total_events=8765)
    lengths = _lengths(params, np.random.default_rng(0))
    assert lengths.sum() == 8765
    assert lengths.min() >= 5 and lengths.max() <= 50
    assert np.all(np.diff(lengths) <= 0)  # descending: active users are a prefix


# --------------------------------------------------------------------------- the reader
def _card(**reader_params) -> object:
    return dataset_card_from_dict({
        "name": "synthetic-tiny", "reader": "synthetic", "protocol": "din",
        "reader_params": {"seed": 3, **TINY, **reader_params},
        "fields": {"user": ["user_id", "occupation", "age"], "context": ["month", "gap_bucket"]},
    })


def test_reader_generates_once_then_reuses(tmp_path, monkeypatch):
    from ctrbench.data.sources import read_source
    from ctrbench.paths import raw_dir

    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path))
    card = _card()
    tables = read_source(card, {})
    generated = list(raw_dir("synthetic-tiny").iterdir())
    assert len(generated) == 1 and (generated[0] / PARAMS_FILE).is_file()
    stamp = (generated[0] / REVIEWS_FILE).stat().st_mtime_ns
    assert set(tables.users.columns) == {"user", "occupation", "age", "gender"}
    assert tables.oracle is not None and tables.oracle.n_lines == len(tables.interactions)
    read_source(card, {})
    assert (generated[0] / REVIEWS_FILE).stat().st_mtime_ns == stamp
    read_source(_card(seed=4), {})  # other parameters: another directory
    assert len(list(raw_dir("synthetic-tiny").iterdir())) == 2


def test_prepared_oracle_auc_beats_popularity(tmp_path, monkeypatch):
    from ctrbench.data.prepare import prepare_dataset

    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path))
    data = prepare_dataset(_card(n_users=600))
    test, train = data.split("test"), data.split("train")
    assert {"oracle", "gap_days", "occupation", "age"} <= set(test)
    oracle_auc = auc(test["label"], test["oracle"])
    popular = np.bincount(train["item_id"][train["label"] == 1],
                          minlength=int(test["item_id"].max()) + 1)
    popularity_auc = auc(test["label"], popular[test["item_id"]])
    assert oracle_auc > 0.8
    assert oracle_auc > popularity_auc + 0.05
