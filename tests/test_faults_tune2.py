"""Faults of `ctrbench tune` found by a tester (2026-12-01, third hunt): search spaces whose
trials can never succeed, study names, storages, signals between trials, budgets.

Every test drives the real command on the tiny planted store of tests/test_tune.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from test_tune import MODEL, TEST_CARD, store_dir  # noqa: F401 (store_dir: a fixture)
from train_fixtures import tune_workspace

from ctrbench import cards, progress
from ctrbench.cli import main
from ctrbench.errors import CardError, CtrbenchError
from ctrbench.tune import study as tune_study
from ctrbench.tune.outputs import study_dir
from ctrbench.tune.space import parse_search_space
from ctrbench.tune.storage import open_storage

DIVERGING = f"""extends = "{MODEL}"
[search]
"train.lr" = {{ type = "float", low = 1e29, high = 1e30, log = true }}
"""  # every trial diverges (a NaN loss): a runtime failure no card check can see


@pytest.fixture
def work(tmp_path, monkeypatch, store_dir):  # noqa: F811
    return tune_workspace(tmp_path, monkeypatch, {MODEL: TEST_CARD, "lr_diverging": DIVERGING})


def invoke(store: Path, *args: str):
    progress.set_mode("auto")  # `-q` of an earlier invocation in this process would stick
    argv = ["tune", "--dataset", str(store), "--results", "res", "--epochs", "1", *args]
    return CliRunner().invoke(main, argv)


def load(study: str, root: str = "res") -> optuna.Study:
    url = f"sqlite:///{Path(root, 'tuning').resolve()}/{study}.db"
    return optuna.load_study(study_name=study, storage=url)


def _card(name: str, search: str) -> cards.ModelCard:
    import tomllib

    raw = cards.load_raw_card("models", MODEL)
    return cards.model_card_from_dict({**raw, "name": name,
                                       "search": {**raw["search"], **tomllib.loads(search)}})


# --------------------------------------------------------------------------- failing trials
def test_a_study_whose_trials_all_fail_stops_instead_of_looping_forever(
        work, store_dir, monkeypatch):  # noqa: F811
    """Before: failed trials do not count towards --trials, so a space where every trial
    fails (here: diverges) ran trial after trial forever (687 trials in 40 s, single model
    and --models alike). Now the study stops after MAX_FAILED_IN_A_ROW failures in a row,
    says why, and exits 1; a group tunes its other models first."""
    monkeypatch.setattr(tune_study, "MAX_FAILED_IN_A_ROW", 3, raising=False)
    # --timeout only as a safety net for the unfixed code (which never stops by itself)
    result = invoke(store_dir, "--model", "lr_diverging", "--trials", "2", "--timeout", "20")
    assert result.exit_code == 1, result.output + repr(result.exception)
    trials = load("lr_diverging@tiny").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert "3 trials in a row failed" in result.output
    assert "TrainingDiverged" in result.output  # the last error, named

    result = invoke(store_dir, "--models", f"lr_diverging,{MODEL}", "--trials", "1",
                    "--timeout-per-model", "20", "--pruner", "none")
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert len(load("lr_diverging@tiny").trials) == 6  # three more, then stopped again
    assert [t.state for t in load(f"{MODEL}@tiny").trials] == [TrialState.COMPLETE]
    assert "lr_diverging" in result.output and "in a row failed" in result.output


# --------------------------------------------------------------------------- search spaces
@pytest.mark.parametrize("spec,expected", [
    ('"train.lr" = { type = "float", low = -1.0, high = 0.1 }', "lr"),
    ('"train.lr" = { type = "categorical", choices = [0.05, "0.1"] }', "lr"),
    ('"train.patience" = { type = "categorical", choices = [true, false] }', "patience"),
    ('"train.batch_size" = { type = "int", low = 0, high = 4 }', "batch_size"),
    ('"train.batch_size" = { type = "float", low = 32.0, high = 64.0 }', "batch_size"),
])
def test_train_search_values_are_checked_before_any_trial(work, spec, expected):
    """Before: only params.* dimensions were checked against their rules; a train.* range or
    choice the trainer refuses made trials FAIL one by one at run time (with a space of
    booleans for patience, forever)."""
    with pytest.raises(CardError, match=rf"\[search\] 'train\.{expected}'"):
        parse_search_space(_card("bad", spec))


def test_a_bad_train_dimension_is_exit_1_before_any_trial(work, store_dir):  # noqa: F811
    (work / "models" / "lr_neg.toml").write_text(
        f'extends = "{MODEL}"\n[search]\n"train.lr" = {{ type = "float", low = -1.0, '
        'high = 0.1 }\n')
    result = invoke(store_dir, "--model", "lr_neg", "--trials", "1")
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "'train.lr'" in result.output and "Traceback" not in result.output
    assert not Path("res/tuning/lr_neg@tiny.db").exists()


def test_card_values_outside_the_space_are_said(work, store_dir):  # noqa: F811
    """Before: when the card's own values were not a point of its space they were silently
    not queued as the first trial (e.g. dien_no_aux: aux_weight = 0 outside dien's inherited
    0.1..2.0, so every trial turns the auxiliary loss back on)."""
    (work / "models" / "lr_outside.toml").write_text(
        f'extends = "{MODEL}"\n[train]\nlr = 0.5\n')  # above the space's 0.3
    result = invoke(store_dir, "--model", "lr_outside", "--trials", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "train.lr = 0.5" in result.output and "not a point of" in result.output
    result = invoke(store_dir, "--model", MODEL, "--trials", "0")
    assert "not a point of" not in result.output


# --------------------------------------------------------------------------- study names
def test_study_names_never_leave_the_tuning_folder_or_share_one(work, store_dir):  # noqa: F811
    """Before: `--study ..` wrote trials.csv/md and history.png into <results>/ itself, and
    `--study 'a/b'` and `--study 'a b'` shared <results>/tuning/a_b/ (one table overwrote the
    other's)."""
    tuning = (work / "res" / "tuning").resolve()
    dirs = {name: study_dir(work / "res", name).resolve() for name in ("..", ".", "a/b", "a b")}
    for name, path in dirs.items():
        assert path.parent == tuning, (name, path)
    assert len(set(dirs.values())) == len(dirs)
    assert study_dir(work / "res", f"{MODEL}@tiny") == work / "res" / "tuning" / f"{MODEL}@tiny"
    result = invoke(store_dir, "--model", MODEL, "--trials", "1", "--study", "..", "-q")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert not (work / "res" / "trials.csv").exists()
    assert (dirs[".."] / "trials.csv").is_file()


# --------------------------------------------------------------------------- storages
def test_bad_storage_urls_are_one_clear_line(tmp_path):
    """Before: a malformed URL was a ValueError traceback; `sqlite://` (in memory) tuned,
    printed heartbeat-thread tracebacks and wrote a tuned card whose study was gone at exit;
    an unknown scheme said "Can't load plugin" with the hint "check that the server is
    running"."""
    with pytest.raises(CtrbenchError, match="not a storage URL"):
        open_storage("postgresql://u:secret@[::1", tmp_path, "s")
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true"):
        with pytest.raises(CtrbenchError, match="in memory") as err:
            open_storage(url, tmp_path, "s")
        assert "journal:" in str(err.value.hint)
    for url in ("ftp://host/x", "mongodb://host/db"):
        with pytest.raises(CtrbenchError, match="scheme") as err:
            open_storage(url, tmp_path, "s")
        assert "server is running" not in str(err.value) + str(err.value.hint)


def test_a_malformed_storage_url_exits_1(work, store_dir):  # noqa: F811
    result = invoke(store_dir, "--model", MODEL, "--storage", "postgresql://u:secret@[::1")
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not ValueError
    assert "secret" not in result.output and "not a storage URL" in result.output


# --------------------------------------------------------------------------- signals
def invoke_signalled(store: Path, monkeypatch, owner, name: str, signum: int, trials: str):
    """``tune`` of ``trials`` trials with ``signum`` raised the first time ``owner.name`` is
    called, just before it runs; returns (result, [signum] if it was raised)."""
    real = getattr(owner, name)
    sent = []

    def signal_then_call(*args, **kwargs):
        if not sent:
            sent.append(signum)
            signal.raise_signal(signum)  # as if it arrived now
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, signal_then_call)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return invoke(store, "--model", MODEL, "--trials", trials, "-q"), sent
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_optunas_bookkeeping_is_held_until_the_trial_is_recorded(
        work, store_dir, monkeypatch, signum, code):  # noqa: F811
    """Before: SIGTERM (a Slurm scancel) landing while optuna recorded a trial raised
    `UnboundLocalError: updated_state` out of optuna (exit 1, a traceback); landing while
    optuna started its heartbeat thread, the process never exited (the thread was left
    running). Now a signal outside a trial's own work waits until optuna is done with the
    trial, then stops the command as documented (130 / 143)."""
    from optuna.study import _optimize

    result, sent = invoke_signalled(store_dir, monkeypatch, _optimize, "_tell_with_warning",
                                    signum, "3")
    assert sent and result.exit_code == code, result.output + repr(result.exception)
    assert not isinstance(result.exception, UnboundLocalError)
    trials = load(f"{MODEL}@tiny").trials
    assert trials[0].state == TrialState.COMPLETE  # recorded, not lost to the signal
    assert len(trials) == 1  # no trial started after the signal


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_a_trials_storage_call_waits_for_it(
        work, store_dir, monkeypatch, signum, code):  # noqa: F811
    """Before: a signal landing inside a storage call of a running trial (here: recording a
    sampled value) was raised there. Halfway through SQLAlchemy's connection pool, that can
    leave the pool's lock taken (seen: a KeyboardInterrupt in ``sqlalchemy/util/queue.py``'s
    ``get``), and the worker then hung queueing the trial again (the rare hang of
    test_faults_cli's SIGINT test). Now the call completes; the signal stops the trial when
    training starts, with every sampled value recorded and queued again."""
    result, sent = invoke_signalled(store_dir, monkeypatch, optuna.storages.RDBStorage,
                                    "_set_trial_param", signum, "2")
    assert sent and result.exit_code == code, result.output + repr(result.exception)
    cut, retry = load(f"{MODEL}@tiny").trials
    assert cut.state == TrialState.FAIL and "interrupted" in cut.user_attrs["error"]
    assert len(cut.params) == 4  # every value was recorded; none lost to the signal
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == cut.params


