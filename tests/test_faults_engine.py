"""Faults found by trying to break the training engine, model cards and configuration overrides
from the outside (a fault hunt, 2026-12-01); each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
import train_fixtures as tf
from click.testing import CliRunner

import ctrbench.engine.train as train_mod
from ctrbench.cards import model_card_from_dict
from ctrbench.cli import main
from ctrbench.data.store import write_store
from ctrbench.engine import threads
from ctrbench.engine.train import train_and_evaluate
from ctrbench.errors import CardError, DataError
from ctrbench.runs import runner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted",
                                 rows=(600, 200, 200))


def tiny_card(**train):
    data = {"name": "tiny", "arch": "tiny_logistic", "params": {"embedding_dim": 4},
            "train": {"lr": 0.05, "batch_size": 64, "eval_batch_size": 256, "epochs": 3,
                      "patience": 2, "l2": 1e-4, **train}}
    return model_card_from_dict(data)


def scripted_auc(monkeypatch, values):
    """Make the trainer's validation AUC follow ``values``, one per epoch."""
    feed = iter(values)
    monkeypatch.setattr(train_mod, "auc", lambda labels, scores: next(feed))


# --------------------------------------------------------------------------- early stopping
def test_patience_0_stops_at_the_first_epoch_that_does_not_improve(planted, monkeypatch):
    # before: `epoch - best_epoch >= 0` held after every epoch, so patience 0 trained exactly
    # one epoch whatever train.epochs said, and the record did not say it was cut short
    scripted_auc(monkeypatch, [0.60, 0.70, 0.80, 0.90])
    out = train_and_evaluate(planted, tiny_card(epochs=4, patience=0), seed=0, device="cpu",
                             progress=False)
    assert [e.epoch for e in out.epochs] == [1, 2, 3, 4] and out.best_epoch == 4
    scripted_auc(monkeypatch, [0.60, 0.70, 0.65, 0.90])
    out = train_and_evaluate(planted, tiny_card(epochs=4, patience=0), seed=0, device="cpu",
                             progress=False)
    assert [e.epoch for e in out.epochs] == [1, 2, 3] and out.best_epoch == 2


def test_patience_above_0_is_unchanged(planted, monkeypatch):
    scripted_auc(monkeypatch, [0.60, 0.70, 0.65, 0.66, 0.90])
    out = train_and_evaluate(planted, tiny_card(epochs=5, patience=2), seed=0, device="cpu",
                             progress=False)
    assert [e.epoch for e in out.epochs] == [1, 2, 3, 4] and out.best_epoch == 2


# --------------------------------------------------------------------------- one-class validation
def one_class_store(path, split: str, label: float):
    rng = np.random.default_rng(0)
    splits = {s: tf._planted_split(rng, n) for s, n in zip(("train", "valid", "test"),
                                                          (600, 200, 200))}
    splits[split]["label"][:] = label
    meta = {"dataset": "oneclass", "card_hash": "c", "data_hash": f"d-{split}-{label}",
            "protocol": "din", "version": 1, "raw_sha256": {}, "code_version": 1}
    return write_store(path, tf.planted_schema(), splits, meta)


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_a_validation_split_with_one_class_fails_before_training(tmp_path, label, monkeypatch):
    # before: every validation AUC was NaN, so "the best epoch" was epoch 1 by accident, early
    # stopping stopped after `patience` epochs, and the record was "finished"
    data = one_class_store(tmp_path / "s", "valid", label)
    steps = []
    monkeypatch.setattr(train_mod, "_train_epoch", lambda *a, **k: steps.append(1))
    with pytest.raises(DataError, match=r"validation split .* one class") as info:
        train_and_evaluate(data, tiny_card(), seed=0, device="cpu", progress=False)
    assert f"all {int(label)}" in str(info.value) and not steps


# --------------------------------------------------------------------------- threads
@pytest.mark.parametrize("text", ["100000", "1025"])
def test_threads_beyond_the_cap_are_refused(text):
    # before: `--threads 100000` was handed to torch.set_num_threads: segmentation fault (139)
    with pytest.raises(ValueError, match="at most 1024"):
        threads.parse_threads(text)
    assert threads.parse_threads("1024") == 1024


