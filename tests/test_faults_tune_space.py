"""`tune` on a search space the model's configuration (or the dataset's schema) cannot take:
refused once, before any trial trains, instead of failing trial after trial (README's "not
done" list: "`tune`'s trials fail one by one on a configuration the schema cannot take").

Every test drives the real command on the tiny planted store of tests/test_tune.py (two item
fields: MIAN's behaviour width is 2 x 16 = 32, so heads 3 and 5 cannot divide it).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_faults_tune2 import invoke, load
from test_tune import MODEL, TEST_CARD, store_dir  # noqa: F401 (store_dir: a fixture)
from train_fixtures import tune_workspace

from ctrbench.cards import load_model_card
from ctrbench.errors import CardError
from ctrbench.tune.space import parse_search_space

MIAN_HEADS = """extends = "mian"
[search]
"params.heads" = { type = "categorical", choices = [3, 5] }
"""  # no choice divides the tiny store's behaviour width 32
MIAN_HEADS_RANGE = """extends = "mian"
[search]
"params.heads" = { type = "int", low = 2, high = 8, step = 3 }
"""  # 2 and 8 divide 32, 5 (a point inside the range) does not
XDEEPFM_ODD = """extends = "xdeepfm"
[params]
cin_split_half = false
cin_layer_sizes = [101, 100]
[search]
"params.cin_split_half" = { type = "categorical", choices = [true] }
"params.cin_layer_sizes" = { type = "categorical", choices = [[101, 100]] }
"""  # split-half needs even layers: the space's one point is refused


@pytest.fixture
def work(tmp_path, monkeypatch, store_dir):  # noqa: F811
    return tune_workspace(tmp_path, monkeypatch, {
        MODEL: TEST_CARD, "mian_heads": MIAN_HEADS, "mian_heads_range": MIAN_HEADS_RANGE,
        "xdeepfm_odd": XDEEPFM_ODD})


def _nothing_written(study: str) -> None:
    assert not Path(f"res/tuning/{study}.db").exists()
    assert not Path(f"res/tuning/{study}").exists()
    assert not list(Path("models/tuned").glob("*.toml"))


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_a_value_the_dataset_schema_refuses_stops_before_any_trial(work, store_dir):  # noqa: F811
    """Before: 20 trials failed one by one ("behaviour width 32 is not divisible by heads =
    3"), each written to the study, then exit 1. Now: one line naming the key and the value,
    exit 1, no study, no table, no tuned card."""
    result = invoke(store_dir, "--model", "mian_heads", "--trials", "2", "--timeout", "30")
    assert result.exit_code == 1, result.output + repr(result.exception)
    line = _one_error_line(result.output)
    assert "'params.heads'" in line and "3" in line and "divisible" in line
    assert "FAILED" not in result.output
    _nothing_written("mian_heads@tiny")


def test_a_space_refused_at_every_point_names_the_cause(work, store_dir):  # noqa: F811
    """A dataset without negative histories and DIEN's auxiliary loss searched > 0: no point
    of the space can be built (before: every trial failed)."""
    result = invoke(store_dir, "--model", "dien", "--trials", "1", "--timeout", "30")
    assert result.exit_code == 1, result.output + repr(result.exception)
    line = _one_error_line(result.output)
    assert "negative histories" in line and "no point of its [search] space" in line
    _nothing_written("dien@tiny")


def test_a_value_refused_by_the_cards_other_values_is_refused_up_front(work):
    """Before: each value was checked alone against the architecture's defaults, so
    cin_split_half = true passed (the default widths are even) and every trial failed."""
    with pytest.raises(CardError, match=r"\[search\] 'params\.cin_split_half': true"):
        parse_search_space(load_model_card("xdeepfm_odd"))


def test_a_value_valid_with_another_point_of_the_space_is_not_refused(work):
    """Before: [101, 100] was refused up front, checked with the default cin_split_half =
    true although the space (and the card) also hold false."""
    (work / "models" / "xdeepfm_mixed.toml").write_text(
        'extends = "xdeepfm"\n[params]\ncin_split_half = false\n[search]\n'
        '"params.cin_split_half" = { type = "categorical", choices = [true, false] }\n'
        '"params.cin_layer_sizes" = { type = "categorical", choices = [[101, 100], [128, 128]] }\n')
    parse_search_space(load_model_card("xdeepfm_mixed"))  # no CardError


def test_the_first_refused_sampled_point_stops_the_study(work, store_dir):  # noqa: F811
    """A refusal only a sampled point shows (heads = 5 inside 2..8 step 3, whose ends pass):
    the study stops at that first trial with its message, exit 1 (before: the study went on,
    and a space with many such points failed trial after trial)."""
    url = f"sqlite:///{Path('res/tuning').resolve()}/mian_heads_range@tiny.db"
    Path("res/tuning").mkdir(parents=True)
    study = optuna.create_study(study_name="mian_heads_range@tiny", storage=url,
                                direction="maximize")
    study.enqueue_trial({"params.heads": 5})
    result = invoke(store_dir, "--model", "mian_heads_range", "--trials", "2",
                    "--no-card-first", "--timeout", "30")
    assert result.exit_code == 1, result.output + repr(result.exception)
    line = _one_error_line(result.output)
    assert "params.heads = 5" in line and "divisible" in line
    trials = load("mian_heads_range@tiny").trials
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert not list(Path("models/tuned").glob("*.toml"))


def test_a_group_refuses_a_bad_space_before_any_model_is_tuned(work, store_dir):  # noqa: F811
    """Before: in --models, a [search] value the config refuses read as "nothing to tune"
    (exit 0), and one the schema refuses failed its trials one by one after the other models
    were tuned. Now: one message naming each refused model, exit 1, nothing tuned."""
    (work / "models" / "xdeepfm_bad.toml").write_text(
        'extends = "xdeepfm"\n[search]\n'
        '"params.cin_layer_sizes" = { type = "categorical", choices = [[101, 100]] }\n'
        '"params.cin_split_half" = { type = "categorical", choices = [true] }\n')
    result = invoke(store_dir, "--models", f"{MODEL},xdeepfm_bad,mian_heads", "--trials", "1",
                    "--timeout-per-model", "30")
    assert result.exit_code == 1, result.output + repr(result.exception)
    line = _one_error_line(result.output)
    assert "xdeepfm_bad" in line and "'params.cin_layer_sizes': [101, 100]" in line
    assert "mian_heads" in line and "'params.heads'" in line
    assert "nothing to tune" not in result.output
    _nothing_written(f"{MODEL}@tiny")