# --------------------------------------------------------------------------- budgets
def test_an_over_budget_model_is_not_told_to_re_run():
    """Before: a model whose study already held more trials than --trials declares (an
    earlier, larger run; or `--trials 0`, which only rewrites the outputs) was flagged
    "UNEQUAL BUDGET: … (re-run the same command to complete it)": re-running changes
    nothing. Each line now says what would make the budgets equal."""
    from ctrbench.tune.group import ModelBudget, unequal_budgets
    from ctrbench.tune.study import TuneSettings

    rows = [ModelBudget("a", "tuned", trials_complete=25), ModelBudget("b", "tuned",
                                                                       trials_complete=20),
            ModelBudget("c", "tuned", trials_complete=3),
            ModelBudget("d", "no complete trial", trials_failed=20, failing="stopped: …")]
    lines = unequal_budgets(rows, TuneSettings(n_trials=20))
    assert len(lines) == 3
    assert "re-run" not in lines[0] and "declare at least 25" in lines[0]
    assert "re-run the same command to complete it" in lines[1]
    assert "kept failing" in lines[2]


def test_every_built_in_card_is_a_point_of_its_own_search_space():
    """dien_no_aux (aux_weight = 0) inherited dien's 0.1..2.0: every trial of its study turned
    the auxiliary loss back on, and its own values were never the first trial."""
    from ctrbench.cards import load_model_card, model_names
    from ctrbench.tune.space import card_values_outside, has_search_space, parse_search_space

    for name in model_names():
        card = load_model_card(name)
        if has_search_space(card):
            assert card_values_outside(card, parse_search_space(card)) == [], name


