"""Dataset statistics on a hand-made store (numbers checked by hand) and the stats/generate CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ctrbench.cards import dataset_card_from_dict
from ctrbench.cli import main
from ctrbench.data.describe import describe, format_stats
from ctrbench.data.store import write_store
from ctrbench.schema import FieldSpec, Schema

NAN = float("nan")


def _split(pos_items, neg_items, cates, hist_items, hist_cates, hist_len, gaps, oracle):
    """Rows: each sample's positive then its negative (as the builder writes them)."""
    n = len(pos_items)
    item = np.empty(2 * n, np.int32)
    item[0::2], item[1::2] = pos_items, neg_items
    cate = np.repeat(np.asarray(cates, np.int32), 1).reshape(n, 2).ravel()
    return {
        "item_id": item, "cate_id": cate,
        "hist_item_id": np.repeat(np.asarray(hist_items, np.int32), 2, axis=0),
        "hist_cate_id": np.repeat(np.asarray(hist_cates, np.int32), 2, axis=0),
        "user_id": np.repeat(np.arange(2, 2 + n, dtype=np.int32), 2),
        "hist_len": np.repeat(np.asarray(hist_len, np.int32), 2),
        "label": np.tile(np.array([1, 0], np.float32), n),
        "group": np.repeat(np.arange(n, dtype=np.int64), 2),
        "gap_days": np.repeat(np.asarray(gaps, np.float32), 2),
        "oracle": np.asarray(oracle, np.float32),
    }


@pytest.fixture
def tiny_store(tmp_path):
    schema = Schema((FieldSpec("item_id", "item", "item", 10),
                     FieldSpec("cate_id", "item", "cate", 6),
                     FieldSpec("hist_item_id", "behavior", "item", 10),
                     FieldSpec("hist_cate_id", "behavior", "cate", 6),
                     FieldSpec("user_id", "user", "user_id", 5)), max_len=3)
    # sample A: item 5 is in its history, category 2 too, 40 days inactive
    # sample B: item 4 is new, category 3 is not, 10 days
    # sample C: OOV item/category (id 1) never match, even an OOV history entry; no gap known
    test = _split(pos_items=[5, 4, 1], neg_items=[7, 9, 2],
                  cates=[[2, 3], [3, 5], [1, 2]],
                  hist_items=[[5, 3, 0], [2, 6, 8], [1, 2, 0]],
                  hist_cates=[[2, 4, 0], [3, 2, 2], [1, 5, 0]],
                  hist_len=[2, 3, 2], gaps=[40, 10, NAN],
                  oracle=[0.9, 0.1, 0.2, 0.3, 0.6, 0.7])
    # train positives: item 4 twice, item 7 once (the popularity baseline's counts)
    train = _split(pos_items=[4, 4, 7], neg_items=[5, 3, 2], cates=[[3, 2], [3, 4], [3, 2]],
                   hist_items=[[2, 0, 0]] * 3, hist_cates=[[3, 0, 0]] * 3, hist_len=[1, 1, 1],
                   gaps=[1, 2, 3], oracle=[0.5] * 6)
    meta = {"protocol": "din",
            "counts": {"users": 3, "items": 8, "categories": 4, "interactions": 12}}
    return write_store(tmp_path / "store", schema, {"train": train, "valid": test, "test": test},
                       meta)


def test_describe_matches_hand_counts(tiny_store):
    card = dataset_card_from_dict({"name": "tiny", "reader": "synthetic",
                                   "expected": {"users": 3, "oracle_auc_test": 0.5,
                                                "oracle_auc_tset": 0.5}})
    stats = describe(tiny_store, card)
    assert stats.counts == {"users": 3, "items": 8, "categories": 4, "interactions": 12}
    test = stats.splits["test"]
    assert test["rows"] == 6 and test["positive_rate"] == 0.5
    assert (test["hist_len_min"], test["hist_len_median"], test["hist_len_max"]) == (2, 2, 3)
    assert test["hist_len_mean"] == pytest.approx(7 / 3)
    assert test["full_history_share"] == pytest.approx(1 / 3)
    assert test["new_item_share"] == pytest.approx(2 / 3)  # B and C
    assert test["new_cate_share"] == pytest.approx(1 / 3)  # C only
    assert test["inactive_share"] == pytest.approx(1 / 2)  # A of {A, B}; C has no gap
    assert test["oracle_auc"] == pytest.approx(6 / 9)
    # popularity: positives score [0, 2, 0], negatives [1, 0, 0] -> (0 + .5 + .5 + 3 + 0 + 1) / 9
    assert test["popularity_auc"] == pytest.approx(5 / 9)
    assert math.isnan(stats.splits["train"]["popularity_auc"])
    assert stats.splits["train"]["new_item_share"] == 1.0
    assert stats.values()["oracle_auc_test"] == pytest.approx(6 / 9)

    text = format_stats(stats)
    assert "3 [3]" in text  # users, with the card's expectation
    assert "0.6667 [0.5000]" in text
    assert "inactive > 30 days" in text
    assert "no measured statistic: oracle_auc_tset" in text  # a typo in the card is shown


# --------------------------------------------------------------------------- CLI
TINY_CARD = """
reader = "synthetic"
protocol = "din"
[reader_params]
seed = 5
n_users = 300
n_items = 200
n_meta_items = 220
n_cates = 10
mean_events = 9.0
max_events = 30
[fields]
user = ["user_id", "occupation", "age"]
context = ["month", "gap_bucket"]
[expected]
users = 300
"""


@pytest.fixture
def cards(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    root = tmp_path / "cards"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "synthetic-tiny.toml").write_text(TINY_CARD)
    (root / "datasets" / "downloaded.toml").write_text(
        'reader = "amazon"\n[[sources]]\nrole = "reviews"\nfile = "r.json.gz"\n')
    monkeypatch.setenv("CTRBENCH_CARDS", str(root))
    return root


def test_cli_stats_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["stats", "synthetic"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "users" in out and "3,000 [3,000]" in out
    assert "oracle AUC" in out and "popularity AUC" in out
    oracle_row = next(line for line in out.splitlines() if line.startswith("oracle AUC"))
    assert float(oracle_row.split()[-2 if "[" in oracle_row else -1].strip("[]")) > 0.8


def test_cli_stats_tiny_and_unknown(cards):
    runner = CliRunner()
    result = runner.invoke(main, ["stats", "synthetic-tiny", "--format", "github"])
    assert result.exit_code == 0, result.output
    assert "| users" in result.stdout and "300 [300]" in result.stdout
    missing = runner.invoke(main, ["stats", "synthetic-tnyi"])
    assert missing.exit_code == 1
    assert "Did you mean: synthetic-tiny" in missing.output


def test_cli_generate(cards, tmp_path):
    runner = CliRunner()
    out = tmp_path / "raw"
    result = runner.invoke(main, ["generate", "synthetic-tiny", "--seed", "9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "params.json").read_text())
    assert written["params"]["seed"] == 9 and written["users"] == 300
    assert f"wrote {written['reviews']:,} reviews" in result.stdout
    again = runner.invoke(main, ["generate", "synthetic-tiny", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output
    real = runner.invoke(main, ["generate", "downloaded", "--out", str(tmp_path / "x")])
    assert real.exit_code == 1 and "only synthetic datasets" in real.output
