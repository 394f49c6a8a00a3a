"""Optuna studies over a model card's ``[search]`` space: seeded, pruned, resumable, shared.

The objective is the best validation AUC of :func:`ctrbench.engine.train.train_and_evaluate` with
``evaluate_test=False``: tuning never looks at the test split. Each epoch's validation AUC is
reported to the trial, so the pruner can stop hopeless trials early (state PRUNED). A trial that
raises (a NaN loss, any exception) is recorded FAIL with its error in the user attribute
``error``, and the study goes on; a sampled point the model refuses (a combination of values the
checks before the study could not rule out, e.g. MIAN's ``heads`` inside a range whose ends
divide its width) is recorded FAIL too, and stops the study at once (user attribute
``refused``): every later trial would risk the same refusal.

Counting: ``n_trials`` means "until the study holds ``n_trials`` COMPLETE or PRUNED trials",
counting those already in the storage, so re-running the same command resumes an interrupted
study and several workers (processes, machines) on one storage share the work without
overshooting: a worker starts a trial only while fewer than ``n_trials`` trials are done, running
or queued, and a trial whose lower-numbered peers already make up ``n_trials`` is dropped (FAIL,
``surplus``) — this closes the race between two workers asking at the same moment.

Seeds: the sampler that draws trial ``k`` is seeded with ``derive_seed(seed, "sampler", k)`` and
the trial trains with ``derive_seed(seed, "train", k)`` (user attribute ``train_seed``). A single
worker therefore draws the same parameters whether the study ran in one go or was interrupted and
resumed; with several workers the order of trials is not reproducible, each trial still is.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from ctrbench.cards import ModelCard, config_hash
from ctrbench.data.store import PreparedData
from ctrbench.errors import (
    CardError,
    CtrbenchError,
    note_signal,
    signal_exception,
    signals_raised,
)
from ctrbench.progress import message
from ctrbench.record import EpochRow
from ctrbench.tune import space as tune_space
from ctrbench.tune.space import PRUNERS, SAMPLERS, Dimension
from ctrbench.tune.storage import (
    StudyStorage,
    fail_stale,
    reclaim_dead_workers,
    retry_interrupted,
    worker_attrs,
)

log = logging.getLogger(__name__)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE = (TrialState.RUNNING, TrialState.WAITING)
POLL_SECONDS = 2.0  # how often a worker re-checks while other workers finish the last trials
MAX_ERROR_CHARS = 4000
# a worker whose last trials all failed stops (failed trials do not count towards --trials: a
# space where every trial fails, e.g. diverges or builds no model, would otherwise run forever)
MAX_FAILED_IN_A_ROW = 20


@dataclass(frozen=True)
class TuneSettings:
    """How a study is run (the command-line options of ``ctrbench tune``)."""

    n_trials: int = 20
    timeout: float | None = None  # seconds after which no new trial starts
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    max_epochs: int | None = None  # cap on train.epochs per trial
    device: str = "auto"
    prune_after: int = 5  # median pruner: complete trials needed before it prunes
    card_first: bool = True  # queue the card's own values as the study's first trial
    progress: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise CtrbenchError(f"unknown sampler {self.sampler!r}; use one of {SAMPLERS}")
        if self.pruner not in PRUNERS:
            raise CtrbenchError(f"unknown pruner {self.pruner!r}; use one of {PRUNERS}")
        if self.n_trials < 0:
            raise CtrbenchError("--trials must be >= 0")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise CtrbenchError("--epochs must be >= 1")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise CtrbenchError("--timeout must be a finite number of seconds > 0")
        if self.prune_after < 0:
            raise CtrbenchError("--prune-after must be >= 0")


@dataclass
class TuneSummary:
    """Where a study stands after this worker stopped."""

    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    n_running: int
    stop_reason: str
    best: FrozenTrial | None
    failing: str | None = None  # why it stopped when its trials kept failing


class SurplusTrial(Exception):
    """A trial asked for after other workers had already started the requested number."""


class SignalGate:
    """Holds Ctrl-C and SIGTERM everywhere a worker talks to the study's storage: raised inside
    optuna's bookkeeping, the signal broke optuna (``UnboundLocalError: updated_state``, or a
    heartbeat thread left running, so the process never exited); raised inside any storage call
    (a suggestion, a user attribute, a report), it could leave SQLAlchemy's connection pool
    with its lock taken, so that queueing the trial again waited forever (the worker never
    exited). A signal acts at once only while the trial trains (:meth:`opened`, storage-free
    but for the per-epoch report, which is :meth:`held`); a held one is raised when training
    starts or when :meth:`__exit__` is reached; a second signal while one is held acts at once
    (the bookkeeping may wait on a locked storage)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.open = False
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGate:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if kind is None:
            self.deliver()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.open or self.pending is not None:  # in a trial, or asked twice: at once
            self._raise(signum, frame)
            return
        self.pending = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping once optuna has recorded "
                         "the trial (send it again to stop at once)\n")

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Let a signal act at once in the body (training); one held until now is raised
        first."""
        self.open = True
        try:
            self.deliver()
            yield
        finally:
            self.open = False

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold signals for the body inside :meth:`opened` too (a storage call made while
        training). A signal that came meanwhile is raised when the body ends normally (else
        when the trial ends)."""
        was_open, self.open = self.open, False
        try:
            yield
        finally:
            self.open = was_open
        if was_open:
            self.deliver()

    def deliver(self) -> None:
        """Raise a held signal now (its own handler's way: KeyboardInterrupt, exit 143)."""
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self._raise(signum, None)

    def _raise(self, signum: int, frame: Any) -> None:
        note_signal(signum)  # signal_exception: if a library turns it into another error
        handler = self._previous.get(signum, signal.getsignal(signum))
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:  # the default action (SIGTERM: terminate)
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


