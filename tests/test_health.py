"""Training health: dead ReLU fractions, the degenerate and not_converged flags, and their place
in the trainer's outcome and the run record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import train_fixtures as tf
from torch import nn

from ctrbench.cards import load_model_card
from ctrbench.engine.health import dead_relu_fractions, health_flags
from ctrbench.engine.train import train_and_evaluate
from ctrbench.record import EpochRow

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.second = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, batch):
        return self.second(self.first(batch["x"]))


def test_dead_units_are_those_zero_on_every_row():
    model = TwoLayers().train()
    with torch.no_grad():
        model.first[0].weight.zero_()
        model.first[0].bias.copy_(torch.tensor([-1.0, 1.0, -2.0, 0.5]))  # units 0, 2 dead
        model.second[0].weight.fill_(1.0)
        model.second[0].bias.copy_(torch.tensor([0.0, -10.0]))  # unit 1 dead
    fractions = dead_relu_fractions(model, {"x": torch.randn(50, 3)})
    assert fractions == {"first.1": 0.5, "second.1": 0.5}
    assert model.training  # the mode is restored
    with torch.no_grad():
        model.first[0].weight[0, 0] = 5.0  # unit 0 now fires on rows with x0 > 0.2
    assert dead_relu_fractions(model, {"x": torch.randn(50, 3)})["first.1"] == 0.25


def rows(*aucs: float) -> list[EpochRow]:
    return [EpochRow(epoch=k + 1, train_loss=0.6, train_aux_loss=0.0, valid_auc=a,
                     valid_logloss=0.6, train_seconds=1, eval_seconds=1, train_samples_per_s=1,
                     eval_samples_per_s=1, peak_memory_mb=1) for k, a in enumerate(aucs)]


def test_flags():
    healthy = health_flags(rows(0.6, 0.7, 0.69), 2, 10, 0.7, np.array([0.1, 0.9]))
    assert healthy == {"degenerate": False, "degenerate_reasons": [], "not_converged": False}
    low = health_flags(rows(0.6, 0.7), 2, 10, 0.55, np.array([0.1, 0.9]))
    assert low["degenerate"] and "test AUC" in low["degenerate_reasons"][0]
    constant = health_flags(rows(0.6, 0.7), 2, 10, 0.7, np.full(5, 0.5))
    assert constant["degenerate_reasons"] == ["constant test scores"]
    flat = health_flags(rows(0.6, 0.6, 0.5), 1, 10, 0.7, np.array([0.1, 0.9]))
    assert flat["degenerate_reasons"] == ["validation AUC never above its first epoch"]
    one_epoch = health_flags(rows(0.6), 1, 10)  # undecidable with one epoch, no test
    assert not one_epoch["degenerate"]
    assert health_flags(rows(0.6, 0.7, 0.8), 3, 3)["not_converged"]
    assert not health_flags(rows(0.6, 0.7, 0.8), 3, 4)["not_converged"]
    assert health_flags(rows(0.6, 0.7), 2, 10, float("nan"))["degenerate"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "small", rows=(256, 64, 64))


def test_outcome_carries_init_rule_dead_units_and_flags(small):
    card = load_model_card("wide_deep").with_overrides(
        {"train": {"epochs": 2, "patience": 2, "batch_size": 64, "init": "paper"}})
    out = train_and_evaluate(small, card, seed=0, device="cpu", progress=False)
    assert out.init == "paper"
    dead = out.health["dead_relu"]
    assert set(dead) == {"init", "best"}
    assert set(dead["init"]) == {"deep.net.1", "deep.net.4"} == set(dead["best"])
    assert all(0.0 <= v <= 1.0 for v in dead["init"].values())
    assert out.health["not_converged"] == (out.best_epoch == 2)
    assert isinstance(out.health["degenerate"], bool)
