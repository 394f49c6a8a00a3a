"""Cards, the generic registry and the feature schema (the contracts between the parts)."""

from __future__ import annotations

import pytest
import torch

from ctrbench.cards import (
    TrainConfig,
    config_hash,
    load_dataset_card,
    load_model_card,
    model_names,
    parse_set_option,
    resolve_model_spec,
)
from ctrbench.errors import CardError, UnknownNameError
from ctrbench.registry import Registry
from ctrbench.schema import FieldSpec, Schema, history_mask, random_batch, reference_schema


@pytest.fixture
def card_root(tmp_path, monkeypatch):
    """An isolated card directory searched before the built-in cards."""
    (tmp_path / "models").mkdir()
    (tmp_path / "datasets").mkdir()
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path))
    return tmp_path


def test_registry_duplicate_and_did_you_mean():
    reg: Registry[int] = Registry("model")
    reg.add("din", 1)
    reg.add("dien", 2)
    with pytest.raises(ValueError):
        reg.add("din", 3)
    with pytest.raises(UnknownNameError) as err:
        reg.get("dn")
    assert "Did you mean: din" in str(err.value)
    assert "dien" in str(err.value)  # the list of what exists
    assert reg.select("di*") == ["dien", "din"]


def test_model_card_extends_and_unknown_key(card_root):
    (card_root / "models" / "base_x.toml").write_text(
        'arch = "lr"\ngroups = ["g"]\n[params]\nembedding_dim = 8\n[train]\nlr = 0.01\n')
    (card_root / "models" / "child_x.toml").write_text(
        'extends = "base_x"\n[params]\nfoo = 1\n[train]\nbatch_size = 64\n')
    card = load_model_card("child_x")
    assert card.arch == "lr"
    assert card.params == {"embedding_dim": 8, "foo": 1}
    assert card.train.lr == 0.01 and card.train.batch_size == 64
    assert card.groups == ()  # groups are not inherited
    (card_root / "models" / "bad_x.toml").write_text('arch = "lr"\n[train]\nbatchsize = 64\n')
    with pytest.raises(CardError, match=r"batchsize.*did you mean 'batch_size'"):
        load_model_card("bad_x")


def test_model_spec_groups_globs_and_unknown(card_root):
    for name, groups in [("aa_one", '["grp"]'), ("aa_two", '["grp"]'), ("bb", "[]")]:
        (card_root / "models" / f"{name}.toml").write_text(f'arch = "lr"\ngroups = {groups}\n')
    assert resolve_model_spec("grp") == ["aa_one", "aa_two"]
    assert resolve_model_spec("aa_*,bb,aa_one") == ["aa_one", "aa_two", "bb"]
    assert "all" not in model_names() and "aa_one" in resolve_model_spec("all")
    with pytest.raises(UnknownNameError, match="Did you mean"):
        resolve_model_spec("aa_onee")


def test_abstract_cards_are_not_listed():
    assert all(not n.startswith("_") for n in model_names())


def test_overrides_and_set_option():
    overrides = parse_set_option(["train.lr=0.5", "params.use_iuim=false", "params.name=abc"])
    assert overrides == {"train": {"lr": 0.5}, "params": {"use_iuim": False, "name": "abc"}}
    with pytest.raises(CardError):
        parse_set_option(["no-equals-sign"])
    with pytest.raises(CardError):
        TrainConfig.from_dict("x", {"optimiser": "adam"})


def test_dataset_card_unknown_key(card_root):
    (card_root / "datasets" / "mine.toml").write_text('reader = "table"\nprotocl = "din"\n')
    with pytest.raises(CardError, match="protocl"):
        load_dataset_card("mine")
    with pytest.raises(UnknownNameError, match="Unknown dataset"):
        load_dataset_card("no-such-dataset")


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_schema_contract():
    schema = reference_schema(n_items=50, n_cates=5)
    assert Schema.from_dict(schema.to_dict()) == schema
    assert schema.vocab_sizes["item"] == 50 and schema.has_neg_history
    with pytest.raises(ValueError):  # a behaviour field must share its item field's vocabulary
        Schema((FieldSpec("item_id", "item", "item", 5),
                FieldSpec("hist_item_id", "behavior", "other", 5)))
    batch = random_batch(schema, 16, torch.Generator().manual_seed(0))
    mask = history_mask(batch, schema.max_len)
    assert torch.all(batch["hist_item_id"][~mask] == 0)
    assert torch.all(batch["hist_item_id"][mask] >= 2)