def derive_seed(seed: int, purpose: str, number: int) -> int:
    """A 31-bit seed for ``purpose`` ("sampler" or "train") of trial ``number``."""
    digest = hashlib.sha256(f"ctrbench-tune:{purpose}:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def make_sampler(kind: str, space: list[Dimension], seed: int) -> BaseSampler:
    if kind == "tpe":
        # constant_liar: workers running in parallel avoid proposing the same point
        return TPESampler(seed=seed, constant_liar=True)
    if kind == "random":
        return RandomSampler(seed=seed)
    return GridSampler(tune_space.grid(space), seed=seed)


def make_pruner(kind: str, max_epochs: int, prune_after: int) -> BasePruner:
    if kind == "median":
        return MedianPruner(n_startup_trials=prune_after, n_warmup_steps=0)
    if kind == "hyperband":
        return HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs),
                               reduction_factor=3)
    return NopPruner()


def study_signature(card: ModelCard, data: PreparedData, settings: TuneSettings) -> dict[str, Any]:
    """What every trial of one study must share (checked when a study is loaded)."""
    return {
        "model": card.name,
        "dataset": str(data.meta.get("dataset", data.path.name)),
        "data_hash": str(data.meta.get("data_hash") or config_hash(data.identity)),
        "model_hash": config_hash(card.resolved()),
        "space_hash": config_hash(card.search),
        "max_epochs": settings.max_epochs or 0,
    }


