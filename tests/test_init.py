"""Initialisation rules (``train.init``): what each sets, on every architecture; the rule and
the health figures in run records; version-1 records still load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ctrbench.cards import TrainConfig, load_model_card, resolve_model_spec
from ctrbench.errors import CardError
from ctrbench.models import ARCHITECTURES, build_model
from ctrbench.models.init import INIT_RULES, apply_init, dense_weights
from ctrbench.record import SCHEMA_VERSION, RunRecord, read_record, write_record
from ctrbench.schema import random_batch, reference_schema

SCHEMA = reference_schema(n_items=200, n_cates=12, max_len=8,
                          user_fields={"user_id": 30, "segment": 6, "tenure": 5},
                          context_fields={"weekday": 9, "hour": 6})
FIXTURES = Path(__file__).parent / "fixtures" / "records" / "runs"


def built(name: str, rule: str, seed: int = 0) -> nn.Module:
    card = load_model_card(name)
    torch.manual_seed(seed)
    return apply_init(build_model(card.arch, SCHEMA, dict(card.params)), rule)


def test_paper_rule_sets_every_dense_weight_to_truncated_normal_002_and_zero_biases():
    model = built("mian", "paper")
    weights = [p for _, _, p, is_bias in dense_weights(model) if not is_bias]
    biases = [p for _, _, p, is_bias in dense_weights(model) if is_bias]
    names = {n.split(".")[0] for n, *_ in dense_weights(model)}
    assert {"transformer", "gim", "mlp"} <= names  # q/k/v, FFN, GIM projections, the head
    flat = torch.cat([w.detach().flatten() for w in weights])
    assert float(flat.abs().max()) <= 0.04 + 1e-7  # truncated at 2 std
    assert 0.015 < float(flat.std()) < 0.02  # TN(0, 0.02) cut at 2 std has std ~0.0176
    assert all(float(b.detach().abs().max()) == 0.0 for b in biases)
    assert torch.equal(model.transformer.norm1.weight.detach(), torch.ones(32))  # LN untouched


def test_xavier_rule_uses_glorot_bounds_per_gate_and_zero_biases():
    model = built("dien", "xavier")
    for name, module, p, is_bias in dense_weights(model):
        if is_bias:
            assert float(p.detach().abs().max()) == 0.0, name
            continue
        rows = module.hidden_size if isinstance(module, nn.RNNBase) else p.shape[0]
        bound = math.sqrt(6 / (rows + p.shape[1]))
        assert float(p.detach().abs().max()) <= bound + 1e-7, name
        assert float(p.detach().abs().max()) > 0.8 * bound, name  # the full range is used


def test_torch_default_dense_changes_nothing():
    card = load_model_card("mian")
    torch.manual_seed(0)
    plain = build_model(card.arch, SCHEMA, dict(card.params))
    ruled = built("mian", "torch_default_dense")
    for (name, a), b in zip(plain.state_dict().items(), ruled.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("rule", INIT_RULES)
def test_every_paper_card_builds_and_scores_under_every_rule(rule):
    batch = random_batch(SCHEMA, 8, torch.Generator().manual_seed(1))
    for name in resolve_model_spec("table2"):
        model = built(name, rule).eval()
        with torch.no_grad():
            assert torch.isfinite(model(batch)).all(), (name, rule)


def test_unknown_rule_is_a_card_error():
    with pytest.raises(CardError, match=r"init = 'he'"):
        TrainConfig(init="he")
    with pytest.raises(CardError, match=r"train\.init"):
        apply_init(nn.Linear(2, 2), "he")


def test_paper_cards_name_their_rule():
    for name in resolve_model_spec("table2"):
        card = load_model_card(name)
        if ARCHITECTURES.get(card.arch).trainable:  # pop: no dense layers, [train] ignored
            assert card.train.init == "xavier", name
    assert load_model_card("mian").with_overrides(
        {"train": {"init": "paper"}}).train.init == "paper"


def test_version_1_records_load_with_the_old_rule_and_no_health(tmp_path):
    # a version-1 record: the fixture as written before `init` and `health` existed
    old = json.loads((FIXTURES / "electronics-dien" / "my_model" / "seed-0.json").read_text())
    for key in ("init", "health"):
        old.pop(key, None)
    old["schema_version"] = 1
    old["model_config"]["train"].pop("init", None)
    path = tmp_path / "v1" / "seed-0.json"
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    record = read_record(path)
    assert record.init == "torch_default_dense" and record.health == {}
    data = record.to_dict()
    data.update(init="paper", health={"degenerate": True}, schema_version=SCHEMA_VERSION)
    write_record(tmp_path / "seed-0.json", RunRecord.from_dict(data))
    again = read_record(tmp_path / "seed-0.json")
    assert again.init == "paper" and again.health == {"degenerate": True}
    assert again.schema_version == 2
