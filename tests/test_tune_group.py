"""`ctrbench tune --models GROUP`: equal budgets, validation only, tuned groups, the report table.

Every study trains the real trainer on the tiny planted store of tests/test_tune.py; the store's
test split is replaced by unreadable files first, so any read of it during a study fails the
trial (and then the group has no tuned card).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_tune import store_dir  # noqa: F401  (the module-scoped tiny store fixture)

from ctrbench import cards
from ctrbench.cli import main
from ctrbench.data.store import open_store
from ctrbench.errors import CardError, DataError
from ctrbench.report.build import build_report
from ctrbench.runs import runner

LR_CARD = """
extends = "lr"
groups = ["gtest"]
[train]
lr = 0.05
batch_size = 64
[search]
"train.lr" = { type = "float", low = 1e-3, high = 0.3, log = true }
"train.batch_size" = { type = "categorical", choices = [64, 128] }
"""
WD_CARD = """
extends = "wide_deep"
groups = ["gtest"]
[params]
hidden_units = [16]
[train]
lr = 0.01
batch_size = 64
[search]
"train.batch_size" = { type = "categorical", choices = [64, 128] }
"params.hidden_units" = { type = "categorical", choices = [[16], [8, 4]] }
"""


@pytest.fixture
def work(tmp_path, monkeypatch, store_dir) -> Path:  # noqa: F811
    """./models with a two-model group; ./store: the tiny store with an unreadable test split."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lr_g.toml").write_text(LR_CARD)
    (tmp_path / "models" / "wd_g.toml").write_text(WD_CARD)
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    for column in (store / "test").glob("*.npy"):
        column.write_bytes(b"not an array: the test split must never be read while tuning")
    return tmp_path


def _tune(*args: str, expect: int = 0):
    argv = ["tune", "--models", "gtest", "--dataset", "store", "--results", "res",
            "--epochs", "1", "-q", *args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result


def test_group_gets_equal_budgets_and_never_reads_test(work):
    with pytest.raises(DataError, match="test/"):  # the poisoned split really is unreadable
        open_store(work / "store").tensors("test")
    out = _tune("--trials", "3")
    assert "UNEQUAL" not in out.output
    budget = json.loads((work / "res/tuning/gtest@tiny/budget.json").read_text())
    assert budget["budget"] == "3 complete-or-pruned trials per model"
    assert budget["unequal"] == []
    models = {m["model"]: m for m in budget["models"]}
    assert set(models) == {"lr_g", "wd_g"}
    for row in models.values():  # every trial finished without touching the test split
        assert row["status"] == "tuned"
        assert row["trials_complete"] + row["trials_pruned"] == 3
        assert row["trials_failed"] == 0
    settings = budget["settings"]
    assert (settings["sampler"], settings["seed"], settings["epochs"]) == ("tpe", 0, 1)
    for name in ("lr_g@tiny", "wd_g@tiny"):
        tuned = cards.load_model_card(name)
        assert tuned.tuned_from["trials_complete"] + tuned.tuned_from["trials_pruned"] == 3
    # a list choice comes back to the card as a list of widths
    assert isinstance(cards.load_model_card("wd_g@tiny").params["hidden_units"], list)
    # resuming with the same budget runs nothing new
    again = _tune("--trials", "3")
    assert json.loads((work / "res/tuning/gtest@tiny/budget.json").read_text())["models"] \
        == budget["models"]
    assert "UNEQUAL" not in again.output


def test_tuned_group_resolves_to_every_tuned_card(work):
    with pytest.raises(CardError, match="lr_g@tiny, wd_g@tiny") as err:
        cards.resolve_model_spec("gtest@tiny")
    assert "ctrbench tune --models gtest --dataset tiny" in str(err.value.hint)
    _tune("--trials", "2")
    assert cards.resolve_model_spec("gtest@tiny") == ["lr_g@tiny", "wd_g@tiny"]
    assert cards.resolve_model_spec("lr_g@tiny,wd_g@tiny") == ["lr_g@tiny", "wd_g@tiny"]


def test_group_options_are_checked(work):
    runner_ = CliRunner()
    both = runner_.invoke(main, ["tune", "--model", "lr_g", "--models", "gtest",
                                 "--dataset", "store"])
    assert both.exit_code == 2 and "exactly one of --model" in both.output
    per_model = runner_.invoke(main, ["tune", "--model", "lr_g", "--dataset", "store",
                                      "--timeout-per-model", "5"])
    assert per_model.exit_code == 2 and "--timeout-per-model needs --models" in per_model.output


def test_report_writes_defaults_vs_tuned(work, store_dir):  # noqa: F811
    _tune("--trials", "2")
    handle = runner.DatasetHandle("tiny", open_store(store_dir), {"name": "tiny"})
    chosen = runner.resolve_cards("lr_g,wd_g,gtest@tiny", epochs=1)
    specs = runner.plan_runs(handle, chosen, [0, 1], work / "res")
    results = runner.execute(specs, handle, device="cpu", show_progress=False)
    assert all(r.status == "finished" for r in results)
    report = build_report(work / "res", make_plots=False)
    table = next(t for t in report.tables if t.name == "tuned")
    frame = table.frame.set_index("model")
    assert list(frame.index) == ["lr_g", "wd_g"]
    for model in ("lr_g", "wd_g"):
        row = frame.loc[model]
        assert row["n_common"] == 2 and row["test"] == "paired t"
        assert row["delta_auc"] == pytest.approx(row["auc_tuned"] - row["auc_default"])
        assert row["trials_complete"] + row["trials_pruned"] == 2
    ordering = next(t for t in report.tables if t.name == "tuned_ordering").frame
    assert bool(ordering.iloc[0]["equal_budget"]) is True
    assert (work / "res/report/tuned.md").read_text().count("Kendall's τ") == 1
