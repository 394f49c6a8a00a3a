"""The ``pop`` card: item popularity, fitted from training positives without optimiser steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import train_fixtures as tf
from click.testing import CliRunner

from ctrbench.analysis.metrics import auc
from ctrbench.cards import load_model_card, model_card_from_dict, resolve_model_spec
from ctrbench.cli import main
from ctrbench.data.describe import popularity_scores
from ctrbench.engine.train import train_and_evaluate
from ctrbench.errors import CardError
from ctrbench.models import build_model, count_parameters
from ctrbench.record import read_record, read_scores, record_path
from ctrbench.schema import LABEL, reference_schema
from ctrbench.tune.space import parse_search_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted")


def pop_card(**train):
    return model_card_from_dict({"name": "pop", "arch": "pop",
                                 "train": {"epochs": 5, "patience": 2, **train}})


def test_pop_card_is_in_every_table2_run_and_not_a_baseline():
    card = load_model_card("pop")
    assert card.arch == "pop" and "pop" in resolve_model_spec("table2")
    # never the leaderboard's "best baseline" reference: a floor, not one of the paper's models
    assert "pop" not in resolve_model_spec("baselines")
    with pytest.raises(CardError, match="nothing to tune"):
        parse_search_space(card)


def test_scores_rank_items_by_training_positives(planted):
    model = build_model("pop", planted.schema, {})
    assert count_parameters(model) == 0
    train = planted.tensors("train")
    model.fit_statistics(train)
    test = planted.split("test", mmap=False)
    with torch.no_grad():
        logits = model({"item_id": torch.from_numpy(test["item_id"])}).numpy()
    expected = popularity_scores(planted.split("train")["item_id"],
                                 planted.split("train")[LABEL], test["item_id"])
    # the same order as the count (ties exactly where the counts tie)
    order = np.argsort(expected, kind="stable")
    assert np.all(np.diff(logits[order]) >= 0)
    assert np.array_equal(np.unique(logits).size, np.unique(expected).size)
    assert auc(test[LABEL], logits) == pytest.approx(auc(test[LABEL], expected), abs=1e-12)


def test_probabilities_stay_distinct_in_float32_for_large_counts():
    n = 2_000_000
    schema = reference_schema(n_items=n + 2, n_cates=4, max_len=3)
    model = build_model("pop", schema, {})
    model.counts.copy_(torch.arange(n + 2, dtype=torch.float64))  # item k was clicked k times
    model.log_max.fill_(np.log1p(n + 1))
    with torch.no_grad():
        probs = torch.sigmoid(model({"item_id": torch.arange(n + 2)})).numpy()
    assert probs.dtype == np.float32
    assert np.all(np.diff(probs) > 0)  # every extra click raises the score, even at 2 million
    assert probs[-1] == pytest.approx(0.5) and probs[0] > 0


def test_trainer_fits_once_with_one_epoch_row(planted):
    out = train_and_evaluate(planted, pop_card(lr=0.5), seed=3, device="cpu", progress=False)
    assert len(out.epochs) == 1 and out.best_epoch == 1 and out.n_parameters == 0
    row = out.epochs[0]
    assert row.epoch == 1 and row.train_aux_loss == 0.0 and row.train_seconds >= 0
    assert np.isfinite(row.train_loss) and row.train_loss > 0
    assert out.valid["auc"] == row.valid_auc > 0.5
    train, test = planted.split("train"), planted.split("test")
    expected = auc(test[LABEL], popularity_scores(train["item_id"], train[LABEL],
                                                  test["item_id"]))
    assert out.test["auc"] == pytest.approx(expected, abs=1e-12)
    again = train_and_evaluate(planted, pop_card(), seed=9, device="cpu", progress=False)
    np.testing.assert_array_equal(again.test_scores["scores"], out.test_scores["scores"])


def test_cli_runs_pop_on_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    done = CliRunner().invoke(main, ["run", "-m", "pop", "-d", "synthetic", "--seeds", "1",
                                     "--device", "cpu", "-q", "--results", str(results)])
    assert done.exit_code == 0, done.output
    path = record_path(results, "synthetic", "pop", 0)
    record = read_record(path)
    assert record.status == "finished" and record.best_epoch == 1 and len(record.epochs) == 1
    assert record.n_parameters == 0
    # the card's expected popularity AUC (ctrbench stats) is what pop scores
    assert record.test["auc"] == pytest.approx(0.7747, abs=5e-5)
    assert read_scores(path)["scores"].dtype == np.float32
