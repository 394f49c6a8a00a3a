"""Two leftovers of the fault hunts (docs/reliability.md, "Found and left"): one configuration
spelled two ways made two run ids, and a configuration the dataset's schema cannot take failed
each run rather than the command. Each test failed before its fix (the pinned ids excepted:
they guard the fix)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from test_cli_run import home  # noqa: F401  (one CTRBENCH_HOME per module)

from ctrbench.cards import config_hash, model_names
from ctrbench.cli import main
from ctrbench.errors import CardError
from ctrbench.models import config_of
from ctrbench.runs import runner
from ctrbench.runs.preflight import check_buildable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a stand-in dataset identity: the ids below depend on the card resolution alone
STAND_IN = SimpleNamespace(data=SimpleNamespace(identity={"name": "synthetic", "stand-in": True}))

#: (model hash, run id of seed 0 on STAND_IN) of every built-in card, computed before the fix;
#: stored records and the regression gate's reference rely on them
PINNED = {
    "dcn": ("1c82f221ceeffaa5", "ba2e971ba50ab608"),
    "deepfm": ("e575290b0f91bf6b", "5346162be68f9fad"),
    "dien": ("873857fcbb15936a", "636d12e617190dc8"),
    "dien_no_aux": ("1617f53a28eadfb9", "c14ba36a6543578b"),
    "din": ("bf8a2dc3e11ca778", "b9ae97702569bd1b"),
    "lr": ("9c551b62317a7613", "f5c62b4c480c2c62"),
    "mian": ("953e22ba1b26b914", "0d337a89ca514ace"),
    "mian_no_transformer": ("b81b69e0b0d59ae8", "77c5853b1ba69578"),
    "mian_postln": ("70ca1e9b703b576c", "ce5ba755bcb92388"),
    "mian_product": ("3829625b013d6dfe", "93e3876e5d59386f"),
    "mian_wo_gim": ("ca19cbba19f9123b", "ed8cd3754034cc8c"),
    "mian_wo_ibim": ("08efc5799fb71c20", "c19e0e97944528db"),
    "mian_wo_icim": ("895b8f4d2b0bc6ff", "a3d0c0026347ce58"),
    "mian_wo_iuim": ("bfc8b6dca134a176", "704f07d77cb0d8d1"),
    "mian_wo_iuim_icim": ("1bb680e3d77c11da", "7ef0bbb62d681eef"),
    "pop": ("23d6f5a82fa2e7fc", "77dd63919a16e1c3"),
    "wide_deep": ("3abb0daf50330b43", "d76328d991a5969f"),
    "xdeepfm": ("a29a3a3158c6d8f7", "b410bfd59c6c5a28"),
}


def resolved(model: str, *items: str, config=None) -> dict:
    """The resolved configuration ``run`` hashes for ``model`` under ``--set items``."""
    overrides = runner.load_overrides(config, [f"{model}:{item}" for item in items])
    return runner.resolve_cards([model], overrides)[0].resolved()


def model_hash(model: str, *items: str, config=None) -> str:
    """What the run id takes from the model (``-0.0 == 0.0`` in Python, not in the hash)."""
    return config_hash(resolved(model, *items, config=config))


def toml(value) -> str:
    """A default as a ``--set`` value (JSON spells these TOML values alike)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def unlisted_defaults(model: str) -> dict:
    """The parameters ``model``'s card leaves at their defaults (``sparse`` aside)."""
    card = runner.resolve_cards([model])[0]
    return {f.name: f.default for f in dataclasses.fields(config_of(card.arch))
            if f.name not in card.params and f.name != "sparse"}


# --------------------------------------------------------------------------- run ids
def test_built_in_cards_keep_their_run_ids():
    assert sorted(PINNED) == model_names()
    for card in runner.resolve_cards(model_names()):
        assert (config_hash(card.resolved()), runner.run_id(STAND_IN, card, 0)) == \
            PINNED[card.name], card.name


@pytest.mark.parametrize("model", ["dien", "din", "mian_wo_ibim", "dien_no_aux"])
def test_a_parameter_set_to_its_default_keeps_the_run_id(model):
    """``--set dien:params.init_std=<its default>`` made another run id than leaving it out:
    the finished record of the same configuration was refused as another configuration."""
    plain = model_hash(model)
    defaults = unlisted_defaults(model)
    assert defaults, f"{model} lists every parameter: pick another card"
    for key, value in defaults.items():
        assert model_hash(model, f"params.{key}={toml(value)}") == plain, key


def test_every_built_in_card_ignores_its_defaults_set_explicitly():
    for model in model_names():
        items = [f"params.{k}={toml(v)}" for k, v in unlisted_defaults(model).items()]
        assert model_hash(model, *items) == model_hash(model), model


def test_a_default_from_a_config_file_keeps_the_run_id(tmp_path):
    path = tmp_path / "c.toml"
    default = config_of("dien")().init_std
    path.write_text(f"[models.dien.params]\ninit_std = {default!r}\n")
    assert model_hash("dien", config=path) == model_hash("dien")


