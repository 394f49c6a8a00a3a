"""Typed model configs (ctrbench/models/config.py): one per architecture, built from a card's
[params], every value checked with the key's name, unknown keys rejected at resolve time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from ctrbench.cards import load_model_card, load_raw_card, model_card_from_dict, model_names
from ctrbench.cli import main
from ctrbench.errors import CardError
from ctrbench.models import (
    ARCHITECTURES,
    AttentionWeights,
    ModelConfig,
    build_model,
    config_of,
    count_parameters,
)
from ctrbench.runs import runner
from ctrbench.schema import reference_schema
from ctrbench.tune.space import parse_search_space

BUILT_IN = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien", "mian", "pop")
SCHEMA = reference_schema(n_items=60, n_cates=6, max_len=8)


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_every_architecture_has_a_frozen_typed_config(arch):
    config = config_of(arch)
    assert issubclass(config, ModelConfig) and dataclasses.is_dataclass(config)
    assert config.__dataclass_params__.frozen
    assert {"embedding_dim", "sparse"} <= set(config.names())  # the shared interface
    for f in dataclasses.fields(config):
        assert "rule" in f.metadata, f"{arch}.{f.name} has no rule"
        # every default passes its own rule unchanged
        assert f.metadata["rule"].check(f.default) == f.default, f"{arch}.{f.name}"
    defaults = config.from_params(arch, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.embedding_dim = 3


def test_built_in_architectures_each_have_their_own_config():
    assert set(BUILT_IN) <= set(ARCHITECTURES.names())
    own = [config_of(a) for a in BUILT_IN if a != "pop"]  # pop takes only the shared two
    assert len(set(own)) == len(own) and ModelConfig not in own
    assert config_of("pop") is ModelConfig


@pytest.mark.parametrize("name", model_names())
def test_every_card_builds_its_config_and_the_model_keeps_it(name):
    card = load_model_card(name)
    config = config_of(card.arch).from_params(f"model {name!r}", card.params)
    for key, value in card.params.items():  # card values survive (lists become tuples)
        got = getattr(config, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert config.as_params() == {**config_of(card.arch)().as_params(), **card.params}
    model = build_model(card.arch, SCHEMA, card.params)
    assert model.config == config
    # a ready config builds the same model (same parameters under the same seed)
    torch.manual_seed(0)
    a = build_model(card.arch, SCHEMA, config)
    torch.manual_seed(0)
    b = build_model(card.arch, SCHEMA, card.params)
    assert count_parameters(a) == count_parameters(b)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name", [n for n in model_names() if load_model_card(n).search])
def test_every_search_choice_passes_the_config_rules(name):
    card = load_model_card(name)
    config = config_of(card.arch)
    try:
        space = parse_search_space(card)
    except CardError:  # nothing to tune for this architecture (pop)
        return
    for dim in space:
        section, _, key = dim.key.partition(".")
        if section != "params":
            continue
        values = dim.choices if dim.type == "categorical" else (dim.low, dim.high)
        for value in values:  # every choice, or both ends of a range, is a valid value
            config.from_params(f"model {name!r} [search]", {**card.params, key: value})


@pytest.mark.parametrize(("arch", "bad", "message"), [
    ("mian", {"dropout": "high"}, r"dropout must be a number in \[0, 1\), got 'high'"),
    ("mian", {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ("mian", {"dropout": True}, "dropout must be a number"),
    ("mian", {"hidden_units": [0]}, r"hidden_units must be a list of positive integers, got \[0\]"),
    ("mian", {"hidden_units": 32}, "hidden_units must be a list of positive integers"),
    ("mian", {"hidden_units": "32"}, "hidden_units must be a list of positive integers"),
    ("mian", {"hidden_units": [32, 8.5]}, "hidden_units must be a list of positive integers"),
    ("mian", {"use_gim": "false"}, "use_gim must be true or false"),
    ("mian", {"use_gim": 0}, "use_gim must be true or false"),
    ("mian", {"heads": 2.0}, "heads must be a positive integer"),
    ("mian", {"heads": True}, "heads must be a positive integer"),
    ("mian", {"transformer": "postln"}, "transformer must be one of 'pre_ln', 'post_ln'"),
    ("mian", {"ibim_score": "shared_"}, "ibim_score must be one of"),
    ("mian", {"init_std": 0.0}, r"init_std must be a number in \(0, inf\)"),
    ("lr", {"embedding_dim": 0}, "embedding_dim must be a positive integer"),
    ("dien", {"aux_weight": -0.5}, r"aux_weight must be a number in \[0, inf\)"),
    ("din", {"attention_hidden": []}, "attention_hidden must be a list of positive integers "
                                      r"\(at least one\)"),
    ("din", {"activation": "gelu"}, "activation must be one of 'relu', 'prelu', 'dice'"),
    ("dcn", {"linear": "yes"}, "linear must be true or false"),
    ("xdeepfm", {"cin_layer_sizes": [3, 4]}, "even"),
    ("xdeepfm", {"cin_activation": "relu6"}, "cin_activation must be one of 'relu', 'identity'"),
    ("pop", {"sparse": 1}, "sparse must be true or false"),
])
def test_bad_values_name_the_key_and_what_was_expected(arch, bad, message):
    with pytest.raises(CardError, match=message) as info:
        config_of(arch).from_params("model 'x' params", bad)
    assert str(info.value).startswith("model 'x' params: ")


def test_unknown_keys_are_rejected_with_did_you_mean():
    with pytest.raises(CardError, match="'dropuot' \\(did you mean 'dropout'\\?\\)"):
        config_of("mian").from_params("model 'x' params", {"dropuot": 0.1})
    with pytest.raises(CardError, match="'cross_layers'"):  # a key of another architecture
        config_of("deepfm").from_params("model 'x' params", {"cross_layers": 2})


def test_values_are_normalised():
    config = config_of("mian").from_params("x", {"hidden_units": [64, 32], "dropout": 0,
                                                 "transformer_dropout": 1e-1})
    assert config.hidden_units == (64, 32) and isinstance(config.dropout, float)
    assert config.as_params()["hidden_units"] == [64, 32]
    assert config_of("mian").from_params("x", {}) == config_of("mian")()


@pytest.fixture
def bad_cards(tmp_path, monkeypatch):
    cards = tmp_path / "cards" / "models"
    cards.mkdir(parents=True)
    (cards / "mian_high.toml").write_text('extends = "mian"\n[params]\ndropout = "high"\n')
    (cards / "din_zero.toml").write_text('extends = "din"\n[params]\nhidden_units = [0]\n')
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("models", "set_items", "message"), [
    ("mian_high", (), "model 'mian_high' params (architecture 'mian'): dropout must be"),
    ("din_zero", (), "model 'din_zero' params (architecture 'din'): hidden_units must be"),
    ("mian", ("params.hidden_units=[0]",), "model 'mian' params (architecture 'mian'): "
                                           "hidden_units must be"),
    ("dien", ("dien:params.aux_weigth=1",), "'aux_weigth' (did you mean 'aux_weight'?)"),
])
def test_bad_params_fail_when_cards_are_resolved(bad_cards, models, set_items, message):
    with pytest.raises(CardError) as info:
        runner.resolve_cards(models, runner.load_overrides(None, set_items))
    assert message in str(info.value)


def test_cli_run_reports_a_bad_card_value_before_any_data_or_training(bad_cards):
    # the dataset does not exist: the card error comes first, so resolving happens before any
    # dataset is looked up, prepared or trained on
    result = CliRunner().invoke(main, ["run", "-m", "mian_high", "-d", "no_such_dataset",
                                       "--results", str(bad_cards / "results")])
    assert result.exit_code == 1
    assert "model 'mian_high' params (architecture 'mian'): dropout must be a number in [0, 1)" \
        in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, KeyError)
    assert not (bad_cards / "home").exists() and not (bad_cards / "results").exists()


def test_attention_weights_name_their_columns():
    values = torch.rand(4, 3)
    assert AttentionWeights(values, ("a", "b", "c")).columns == ("a", "b", "c")
    assert AttentionWeights(values).columns == ()  # history steps
    with pytest.raises(ValueError, match="2 column names for 3 columns"):
        AttentionWeights(values, ("a", "b"))


@pytest.mark.parametrize(("search", "message"), [
    ({"params.heads": {"type": "categorical", "choices": [4, 0]}},
     "'params.heads': heads must be a positive integer, got 0"),
    ({"params.use_gim": {"type": "categorical", "choices": [True, "no"]}},
     "'params.use_gim': use_gim must be true or false"),
    ({"params.dropout": {"type": "float", "low": 0.0, "high": 1.0}},
     "'params.dropout': dropout must be a number in [0, 1), got 1.0"),
    ({"params.transformer": {"type": "categorical", "choices": ["pre_ln", "postln"]}},
     "'params.transformer': transformer must be one of"),
])
def test_tune_search_values_are_checked_by_the_config_rules(search, message):
    raw = {**load_raw_card("models", "mian"), "search": search}
    with pytest.raises(CardError) as info:
        parse_search_space(model_card_from_dict(raw))
    assert "model card 'mian' [search] " + message in str(info.value)