# --------------------------------------------------------------------------- precedence
def test_set_wins_over_a_config_files_per_model_table(tmp_path):
    # before: `--set train.lr=0.5` was silently ignored for din when the --config file had
    # [models.din.train] lr (the file's per-model table was merged over every --set item)
    config = tmp_path / "over.toml"
    config.write_text("[train]\nl2 = 0.2\n[models.din.train]\nlr = 0.01\nbatch_size = 64\n"
                      "[models.din.params]\ndropout = 0.3\n")
    overrides = runner.load_overrides(config, ["train.lr=0.5", "din:train.batch_size=32"])
    din, lr = runner.resolve_cards("din,lr", overrides)
    assert (din.train.lr, din.train.batch_size, din.params["dropout"]) == (0.5, 32, 0.3)
    assert (din.train.l2, lr.train.l2, lr.train.lr) == (0.2, 0.2, 0.5)
    (din,) = runner.resolve_cards("din", runner.load_overrides(config, ["params.dropout=0.1"]))
    assert din.params["dropout"] == 0.1
    # within one layer the per-model value stays more specific than the common one
    both = runner.load_overrides(config, ["din:train.lr=0.02", "train.lr=0.5"])
    din, lr = runner.resolve_cards("din,lr", both)
    assert (din.train.lr, lr.train.lr) == (0.02, 0.5)


# --------------------------------------------------------------------------- cards
@pytest.fixture
def cards(tmp_path, monkeypatch):
    """$CTRBENCH_CARDS holding one card that extends a card that does not exist."""
    tf.write_cards(tmp_path / "cards", {"orphan": 'extends = "no_such_card"\n'})
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cards"


def test_a_card_extending_a_missing_card_breaks_nothing_else(cards):
    # before: "Unknown model 'no_such_card'" (not a CardError) stopped `list models` before it
    # listed anything and every group selection (`-m baselines`), like a TOML error did (D16)
    result = CliRunner().invoke(main, ["list", "models"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "\ndin " in result.stdout and "\nlr " in result.stdout
    assert "orphan" in result.output and "no_such_card" in result.output
    names = [c.name for c in runner.resolve_cards("baselines", runner.load_overrides())]
    assert names == ["dcn", "deepfm", "dien", "din", "lr", "wide_deep", "xdeepfm"]
    with pytest.raises(CardError, match="'orphan' extends 'no_such_card'"):
        runner.resolve_cards("orphan", runner.load_overrides())


def test_a_card_with_an_unknown_architecture_is_named(cards):
    # before: "Unknown architecture 'nosuch'." without the card that asks for it
    tf.write_cards(cards, {"odd": 'arch = "nosuch"\n'})
    with pytest.raises(CardError, match=r"model card 'odd' \(.*odd.toml\): Unknown arch"):
        runner.resolve_cards("odd", runner.load_overrides())


# --------------------------------------------------------------------------- divergence
def test_non_finite_validation_scores_are_not_called_a_nan_loss(planted, monkeypatch):
    # before: "diverged: loss nan at epoch 1, step 0": no loss was NaN and there is no step 0
    real = train_mod.predict

    def nan_scores(*args, **kwargs):
        scores = real(*args, **kwargs).clone()
        scores[3] = float("inf")
        return scores

    monkeypatch.setattr(train_mod, "predict", nan_scores)
    with pytest.raises(train_mod.TrainingDiverged, match="validation scores after epoch 1 "
                                                         "are not all finite") as info:
        train_and_evaluate(planted, tiny_card(), seed=0, device="cpu", progress=False)
    assert "step 0" not in str(info.value) and info.value.epoch == 1


@pytest.mark.parametrize("items", [["params.sparse=true"],
                                   ["params.sparse=false", "train.optimizer=lazy_adam"]])
def test_sparse_against_the_optimizer_is_refused_when_resolved(items):
    # before: resolved and planned; each seed then failed at training time (a failed record
    # per seed, after the data were prepared) with the same CardError
    with pytest.raises(CardError, match=r"conflicts with train\.optimizer"):
        runner.resolve_cards("lr", runner.load_overrides(None, items))


def test_one_configuration_spelled_two_ways_has_one_run_id():
    """``--set params.dropout=0`` and ``=0.0`` gave two run ids, so the second run was refused
    as "another configuration" and the report kept the two apart."""
    from ctrbench.cards import config_hash, load_model_card, model_names
    from ctrbench.runs.runner import load_overrides, resolve_cards

    ids = {config_hash(resolve_cards(["din"], load_overrides(None, [f"din:{item}"]))[0]
                       .resolved()) for item in ("params.dropout=0", "params.dropout=0.0")}
    assert len(ids) == 1
    for name in model_names():  # no built-in card changes its run id
        assert resolve_cards([name])[0].resolved() == load_model_card(name).resolved()
