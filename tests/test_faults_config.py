"""Issue 12, D9 and D16: bad configuration values and broken cards, through the real CLI.

D9: every value of a card's [train] table, of `--set` and of `--config` files is checked when
the configuration is resolved (before any data is prepared): one message naming the key, the
value and the expected type, exit status 1, no traceback. D16: one card with a TOML syntax error
is reported once and skipped; the other cards are listed and every group still resolves.
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.errors import CardError
from ctrbench.runs import runner

LR_CARD = 'extends = "lr"\ngroups = ["mine"]\n'


@pytest.fixture
def cards(tmp_path, monkeypatch):
    """$CTRBENCH_CARDS with one readable card in group `mine` (the built-in cards stay)."""
    (tmp_path / "cards" / "models").mkdir(parents=True)
    (tmp_path / "cards" / "datasets").mkdir()
    (tmp_path / "cards" / "models" / "lr_mine.toml").write_text(LR_CARD)
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cards"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def resolve(*set_items: str, config=None):
    return runner.resolve_cards("lr_mine", runner.load_overrides(config, set_items))


# --------------------------------------------------------------------------- D9
@pytest.mark.parametrize("item,key,expected", [
    ("train.lr=abc", "lr", "a finite number > 0"),
    ("train.lr=-1", "lr", "a finite number > 0"),
    ("train.lr=inf", "lr", "a finite number > 0"),
    ("train.lr=nan", "lr", "a finite number > 0"),
    ("train.betas=5", "betas", "two numbers in [0, 1)"),
    ("train.betas=[1, 2, 3]", "betas", "two numbers in [0, 1)"),
    ("train.betas=[0.9, 1.0]", "betas", "two numbers in [0, 1)"),
    ("train.betas=['a', 0.9]", "betas", "two numbers in [0, 1)"),
    ("train.epochs=1.5", "epochs", "an integer >= 1"),
    ("train.epochs=0", "epochs", "an integer >= 1"),
    ("train.epochs=true", "epochs", "an integer >= 1"),
    ("train.patience=-5", "patience", "an integer >= 0"),
    ("train.batch_size='128'", "batch_size", "an integer >= 1"),
    ("train.l2=-0.1", "l2", "a finite number >= 0"),
    ("train.grad_clip=nan", "grad_clip", "a finite number >= 0"),
    ("train.optimizer='sgd'", "optimizer", "one of 'adam', 'lazy_adam'"),
    ("train=1", "train", "expected a table"),
    ("params=[1]", "params", "expected a table"),
    ("params.embedding_dim=1.5", "embedding_dim", "a positive integer"),
    ("params.embedding_dim='x'", "embedding_dim", "a positive integer"),
])
def test_bad_set_values_are_refused_when_resolved(cards, item, key, expected):
    with pytest.raises(CardError) as err:
        resolve(item)
    text = str(err.value)
    assert key in text and expected in text, text


def test_good_values_still_resolve_and_are_normalised(cards):
    (card,) = resolve("train.lr=1", "train.betas=[0, 0.5]", "train.patience=0", "train.l2=0",
                      "train.lr=1e30")
    assert card.train.lr == 1e30 and isinstance(card.train.lr, float)
    assert card.train.betas == (0.0, 0.5) and card.train.patience == 0


def test_set_into_a_value_that_is_not_a_table(cards):
    from ctrbench.cards import parse_set_option

    with pytest.raises(CardError, match=r"train\.lr is already set"):
        parse_set_option(["train.lr=1", "train.lr.x=2"])
    with pytest.raises(CardError, match=re.escape("lr = {'x': 2}")):
        resolve("train.lr=1", "train.lr.x=2")


@pytest.mark.parametrize("text,key", [
    ("[train]\nlr = 'fast'\n", "lr"),
    ("train = 1\n", "train"),
    ("[models.lr_mine]\ntrain = 'x'\n", "train"),
    ("models = 3\n", "models"),
])
def test_bad_config_file_values(cards, tmp_path, text, key):
    config = tmp_path / "over.toml"
    config.write_text(text)
    with pytest.raises(CardError) as err:
        resolve(config=config)
    assert key in str(err.value) and "expected" in str(err.value)


@pytest.mark.parametrize("args", [
    ["--set", "train.lr=abc"], ["--set", "train.betas=5"], ["--set", "train=1"],
    ["--set", "train.epochs=1.5"], ["--set", "train.patience=-5"],
])
def test_cli_bad_values_exit_1_with_one_message(cards, args):
    result = invoke("plan", "-m", "lr_mine", "-d", "synthetic", *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "expected" in result.output
    assert not (cards.parent / "home" / "prepared").exists()  # refused before any preparation


@pytest.mark.parametrize("text,key", [
    ('extends = "lr"\n[train]\nlr = "fast"\n', "lr"),
    ('extends = "lr"\n[train]\nepochs = 2.5\n', "epochs"),
    ('extends = "lr"\nparams = 3\n', "params"),
    ('extends = "lr"\ngroups = "mine"\n', "groups"),
])
def test_bad_card_values(cards, text, key):
    (cards / "models" / "lr_bad.toml").write_text(text)
    result = invoke("plan", "-m", "lr_bad", "-d", "synthetic")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and key in result.output
    assert "lr_bad.toml" in result.output and "expected" in result.output


# --------------------------------------------------------------------------- D16
def test_one_broken_card_is_reported_once_and_the_rest_listed(cards):
    (cards / "models" / "zz_broken.toml").write_text('arch = "lr"\nthis is = not toml\n')
    result = invoke("list", "models")
    output = result.output  # stdout and stderr interleaved (click >= 8.2)
    assert result.exit_code == 1, output
    assert "Traceback" not in output
    for name in ("lr_mine", "mian", "din", "xdeepfm"):
        assert f"\n{name} " in result.stdout
    assert output.count("zz_broken.toml") == 1


def test_broken_card_does_not_break_group_selection(cards, capfd):
    (cards / "models" / "zz_broken.toml").write_text("arch = \n")
    assert runner.resolve_cards("mine,table2", runner.load_overrides(None, ()))[0].name == \
        "lr_mine"
    assert [c.name for c in runner.resolve_cards("baselines", runner.load_overrides(None, ()))] \
        == ["dcn", "deepfm", "dien", "din", "lr", "wide_deep", "xdeepfm"]
    err = capfd.readouterr().err
    assert err.count("zz_broken.toml") == 1  # once per process, however often groups resolve
    result = invoke("list", "models", "--group", "mine")
    assert result.exit_code == 0 and "lr_mine" in result.output
    # selecting the broken card itself is one clean error
    result = invoke("plan", "-m", "zz_broken", "-d", "synthetic")
    assert result.exit_code == 1 and "not valid TOML" in result.output
    assert "Traceback" not in result.output