def open_study(handle: StudyStorage, name: str,
               signature: dict[str, Any]) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists; refuse one made for other settings.

    Returns the study and whether this call created it (exactly one worker does).
    """
    created = False
    try:
        try:
            study = optuna.create_study(study_name=name, storage=handle.storage,
                                        direction="maximize")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=handle.storage)
    except Exception as exc:
        raise CtrbenchError(f"cannot open study {name!r} in {handle.display}: {exc}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise CtrbenchError(f"study {name!r} in {handle.display} minimises its objective",
                            hint="choose another --study name")
    stored = {k[len("ctrbench_"):]: v for k, v in study.user_attrs.items()
              if k.startswith("ctrbench_")}
    differ = {k: (stored[k], v) for k, v in signature.items() if k in stored and stored[k] != v}
    if differ:
        what = "; ".join(f"{k}: study has {a!r}, this run {b!r}" for k, (a, b) in differ.items())
        raise CtrbenchError(
            f"study {name!r} in {handle.display} was made for other settings ({what})",
            hint="give this search its own --study name (or its own --storage)",
        )
    for key, value in signature.items():
        if key not in stored:
            study.set_user_attr(f"ctrbench_{key}", value)
    return study, created


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


class TrialObjective:
    """Trains one sampled configuration; reports each epoch's validation AUC to the pruner."""

    def __init__(self, data: PreparedData, card: ModelCard, space: list[Dimension],
                 settings: TuneSettings) -> None:
        self.data, self.card, self.space, self.settings = data, card, space, settings
        self.predicted_number = -1  # the number the sampler was seeded for (run_study sets it)
        self.gate = SignalGate()  # run_study enters it around optuna's optimize

    def _check_surplus(self, trial: optuna.Trial) -> None:
        ahead = sum(1 for t in trial.study.get_trials(deepcopy=False, states=(*DONE, *ACTIVE))
                    if t.number < trial.number)
        if ahead >= self.settings.n_trials:
            trial.set_user_attr("error", "surplus: other workers had already started the "
                                         f"{self.settings.n_trials} requested trials")
            raise SurplusTrial(f"trial {trial.number} is not needed")

    def __call__(self, trial: optuna.Trial) -> float:
        try:  # a signal waits for the storage calls; it stops training at once (_train)
            return self._run(trial)
        except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C; SIGTERM under its handler
            what = ("Ctrl-C" if isinstance(exc, KeyboardInterrupt)
                    else "SIGTERM" if exc.code == 128 + signal.SIGTERM else f"exit {exc.code}")
            try:
                retry_interrupted(trial.study, trial._trial_id, f"interrupted ({what})",
                                  fail=isinstance(exc, SystemExit))
            except Exception:  # never hide the interruption; a RUNNING trial is reclaimed later
                log.warning("could not queue trial %d again", trial.number, exc_info=True)
            raise

    def _run(self, trial: optuna.Trial) -> float:
        s = self.settings
        for key, value in worker_attrs().items():  # first: a killed worker is then found dead
            trial.set_user_attr(key, value)
        self._check_surplus(trial)
        if trial.number != self.predicted_number and s.sampler != "grid":
            # another worker took the predicted number: reseed for this trial's own number
            trial.study.sampler = make_sampler(s.sampler, self.space,
                                               derive_seed(s.seed, "sampler", trial.number))
        if "retry_of" in trial.user_attrs and "train_seed" in trial.user_attrs:
            train_seed = int(trial.user_attrs["train_seed"])  # what the killed trial trained
        else:
            train_seed = derive_seed(s.seed, "train", trial.number)
        trial.set_user_attr("train_seed", train_seed)
        signals_before = signals_raised()
        try:
            values = tune_space.suggest(trial, self.space)
            card = self.card.with_overrides(tune_space.to_overrides(values))
            self._check_point(trial, card, values)
            outcome = self._train(trial, card, train_seed)
        except optuna.TrialPruned:
            raise
        except CtrbenchError as exc:  # NaN loss, an invalid sampled value: one clear line
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
            raise
        except Exception as exc:  # a bug: keep its traceback for the table and the log
            interrupted = signal_exception(signals_before, exc)
            if interrupted is not None:  # a library turned the signal into another error
                raise interrupted from exc
            text = "".join(traceback.format_exception(exc))
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
            trial.set_user_attr("traceback", text[-MAX_ERROR_CHARS:])
            log.warning("trial %d raised an unexpected error:\n%s", trial.number, text)
            raise
        value = float(outcome.valid.get("auc", math.nan))
        trial.set_user_attr("best_epoch", outcome.best_epoch)
        trial.set_user_attr("epochs_run", len(outcome.epochs))
        trial.set_user_attr("valid_logloss", float(outcome.valid.get("logloss", math.nan)))
        if not math.isfinite(value):
            trial.set_user_attr("error", f"validation AUC is {value}")
            raise CtrbenchError(f"trial {trial.number}: validation AUC is {value}")
        return value

    def _check_point(self, trial: optuna.Trial, card: ModelCard, values: dict[str, Any]) -> None:
        """A CardError (and the user attribute ``refused``) when the model cannot be built with
        the sampled values: the study stops at this first refusal, before any training."""
        refusal = tune_space.build_refusal(card, tune_space.check_schema(self.data.schema))
        if refusal is None:
            return
        point = ", ".join(f"{k} = {tune_space.show(v)}" for k, v in sorted(values.items())
                          if k.startswith("params."))
        trial.set_user_attr("refused", True)
        raise CardError(f"trial {trial.number}: the sampled point ({point}) is refused: "
                        f"{refusal}")

    def _train(self, trial: optuna.Trial, card: ModelCard, seed: int):
        from ctrbench.engine.train import train_and_evaluate

        def on_epoch(row: EpochRow) -> None:
            with self.gate.held():  # storage calls: a signal waits until they are done
                trial.report(float(row.valid_auc), row.epoch)
                prune = trial.should_prune()
                if prune:
                    trial.set_user_attr("pruned_at_epoch", row.epoch)
            if prune:
                raise optuna.TrialPruned(
                    f"validation AUC {row.valid_auc:.5f} at epoch {row.epoch} is below the "
                    "pruner's threshold")

        with self.gate.opened():  # training: a signal stops it at once
            return train_and_evaluate(self.data, card, seed, device=self.settings.device,
                                      max_epochs=self.settings.max_epochs, on_epoch=on_epoch,
                                      evaluate_test=False, progress=self.settings.progress)


