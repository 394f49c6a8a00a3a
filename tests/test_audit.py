"""``ctrbench stats --audit`` (issue 16.6): each kind of leak, planted, is caught; clean data
and the shipped synthetic card pass; and the sanity warnings of ``ctrbench stats`` (16.5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ctrbench.cards import dataset_card_from_dict
from ctrbench.cli import main
from ctrbench.data.audit import audit
from ctrbench.data.build import build_samples
from ctrbench.data.canonical import CanonicalTables, clean_interactions
from ctrbench.data.sanity import sanity_warnings
from ctrbench.data.store import write_store

DAY = 86_400


def log(seed: int = 0, n_users: int = 150, n_items: int = 80, repeats: bool = False
        ) -> CanonicalTables:
    """A random log (6-14 events per user); with ``repeats`` some users buy an item twice."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(6, 15))
        items = rng.choice(n_items, size=n, replace=False).tolist()
        if repeats and u % 3 == 0:
            items[-1] = items[0]  # the last event repeats the first (far back)
        if repeats and u % 3 == 1:
            items[-1] = items[-2]  # the last event repeats the previous one
        times = np.sort(rng.integers(0, 400, size=n)) * DAY + 1_300_000_000
        rows += [(f"u{u}", f"i{i}", int(t), float(rng.integers(1, 6)))
                 for i, t in zip(items, times)]
    inter = pd.DataFrame(rows, columns=["user", "item", "ts", "rating"])
    inter["line"] = np.arange(len(inter), dtype=np.int64)
    inter["rating"] = inter["rating"].astype(np.float32)
    items = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)],
                          "category": [f"c{i % 9}" for i in range(n_items)]})
    return CanonicalTables(interactions=inter, items=items)


def card(protocol: str = "din", max_len: int = 30, **params):
    return dataset_card_from_dict({
        "name": "audit", "reader": "table", "protocol": protocol,
        "protocol_params": {"max_len": max_len, "seed": 5, **params},
        "fields": {"user": ["user_id", "hist_len_bucket", "fav_cate", "mean_rating_bucket"],
                   "context": ["month", "weekday", "gap_bucket"]}})


def run_audit(built, protocol: str = "din") -> dict[str, bool]:
    rows = audit(built.splits, built.schema, protocol, 1)
    return {check: all(r.passed for r in rows if r.check == check) for check in
            ("pair_identity", "candidate_in_history", "candidate_seen_before",
             "features_after_target")}


ALL_PASS = {"pair_identity": True, "candidate_in_history": True,
            "candidate_seen_before": True, "features_after_target": True}


@pytest.mark.parametrize("protocol", ["din", "dien"])
def test_clean_data_passes(protocol):
    extra = {"neg_exclude": "reviewed"} if protocol == "dien" else {}
    built = build_samples(clean_interactions(log()), card(protocol, **extra))
    assert run_audit(built, protocol) == ALL_PASS


def test_planted_repeat_in_the_window_is_caught():
    built = build_samples(log(repeats=True), card())  # repeats kept: not cleaned
    assert run_audit(built) == {**ALL_PASS, "candidate_in_history": False,
                                "candidate_seen_before": False}
    cleaned = build_samples(clean_interactions(log(repeats=True)), card())
    assert run_audit(cleaned) == ALL_PASS


def test_planted_repeat_beyond_the_window_is_caught():
    """T = 2: a repeat of the user's first event is outside the window, not outside the past."""
    tables = log(repeats=True)
    keep = ~tables.interactions.index.isin(
        tables.interactions.groupby("user").tail(1).index[1::3])  # only far-back repeats
    tables.interactions = tables.interactions[keep].reset_index(drop=True)
    built = build_samples(tables, card(max_len=2))
    result = run_audit(built)
    assert result["candidate_seen_before"] is False
    assert result["pair_identity"] and result["features_after_target"]


