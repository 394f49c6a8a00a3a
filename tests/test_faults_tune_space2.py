"""`tune` on a ``train.*`` search value the trainer refuses only together with the card's other
values: refused once, before any trial or storage is written, like a ``params.*`` one
(tests/test_faults_tune_space.py).

The one rule across fields a ``[search]`` space can meet is ``params.sparse`` against
``train.optimizer`` (``ctrbench.engine.train.training_config``); ``[train]`` itself has no rule
across its fields (``ctrbench.validate``), and ``l2_target = "din_frequency"``'s need for banked
embedding tables is met by every architecture (the last test).
"""

from __future__ import annotations

from test_faults_tune2 import invoke
from test_faults_tune_space import _nothing_written, _one_error_line
from test_tune import MODEL, TEST_CARD, store_dir  # noqa: F401 (store_dir: a fixture)
from train_fixtures import tune_workspace

SPARSE_LAZY = f"""extends = "{MODEL}"
[params]
sparse = true
[train]
optimizer = "lazy_adam"
[search]
"train.optimizer" = {{ type = "categorical", choices = ["adam", "lazy_adam"] }}
"""  # adam needs dense embeddings: params.sparse = true refuses it at every point


def test_a_train_value_the_cards_params_refuse_stops_before_any_trial(tmp_path, monkeypatch,
                                                                      store_dir):  # noqa: F811
    """Before: each train.* value was checked alone, so train.optimizer = "adam" passed and the
    first trial sampling it failed ("params.sparse = True conflicts with train.optimizer =
    'adam'") after a study was written. Now: one line naming the card, the key and the value,
    exit 1, no study, no table, no tuned card."""
    tune_workspace(tmp_path, monkeypatch, {MODEL: TEST_CARD, "lr_sparse": SPARSE_LAZY})
    result = invoke(store_dir, "--model", "lr_sparse", "--trials", "3", "--no-card-first",
                    "--timeout", "30")
    assert result.exit_code == 1, result.output + repr(result.exception)
    line = _one_error_line(result.output)
    assert "'lr_sparse'" in line and "'train.optimizer': \"adam\"" in line
    assert "conflicts" in line and "FAILED" not in result.output
    _nothing_written("lr_sparse@tiny")


def test_a_group_refuses_a_train_value_before_any_model_is_tuned(tmp_path, monkeypatch,
                                                                  store_dir):  # noqa: F811
    """Before: in --models, lr_tunetest was tuned first, then lr_sparse's trial with adam
    failed. Now: one line naming lr_sparse's key and value, exit 1, nothing tuned."""
    tune_workspace(tmp_path, monkeypatch, {MODEL: TEST_CARD, "lr_sparse": SPARSE_LAZY})
    result = invoke(store_dir, "--models", f"{MODEL},lr_sparse", "--trials", "1",
                    "--timeout-per-model", "30")
    assert result.exit_code == 1, result.output + repr(result.exception)
    line = _one_error_line(result.output)
    assert "'lr_sparse'" in line and "'train.optimizer': \"adam\"" in line
    _nothing_written(f"{MODEL}@tiny")
    _nothing_written("lr_sparse@tiny")


def test_a_train_value_the_cards_params_take_is_not_refused(tmp_path, monkeypatch):
    """The same space on a card without params.sparse: both optimizers are taken (the trainer
    sets sparse from train.optimizer), so the check refuses nothing."""
    from types import SimpleNamespace

    from ctrbench.cards import load_model_card
    from ctrbench.tune.space import check_space_on_data

    tune_workspace(tmp_path, monkeypatch, {MODEL: TEST_CARD, "lr_both": SPARSE_LAZY.replace(
        "[params]\nsparse = true\n", "")})
    data = SimpleNamespace(schema=_schema(), meta={"dataset": "tiny"}, path=tmp_path)
    space = check_space_on_data(load_model_card("lr_both"), data)  # no CardError
    assert "train.optimizer" in [d.key for d in space]


ACROSS_SECTIONS = f"""extends = "{MODEL}"
[train]
optimizer = "lazy_adam"
[search]
"params.sparse" = {{ type = "categorical", choices = [true] }}
"train.optimizer" = {{ type = "categorical", choices = ["adam", "lazy_adam"] }}
"""  # each section passes with the card's own other one; adam with sparse = true never builds


def test_a_value_refused_only_with_the_other_sections_search_values_is_refused_up_front(
        tmp_path, monkeypatch):
    """Before: each section was checked with the card's own values of the other (sparse =
    false; optimizer = lazy_adam), so "adam" passed, and the first trial sampling it (always
    with sparse = true) stopped the study. Now both sections' points are checked together."""
    from types import SimpleNamespace

    import pytest

    from ctrbench.cards import load_model_card
    from ctrbench.errors import CardError
    from ctrbench.tune.space import check_space_on_data

    tune_workspace(tmp_path, monkeypatch, {MODEL: TEST_CARD, "lr_across": ACROSS_SECTIONS})
    data = SimpleNamespace(schema=_schema(), meta={"dataset": "tiny"}, path=tmp_path)
    with pytest.raises(CardError) as refused:
        check_space_on_data(load_model_card("lr_across"), data)
    message = str(refused.value)
    assert "'train.optimizer': \"adam\" is refused" in message and "conflicts" in message


PLAIN_TABLES = """arch = "tiny_logistic"
[params]
embedding_dim = 4
[train]
l2 = 1e-4
[search]
"train.l2_target" = { type = "categorical", choices = ["batch_embeddings", "din_frequency"] }
"""  # tiny_logistic (tests/train_fixtures.py): a plugin architecture with plain nn.Embedding


def test_din_frequency_on_a_plugin_architectures_plain_tables_is_refused_up_front(
        tmp_path, monkeypatch):
    """Before: the rule was checked when training started (TrainStep), so the space passed and
    the first trial sampling din_frequency stopped the study. Now building the model checks
    it, and so does the space check before any trial."""
    from types import SimpleNamespace

    import pytest

    from ctrbench.cards import load_model_card
    from ctrbench.errors import CardError
    from ctrbench.tune.space import check_space_on_data

    tune_workspace(tmp_path, monkeypatch, {MODEL: TEST_CARD, "plain": PLAIN_TABLES})
    data = SimpleNamespace(schema=_schema(), meta={"dataset": "tiny"}, path=tmp_path)
    with pytest.raises(CardError) as refused:
        check_space_on_data(load_model_card("plain"), data)
    message = str(refused.value)
    assert "'train.l2_target': \"din_frequency\" is refused" in message
    assert "EmbeddingBank" in message


def test_no_architecture_can_meet_din_frequencys_banked_table_rule():
    """The trainer's other rule across [train] fields (l2_target = "din_frequency" with l2 > 0
    needs every embedding table in an EmbeddingBank, TrainStep) holds for the architecture of
    every built-in card, dense or sparse: their [search] spaces cannot violate it (a plugin
    architecture with plain nn.Embedding tables can: see the s11 report)."""
    from ctrbench.cards import load_model_card, model_names
    from ctrbench.models import build_model, config_of
    from ctrbench.models.fast.embedding_bank import FusedEmbedding

    for arch in {load_model_card(name).arch for name in model_names()}:
        for sparse in (False, True):
            config = config_of(arch).from_params(arch, {"sparse": sparse})
            model = build_model(arch, _schema(), config)
            assert all(isinstance(m, FusedEmbedding) for m in model.embedding_modules()), arch


def _schema():
    from ctrbench.schema import reference_schema

    return reference_schema(n_items=60, n_cates=8, user_fields={"user_id": 40},
                            context_fields={"month": 14}, max_len=5, neg_history=True)