def test_a_second_signal_while_one_is_held_acts_at_once(capsys):
    """A held Ctrl-C could not be repeated: were optuna's bookkeeping stuck (a locked storage),
    only kill -9 stopped ``tune``."""
    import signal as signal_module

    from ctrbench.tune.study import SignalGate

    gate = SignalGate()
    gate._previous = {signal_module.SIGINT: signal_module.default_int_handler}
    gate._handle(signal_module.SIGINT, None)  # held: optuna is between trials
    assert gate.pending == signal_module.SIGINT and "again" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        gate._handle(signal_module.SIGINT, None)


def test_a_signal_inside_a_trial_waits_for_the_storage_call_it_lands_in():
    """A suspect of the rare hang of `test_signalled_worker_leaves_its_trial_queued_again`:
    with the gate open (inside a trial), Ctrl-C raised halfway through a storage call (the
    per-epoch report) could leave a lock or a connection taken, so that queueing the trial
    again or exiting waited forever. Such calls now hold the signal until they are done."""
    from ctrbench.tune.study import SignalGate

    finished = []
    with pytest.raises(KeyboardInterrupt), SignalGate() as gate:
        gate.open = True  # inside a trial
        with gate.held():  # a storage call
            signal.raise_signal(signal.SIGINT)
            finished.append("the call")
        finished.append("after the call")  # never: the held signal is raised here
    assert finished == ["the call"]
    assert gate.pending is None  # raised, not held any longer