def test_planted_context_from_the_target_is_caught():
    built = build_samples(clean_interactions(log()), card())
    test = built.splits["test"]
    test["month"] = test["month"].copy()
    test["month"][::2] = test["month"][::2] % 12 + 2  # the positives' month computed otherwise
    assert run_audit(built) == {**ALL_PASS, "pair_identity": False}


@pytest.mark.parametrize("field", ["fav_cate", "hist_len_bucket"])
def test_planted_user_feature_computed_after_the_target_is_caught(field):
    built = build_samples(clean_interactions(log()), card())
    valid = built.splits["valid"]
    if field == "fav_cate":  # the favourite category counted with the target's category
        valid[field] = np.repeat(valid["cate_id"][::2], 2)
    else:  # the history length counted with the target
        valid[field] = valid[field] + 1
    assert run_audit(built) == {**ALL_PASS, "features_after_target": False}


def test_dien_negatives_from_the_users_history_are_caught():
    built = build_samples(clean_interactions(log(n_items=30)), card("dien"))
    result = run_audit(built, "dien")
    assert result["candidate_in_history"] is False  # negatives in history, positives never
    fixed = build_samples(clean_interactions(log(n_items=30)), card("dien", neg_exclude="reviewed"))
    assert run_audit(fixed, "dien") == ALL_PASS


# --------------------------------------------------------------------------- the CLI
def test_cli_audit_passes_on_the_shipped_synthetic_card(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["stats", "synthetic", "--audit"])
    assert result.exit_code == 0, result.output
    assert "audit: no leak found" in result.output and "LEAK" not in result.output
    assert "cleaning: 0 repeated (user, item) events dropped" in result.output


def test_cli_audit_exits_3_on_a_leak(tmp_path, monkeypatch):
    from ctrbench.data.prepare import card_hash, store_path

    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    cards = tmp_path / "cards" / "datasets"
    cards.mkdir(parents=True)
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    (cards / "leaky.toml").write_text('reader = "synthetic"\n')
    the_card = dataset_card_from_dict({"name": "leaky", "reader": "synthetic"})
    built = build_samples(log(repeats=True), card())
    write_store(store_path(the_card, {}), built.schema, built.splits,
                {**built.meta, "dataset": "leaky", "card_hash": card_hash(the_card),
                 "cleaning": {}})
    result = CliRunner().invoke(main, ["stats", "leaky", "--audit"])
    assert result.exit_code == 3, result.output
    assert "audit: LEAK found by candidate_in_history, candidate_seen_before" in result.output


# --------------------------------------------------------------------------- 16.5 warnings
def _store(tmp_path, tables, the_card, cleaning=None):
    built = build_samples(tables, the_card)
    meta = {**built.meta, "cleaning": cleaning if cleaning is not None else {}}
    return write_store(tmp_path / "store", built.schema, built.splits, meta)


def test_warnings_one_category_ties_short_histories_and_repeats(tmp_path):
    tables = log()
    tables.items["category"] = "<unknown>"
    inter = tables.interactions
    last_two = inter.groupby("user").tail(2).index
    inter.loc[last_two, "ts"] = 1_400_000_000  # valid and test events share a timestamp
    data = _store(tmp_path, tables, card(), {"repeated_user_item_dropped": 73})
    text = "\n".join(sanity_warnings(data))
    assert "only 1 category" in text
    assert "150 of 150 users whose valid and test events share a timestamp" in text
    assert "raw file's line order" in text
    assert "73 repeated (user, item) events dropped" in text
    assert "earlier events" not in text  # histories are long enough here


def test_short_histories_warn(tmp_path):
    tables = log()
    inter = tables.interactions
    keep = np.where(inter["user"].str[1:].astype(int) % 3 == 0, 4, 2)  # events kept per user
    tables.interactions = inter[inter.groupby("user").cumcount() < keep].reset_index(drop=True)
    text = "\n".join(sanity_warnings(_store(tmp_path, tables, card())))
    assert "67% of test positives have fewer than 3 earlier events" in text
    assert "category" not in text and "timestamp" not in text