def test_sparse_that_the_optimizer_implies_keeps_the_run_id():
    """``params.sparse`` is set by the trainer from ``train.optimizer``: stating it changes
    nothing, so it makes no other run id."""
    assert model_hash("lr", "params.sparse=false") == model_hash("lr")
    lazy = "train.optimizer=\"lazy_adam\""
    assert model_hash("din", lazy, "params.sparse=true") == model_hash("din", lazy)


def test_an_override_that_changes_the_configuration_still_changes_the_run_id():
    dien = resolved("dien")
    assert resolved("dien", "params.init_std=0.002")["params"]["init_std"] == 0.002
    assert model_hash("dien", "params.init_std=0.002") != config_hash(dien)
    # a key the card lists, set to the architecture's default (not the card's value)
    card_value = dien["params"]["dropout"]
    default = config_of("dien")().dropout
    assert card_value != default
    assert resolved("dien", f"params.dropout={default!r}")["params"]["dropout"] == default
    # and a key the card lists, set to its own value, is one configuration
    assert model_hash("dien", f"params.dropout={card_value!r}") == config_hash(dien)


@pytest.mark.parametrize("item", ["params.dropout=-0.0", "train.l2=-0.0",
                                  "train.grad_clip=-0.0", "train.betas=[-0.0, 0.999]"])
def test_minus_zero_is_zero(item):
    """``-0.0`` passed the ``>= 0`` checks and was hashed as ``-0.0``: another run id than
    ``0.0`` for the same configuration."""
    assert model_hash("din", item.replace("-0.0", "0.0")) == model_hash("din", item)


def test_train_settings_at_their_defaults_keep_the_run_id():
    """Train settings are hashed whole (defaults included), so stating one changes nothing;
    ``precision = "auto"`` is left out as when it is not given."""
    plain = model_hash("lr")
    assert model_hash("lr", "train.precision=\"auto\"", "train.betas=[0.9, 0.999]",
                      "train.lr=1e-3", "train.grad_clip=0") == plain
    assert model_hash("lr", "train={lr = 0.001, epochs = 10}") == plain
    assert "precision" not in resolved("lr")["train"]


def test_widths_as_list_or_tuple_and_ints_as_floats_are_one_spelling():
    widths = resolved("din")["params"]["hidden_units"]
    assert model_hash("din", f"params.hidden_units={widths}") == model_hash("din")
    assert model_hash("din", "params.dropout=0") == model_hash("din", "params.dropout=0.0")


# --------------------------------------------------------------------------- schema checks
@pytest.fixture
def cli(home, tmp_path, monkeypatch):  # noqa: F811  (home: one per module, test_cli_run's)
    monkeypatch.setenv("CTRBENCH_HOME", str(home))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"

    def invoke(*args: str):
        return CliRunner().invoke(main, [*args, "--results", str(results), "-d", "synthetic",
                                         "--epochs", "1", "--device", "cpu"])

    return invoke, results


def test_a_schema_the_configuration_cannot_take_fails_the_command_once(cli):
    """``run -m lr,mian --seeds 3 --set mian:params.heads=7`` trained lr, then failed mian's
    three runs one by one (each recorded as failed): now one message, exit 1, nothing run."""
    invoke, results = cli
    out = invoke("run", "-m", "lr,mian", "--seeds", "3", "--set", "mian:params.heads=7", "-q")
    assert out.exit_code == 1, out.output
    assert "model 'mian'" in out.output and "heads = 7" in out.output
    assert out.output.count("heads = 7") == 1
    assert "Traceback" not in out.output
    assert not list(results.rglob("seed-*.json"))  # lr was not run either


def test_plan_refuses_the_same_configuration(cli):
    invoke, _ = cli
    out = invoke("plan", "-m", "mian", "--seeds", "2", "--set", "params.heads=7")
    assert out.exit_code == 1 and "model 'mian'" in out.output and "ctrbench run" not in out.output


def test_every_model_the_schema_refuses_is_named(home, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CTRBENCH_HOME", str(home))
    handle = runner.default_dataset_loader("synthetic")
    cards = runner.resolve_cards(["mian", "mian_postln", "lr"],
                                 runner.load_overrides(None, ["mian:params.heads=7",
                                                              "mian_postln:params.heads=5"]))
    with pytest.raises(CardError) as caught:
        check_buildable(cards, handle)
    assert "'mian'" in str(caught.value) and "'mian_postln'" in str(caught.value)
    assert "'lr'" not in str(caught.value)
    check_buildable(runner.resolve_cards(model_names()), handle)  # the built-in cards


def test_a_finished_run_is_found_again_with_a_default_stated(cli):
    """``run -m pop``, then the same with ``--set params.embedding_dim=16`` (pop's default):
    the second was refused as "another configuration" (exit 1); now it is skipped."""
    invoke, _ = cli
    first = invoke("run", "-m", "pop", "--seed-list", "0", "-q")
    assert first.exit_code == 0, first.output
    again = invoke("run", "-m", "pop", "--seed-list", "0", "-q",
                   "--set", "params.embedding_dim=16")
    assert again.exit_code == 0 and "1 skipped" in again.output, again.output
