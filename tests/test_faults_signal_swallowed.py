"""A signal that a library turns into another exception still stops the run (twelfth session).

CI (f7d7784) caught it: SIGTERM reached a run while numpy's ``fromfile`` was reading the training
split inside ``np.load``; numpy turned the handler's ``SystemExit`` into ``TypeError: expected
str, bytes or os.PathLike object, not BufferedReader``, the runner's ``except Exception`` took
it for a failed run and wrote a "failed" record with that error, and the process went on as if
nothing had been asked of it. Now the handlers count the signal (``errors.note_signal``), and
the places that catch ``Exception`` around library calls (the runner's training and pool worker,
``tune``'s trial) raise the signal's own exception instead when one was raised since they began
(``errors.signals_raised`` / ``signal_exception``).
The tests below make the library's conversion happen on purpose: a training function that
sends itself the signal and re-raises what its handler raised as that ``TypeError``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import train_fixtures as tf

from ctrbench import errors

HERE = Path(__file__).resolve().parent

PRELUDE = """
from ctrbench.errors import install_termination_handler
import ctrbench.engine.train

def swallowing_train(*args, **kwargs):  # what numpy's fromfile did to the handler's exception
    try:
        os.kill(os.getpid(), signal.{signal})
        signal.pause()
    except BaseException:
        raise TypeError("expected str, bytes or os.PathLike object, not BufferedReader")

ctrbench.engine.train.train_and_evaluate = swallowing_train  # execute_one imports it per run
install_termination_handler()
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted",
                                 rows=(320, 100, 100))


@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 128 + signal.SIGTERM),
                                              ("SIGINT", None)])
def test_a_signal_turned_into_a_library_error_stops_the_run_without_a_record(tmp_path, store,
                                                                              name, status):
    tf.write_cards(tmp_path / "cards", {"tiny": tf.TINY_CARD})
    results = tmp_path / "results"
    script = tmp_path / "run.py"
    script.write_text(tf.runner_script(HERE, store.path, results, "tiny",
                                       PRELUDE.format(signal=name)))
    env = {**os.environ, "CTRBENCH_CARDS": str(tmp_path / "cards"),
           "CTRBENCH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    # before: exit 0 and [["failed", "TypeError: expected str, ..."]] with a failed record
    assert '"failed"' not in done.stdout, done.stdout
    if status is not None:
        assert done.returncode == status, done.stderr
    else:  # Ctrl-C: KeyboardInterrupt, Python's own exit status for it
        assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr, done.stderr
    folder = results / "runs" / "planted" / "tiny"
    left = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    assert left == [], left  # no record, no temporary file, no lock


def test_signal_exception_names_a_signal_raised_since_the_mark():
    before = errors.signals_raised()
    assert errors.signal_exception(before) is None
    with pytest.raises(SystemExit) as caught:
        errors._raise_system_exit(signal.SIGTERM, None)
    assert caught.value.code == 143
    cause = TypeError("from a library")
    exc = errors.signal_exception(before, cause)
    assert isinstance(exc, SystemExit) and exc.code == 143 and exc.__cause__ is cause
    later = errors.signals_raised()
    assert errors.signal_exception(later) is None  # an old signal says nothing about later
    with pytest.raises(KeyboardInterrupt):
        errors._raise_keyboard_interrupt(signal.SIGINT, None)
    assert isinstance(errors.signal_exception(later), KeyboardInterrupt)


def test_a_failure_after_an_earlier_caught_interrupt_is_still_a_failure(tmp_path, store,
                                                                        monkeypatch):
    """In one process (a notebook, the tests' own process), a Ctrl-C caught earlier must not
    turn a later run's real failure into an interrupt."""
    from ctrbench.runs import runner

    with pytest.raises(KeyboardInterrupt):
        errors._raise_keyboard_interrupt(signal.SIGINT, None)
    tf.write_cards(tmp_path / "cards", {"tiny": tf.TINY_CARD})
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))

    def failing(*args, **kwargs):
        raise ValueError("a real failure")

    monkeypatch.setattr("ctrbench.engine.train.train_and_evaluate", failing)
    handle = runner.DatasetHandle("planted", store, {"name": "planted"})
    specs = runner.plan_runs(handle, runner.resolve_cards("tiny"), [0], tmp_path / "results")
    (result,) = runner.execute(specs, handle, device="cpu", show_progress=False)
    assert result.status == "failed" and "a real failure" in result.detail


def test_tunes_signal_gate_counts_the_signal_it_raises():
    """A trial's ``except Exception`` asks ``signal_exception``: the gate's own raise (a
    signal while training) must be counted like the handlers' ones."""
    from ctrbench.tune.study import SignalGate

    before = errors.signals_raised()
    gate = SignalGate()
    gate._previous = {signal.SIGINT: signal.default_int_handler}
    with pytest.raises(KeyboardInterrupt):
        gate._raise(signal.SIGINT, None)
    assert isinstance(errors.signal_exception(before), KeyboardInterrupt)


class _Finalizer:
    """Runs the SIGTERM handler from ``__del__``, as Python runs a handler inside a weakref
    callback that a garbage collection started: the exception is printed and dropped."""

    def __del__(self):
        errors._raise_system_exit(signal.SIGTERM, None)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one
def test_a_signal_whose_exception_a_finalizer_dropped_still_stops_training(store, monkeypatch):
    """A ``tune`` worker sent SIGTERM trained on for ever (CI at 576028c; a stack dump showed
    its handler had run inside SQLAlchemy's ``_collection_gced``, "Exception ignored"): the
    training loop now raises the signal's exception at its next step."""
    import ctrbench.engine.train as train_mod
    from ctrbench.cards import model_card_from_dict

    card = model_card_from_dict({
        "name": "tiny", "arch": "tiny_logistic", "params": {"embedding_dim": 4},
        "train": {"lr": 0.05, "batch_size": 32, "eval_batch_size": 256, "epochs": 50,
                  "patience": 50, "l2": 1e-4}})
    steps_after: list[int] = []
    original = train_mod.TrainStep.__call__

    def step(self, batch, label):
        if steps_after:
            steps_after[0] += 1
        elif self.steps_taken == 3:  # the fourth step: a finalizer runs the handler
            steps_after.append(0)
            _Finalizer()  # dropped at once: __del__ raises, Python prints and goes on
        self.steps_taken += 1
        return original(self, batch, label)

    monkeypatch.setattr(train_mod.TrainStep, "steps_taken", 0, raising=False)
    monkeypatch.setattr(train_mod.TrainStep, "__call__", step)
    with pytest.raises(SystemExit) as caught:  # before: all 50 epochs trained, then returned
        train_mod.train_and_evaluate(store, card, seed=0, device="cpu", progress=False)
    assert caught.value.code == 128 + signal.SIGTERM
    assert steps_after == [0]  # stopped before the next step