def _announce_wait(study: optuna.Study, handle: StudyStorage, announced: set[int]) -> None:
    """Say once per trial why this worker waits: trials running elsewhere, and for how long a
    dead worker's trial can keep us waiting (twice the heartbeat interval)."""
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.number not in announced]
    if not running:
        return
    announced.update(t.number for t in running)
    grace = getattr(handle.storage, "grace_period", None) or 0
    where = ", ".join(f"trial {t.number} ({t.user_attrs.get('worker', 'worker unknown')})"
                      for t in running)
    message(f"waiting for {where}, running in other worker(s); if a worker died on another "
            f"host, its trial is taken over when its heartbeat is older than {grace} s "
            "(twice --heartbeat); a dead worker on this host is taken over at once")


def run_study(
    study: optuna.Study,
    handle: StudyStorage,
    data: PreparedData,
    card: ModelCard,
    space: list[Dimension],
    settings: TuneSettings,
    on_trial: Callable[[FrozenTrial, dict[TrialState, int]], None] | None = None,
    new_study: bool = False,
) -> TuneSummary:
    """Run trials until the study holds ``settings.n_trials`` complete or pruned trials.

    ``new_study``: this worker created the study, so it queues the card's own values as the
    first trial (``settings.card_first``; not with the grid sampler, whose grid covers them).
    """
    epochs = settings.max_epochs or card.train.epochs
    study.pruner = make_pruner(settings.pruner, epochs, settings.prune_after)
    target = settings.n_trials
    grid_check = None
    if settings.sampler == "grid":
        grid_check = make_sampler("grid", space, settings.seed)
        target = min(target, math.prod(len(v) for v in tune_space.grid(space).values()))
    objective = TrialObjective(data, card, space, replace(settings, n_trials=target))
    if new_study and settings.card_first and settings.sampler != "grid":
        defaults = tune_space.card_values(card, space)
        if defaults is not None:
            study.enqueue_trial(defaults, user_attrs={"origin": "card"}, skip_if_exists=True)
    if settings.card_first and settings.sampler != "grid":
        outside = tune_space.card_values_outside(card, space)
        if outside:
            message(f"{card.name}: the card's own values are not a point of its search space "
                    f"({'; '.join(outside)}): they are not the study's first trial, and every "
                    "trial changes them (restate the dimension in the card to keep them)")
    failures: list[str] = []  # this worker's failed trials since its last complete or pruned
    refused: list[str] = []  # a sampled point the model refused: the study stops at once

    def after_trial(study: optuna.Study, frozen: FrozenTrial) -> None:
        error = str(frozen.user_attrs.get("error", ""))
        if frozen.state in DONE:
            failures.clear()
        elif frozen.state == TrialState.FAIL and not error.startswith(("surplus", "interrupted")):
            failures.append(error.splitlines()[0] if error else "no error recorded")
            if frozen.user_attrs.get("refused"):
                refused.append(failures[-1])
        if on_trial is not None:
            on_trial(frozen, count_states(study))

    start = time.monotonic()
    stop_reason = ""
    announced: set[int] = set()
    while not stop_reason:
        fail_stale(study, handle)
        reclaimed = reclaim_dead_workers(study)
        if reclaimed:
            message(f"trial(s) {reclaimed} were RUNNING in a worker on this host that is gone: "
                    "marked FAIL, their parameters queued again with the same training seed")
        counts = count_states(study)
        done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        running = counts[TrialState.RUNNING]  # queued (WAITING) trials are ours to run
        if refused:  # checked first: a refused point is said even when the target is met
            stop_reason = (f"stopped at the first refused point of the [search] space: "
                           f"{refused[0]}; fix the card or its [search] space, then re-run")
        elif done >= target:
            stop_reason = f"the study has {done} complete or pruned trials (asked for {target})"
        elif settings.timeout is not None and time.monotonic() - start >= settings.timeout:
            stop_reason = f"timeout of {settings.timeout:g} s reached"
        elif grid_check is not None and grid_check.is_exhausted(study):
            stop_reason = "every point of the grid has been tried"
        elif len(failures) >= MAX_FAILED_IN_A_ROW:
            stop_reason = (f"stopped: {len(failures)} trials in a row failed (the last: "
                           f"{failures[-1]}); fix the card or its [search] space, then re-run")
        elif done + running >= target:
            if not handle.heartbeat:
                stop_reason = (f"the remaining trials are running in other workers ({running}); "
                               "if they are dead, re-run with --fail-running")
            else:  # others finish the last trials; if one fails or dies, take its place
                _announce_wait(study, handle, announced)
                time.sleep(POLL_SECONDS)
        else:
            number = len(study.get_trials(deepcopy=False))
            objective.predicted_number = number
            study.sampler = make_sampler(settings.sampler, space,
                                         derive_seed(settings.seed, "sampler", number))
            try:
                with objective.gate:  # Ctrl-C / SIGTERM wait for optuna's bookkeeping
                    study.optimize(objective, n_trials=1, catch=(Exception,),
                                   callbacks=[after_trial], gc_after_trial=False)
            except ValueError as exc:
                if not str(exc).startswith("Cannot tell a"):
                    raise
                # SQLite has no row lock: two workers can pop the same queued trial, and the
                # one that finishes second may not record it again; the study goes on
                message(f"a queued trial was also run by another worker, which recorded it "
                        f"first ({exc})")
    counts = count_states(study)
    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        best = None
    return TuneSummary(
        study_name=study.study_name, storage=handle.display,
        n_complete=counts[TrialState.COMPLETE], n_pruned=counts[TrialState.PRUNED],
        n_failed=counts[TrialState.FAIL], n_running=counts[TrialState.RUNNING],
        stop_reason=stop_reason, best=best,
        failing=stop_reason if refused or len(failures) >= MAX_FAILED_IN_A_ROW else None,
    )
