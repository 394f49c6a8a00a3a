"""``train.precision``: which forward passes run under bf16 autocast, the card check, and run ids.

``auto`` (the default) keeps what the trainer always did: bf16 autocast on CUDA, float32 on the
CPU. ``bf16`` also autocasts on the CPU (an opt-in for matmul-heavy models on CPUs with bf16
units, docs/performance.md §3); ``float32`` never autocasts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import train_fixtures as tf
from torch import nn

from ctrbench.cards import load_model_card, model_card_from_dict, resolve_model_spec
from ctrbench.engine.devices import PRECISIONS, autocast
from ctrbench.engine.splits import predict
from ctrbench.engine.train import (
    SplitTensors,
    TrainStep,
    build_for_training,
    model_inputs,
    train_and_evaluate,
)
from ctrbench.errors import CardError
from ctrbench.runs.runner import config_hash
from ctrbench.validate import PRECISIONS as CHECKED_PRECISIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "small", rows=(512, 128, 300))


def test_the_card_check_and_the_trainer_know_the_same_precisions():
    assert CHECKED_PRECISIONS == PRECISIONS


@pytest.mark.parametrize("device,precision,enabled", [
    ("cpu", "auto", False), ("cpu", "float32", False), ("cpu", "bf16", True)])
def test_autocast_on_the_cpu_only_when_asked(device, precision, enabled):
    with autocast(torch.device(device), precision):
        assert torch.is_autocast_enabled("cpu") is enabled
        out = nn.Linear(4, 3)(torch.ones(2, 4))
    assert out.dtype == (torch.bfloat16 if enabled else torch.float32)


def test_autocast_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="fp16"):
        autocast(CPU, "fp16")


def test_a_bad_precision_in_a_card_names_the_key():
    with pytest.raises(CardError, match=r"precision = 'fp16'.*'auto', 'float32', 'bf16'"):
        load_model_card("lr").with_overrides({"train": {"precision": "fp16"}})


def test_the_default_keeps_old_run_ids_and_bf16_gets_its_own():
    card = load_model_card("xdeepfm")
    assert "precision" not in card.resolved()["train"]  # records made before the key exist
    bf16 = card.with_overrides({"train": {"precision": "bf16"}})
    f32 = card.with_overrides({"train": {"precision": "float32"}})
    assert bf16.resolved()["train"]["precision"] == "bf16"
    hashes = {config_hash(c.resolved()) for c in (card, bf16, f32)}
    assert len(hashes) == 3
    for c in (card, bf16):  # a Slurm task rebuilds its card from the resolved one
        rebuilt = model_card_from_dict(c.resolved())
        assert rebuilt.train.precision == c.train.precision
        assert rebuilt.resolved() == c.resolved()


def _linear_output_dtypes(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("name", [n for n in resolve_model_spec("table2") if n != "pop"])
@pytest.mark.parametrize("precision", ["bf16", "float32"])
def test_every_paper_model_steps_and_predicts_at_either_precision_on_the_cpu(small, name,
                                                                             precision):
    card = load_model_card(name).with_overrides(
        {"train": {"precision": precision, "batch_size": 64}})
    torch.manual_seed(0)
    model = build_for_training(card, small.schema)
    seen = _linear_output_dtypes(model)
    split = SplitTensors(small, "train", CPU, model_inputs(small.schema))
    step = TrainStep(model, card.train, CPU)
    before = [p.detach().clone() for p in model.parameters()]
    for start in range(0, 192, 64):
        batch, label = split.take(torch.arange(start, start + 64))
        loss, _, _ = step(batch, label)
        assert torch.isfinite(loss)
    step.close()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay
    if seen:  # every model with a dense layer ran it at the card's precision
        want = torch.bfloat16 if precision == "bf16" else torch.float32
        assert set(seen) == {want}
    probs = predict(model, split, 256, card.train.precision)
    assert probs.dtype == torch.float32 and probs.shape == (split.rows,)
    assert torch.all((probs > 0) & (probs < 1))


def test_a_bf16_run_learns_about_as_well_as_float32(tmp_path):
    """The planted signal is learnt in bf16 too (xDeepFM, the model bf16 is for); its scores
    differ from float32's, so the two runs are two configurations."""
    data = tf.make_planted_store(tmp_path / "planted", rows=(4000, 400, 1000))
    card = load_model_card("xdeepfm").with_overrides(
        {"train": {"epochs": 3, "batch_size": 64, "lr": 0.01}})
    outs = {p: train_and_evaluate(data, card.with_overrides({"train": {"precision": p}}),
                                  seed=3, device="cpu", progress=False)
            for p in ("float32", "bf16")}
    assert not np.array_equal(outs["float32"].test_scores["scores"],
                              outs["bf16"].test_scores["scores"])
    # float32 0.771, bf16 0.769 here; the oracle 0.835, a constant 0.5
    assert outs["bf16"].test["auc"] > 0.72
    assert abs(outs["bf16"].test["auc"] - outs["float32"].test["auc"]) < 0.02
