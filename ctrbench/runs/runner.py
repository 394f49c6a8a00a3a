"""The multi-run protocol: models x seeds on one dataset, each run recorded once.

- Expansion: model specs (names, groups, globs) x seeds; each card resolved with overrides
  (card < config file < ``--set``; ``--epochs`` caps ``train.epochs``).
- Identity: run id = ``config_hash`` of the prepared data's identity, the resolved model config
  and the seed (not the device). What a record file holds is judged by one rule
  (:func:`ctrbench.runs.state.record_state`): a run whose own record is finished is skipped
  (unless ``force``); a finished record of another configuration, or a file this ctrbench
  cannot read, is never destroyed: the run is refused (status ``refused``) unless ``force``,
  which first moves the old file to ``replaced/``.
- Safety: a per-run OS lock (:mod:`ctrbench.runs.lock`) so that concurrent processes never run
  the same run; records and scores are written atomically, scores first, then the record, so an
  interrupted run leaves either the old record or the new one, never a partial one. A run that
  raises (NaN loss, OOM, any exception) is recorded as ``failed`` and the protocol goes on. A
  results directory that refuses writes is found before any training; a disk that fills at
  the end of a run gets nothing half-written, and the outcome goes to a fallback directory
  under a name of its own (status ``unsaved``, the detail says where).
- Parallelism: ``jobs > 1`` runs independent runs in spawned worker processes, each with
  ``usable_cores // jobs`` torch threads (or ``threads``) and one device from ``devices``
  (round-robin); a worker whose parent dies (kill -9) stops its run, releases its lock and
  exits (:mod:`ctrbench.runs.orphans`); a worker that dies (kill -9, OOM, a native crash)
  costs only its own run, recorded as failed, and a new worker goes on (:mod:`.pool`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import signal
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrbench import progress as progress_mod
from ctrbench.cards import (
    ModelCard,
    _merge,
    _read_toml,
    check_keys,
    config_hash,
    load_model_card,
    model_names,
    parse_set_option,
    resolve_model_spec,
)
from ctrbench.data.store import PreparedData
from ctrbench.engine.threads import apply_threads, default_threads
from ctrbench.errors import (
    CardError,
    WriteError,
    install_termination_handler,
    raise_if_signalled,
    signal_exception,
    signals_raised,
)
from ctrbench.models.fast import onednn_linear
from ctrbench.record import EpochRow, RunRecord, record_path, scores_path
from ctrbench.runs import orphans
from ctrbench.runs.lock import RunLock
from ctrbench.runs.preflight import check_record_dirs, check_runnable
from ctrbench.runs.state import RecordState, record_state, save_outcome
from ctrbench.validate import require_table


@dataclass(frozen=True)
class DatasetHandle:
    """A prepared dataset and the resolved card that produced it."""

    name: str
    data: PreparedData
    config: dict[str, Any]


@dataclass(frozen=True)
class RunSpec:
    """One (dataset, model, seed) with its resolved card and identity."""

    dataset: str
    model: str
    seed: int
    card: ModelCard
    run_id: str
    record_file: Path
    identity: dict[str, Any] = field(default_factory=dict, compare=False)  # dataset identity


@dataclass
class RunResult:
    spec: RunSpec
    # finished | failed | skipped | locked (this run, going on elsewhere) | queued (on Slurm)
    # | interrupted | refused | unsaved
    status: str
    detail: str = ""


NOT_DONE = ("failed", "refused", "unsaved")  # statuses after which `run` exits 1


@dataclass
class Overrides:
    """Configuration overrides in two layers, the config file below ``--set``; each layer for
    every model (``common``) and per model name (``per_model``, more specific)."""

    common: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``--set model:key=value`` items by model name (a config file may hold tables for models
    #: a command does not select; an item typed for one must name a selected model)
    set_items: dict[str, list[str]] = field(default_factory=dict)
    #: the ``--set`` layer: wins over the whole file, its per-model tables included
    set_common: dict[str, Any] = field(default_factory=dict)
    set_per_model: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_model(self, name: str) -> dict[str, Any]:
        from_file = _merge(self.common, self.per_model.get(name, {}))
        from_set = _merge(self.set_common, self.set_per_model.get(name, {}))
        return _merge(from_file, from_set)

    def model_names(self) -> set[str]:
        """The model names that per-model overrides (file or ``--set``) address."""
        return set(self.per_model) | set(self.set_per_model)


# --------------------------------------------------------------------------- configuration
def load_overrides(config_file: Path | None = None, set_items: Sequence[str] = ()) -> Overrides:
    """Merge a config TOML file and ``--set`` items (``key=value`` or ``model:key=value``).

    Config file layout: ``[train]`` / ``[params]`` for every model, ``[models.<name>.train]``
    / ``[models.<name>.params]`` for one model. ``--set`` wins over the file (over its
    per-model tables too); within each, a per-model value wins over a common one.
    """
    out = Overrides()
    if config_file is not None:
        data = _read_toml(Path(config_file))
        where = f"config file {config_file}"
        check_keys(where, data, ["train", "params", "models"])
        for key in ("train", "params", "models"):
            require_table(f"{where} [{key}]", data.get(key, {}), f"[{key}] ...")
        out.common = {k: data[k] for k in ("train", "params") if k in data}
        for name, table in data.get("models", {}).items():
            require_table(f"{where} [models.{name}]", table, f"[models.{name}.train] ...")
            check_keys(f"{where} [models.{name}]", table, ["train", "params"])
            out.per_model[name] = dict(table)
    for item in set_items:
        key = item.split("=", 1)[0]
        if ":" in key:
            model, rest = item.split(":", 1)
            out.set_per_model[model] = _merge(out.set_per_model.get(model, {}),
                                              parse_set_option([rest]))
            out.set_items.setdefault(model, []).append(item)
        else:
            out.set_common = _merge(out.set_common, parse_set_option([item]))
    return out


def _check_params(card: ModelCard) -> None:
    """Validate the card's params against its architecture's typed config before any run
    starts: an unknown key or a bad value is a CardError naming the card and the key."""
    from ctrbench.engine.train import training_config
    from ctrbench.errors import UnknownNameError
    from ctrbench.models import config_of

    try:
        config_class = config_of(card.arch)
    except UnknownNameError as exc:
        raise CardError(f"model card {card.name!r} ({card.path or 'no file'}): {exc.args[0]}",
                        hint=exc.hint) from None
    config_class.from_params(
        f"model {card.name!r} params (architecture {card.arch!r})", card.params)
    training_config(card)  # params.sparse against train.optimizer


def resolve_cards(models: str | Sequence[str], overrides: Overrides | None = None,
                  epochs: int | None = None) -> list[ModelCard]:
    """Selected model cards with overrides applied and ``epochs`` as a cap."""
    overrides = overrides or Overrides()
    names = resolve_model_spec(models)
    unknown = sorted(overrides.model_names() - set(model_names()))
    if unknown:
        close = {n: difflib.get_close_matches(n, names, n=1, cutoff=0.5) for n in unknown}
        guesses = [f"{n} -> {c[0]}?" for n, c in close.items() if c]
        raise CardError(f"overrides name unknown model(s): {', '.join(unknown)}"
                        + (f" (did you mean: {', '.join(guesses)})" if guesses else ""),
                        hint="per-model overrides are `model:key=value` or [models.<name>]")
    unselected = [item for name, items in overrides.set_items.items() if name not in names
                  for item in items]
    if unselected:
        raise CardError(f"--set {', '.join(unselected)}: names a model that is not selected "
                        f"(selected: {', '.join(names)})",
                        hint="add the model to --models, or drop the override")
    cards = []
    for name in names:
        written = load_model_card(name)
        card = written.with_overrides(overrides.for_model(name))
        if epochs is not None:
            if epochs < 1:
                raise CardError("--epochs must be >= 1")
            card = card.with_overrides({"train": {"epochs": min(card.train.epochs, epochs)}})
        _check_params(card)
        cards.append(_one_spelling(card, written.params))
    return cards


def _one_spelling(card: ModelCard, written: Mapping[str, Any]) -> ModelCard:
    """``card`` with its params in their rules' form (``dropout=0`` and ``0.0`` are one
    configuration) and without overrides that change nothing: a parameter the card as
    ``written`` does not list, set to its default, and ``sparse`` (which ``train.optimizer``
    decides). One configuration, one run id; the built-in cards keep theirs."""
    from ctrbench.models import config_of

    config = config_of(card.arch)
    params, defaults = config.normalised(card.params), config().as_params()
    kept = {key: value for key, value in params.items() if key != "sparse"
            and (key in written or value != defaults[key])}
    return dataclasses.replace(card, params=kept)


def run_id(dataset: DatasetHandle, card: ModelCard, seed: int) -> str:
    return config_hash({"dataset": dataset.data.identity, "model": card.resolved(),
                        "seed": int(seed)})


def plan_runs(dataset: DatasetHandle, cards: Sequence[ModelCard], seeds: Sequence[int],
              results_root: Path) -> list[RunSpec]:
    """Every (model, seed) as a RunSpec, models in the given order, seeds within."""
    return [RunSpec(dataset=dataset.name, model=card.name, seed=int(seed), card=card,
                    run_id=run_id(dataset, card, seed),
                    record_file=record_path(results_root, dataset.name, card.name, int(seed)),
                    identity=dict(dataset.data.identity))
            for card in cards for seed in seeds]


def finished_record(spec: RunSpec) -> RunRecord | None:
    """The spec's own finished record (:func:`record_state`), else None."""
    state = record_state(spec)
    return state.record if state.kind == "finished" else None


def refusal(state: RecordState) -> str:
    return (f"not run: the record file holds {state.detail}; it is kept. Pass --force to "
            "replace it (it is moved to replaced/), or --results DIR to keep both")


def pending(specs: Sequence[RunSpec], force: bool = False) -> list[RunSpec]:
    return [s for s in specs if force or finished_record(s) is None]


def lock_path(record_file: Path) -> Path:
    return record_file.with_suffix(".lock")


def _lock_failure(lock: RunLock, exc: OSError) -> str:
    return f"cannot create the lock file {lock.path}: {exc.strerror or exc}"


def _other_holder(spec: RunSpec, lock: RunLock) -> str | None:
    """Who holds the run's lock when it is another configuration of this (model, seed) (its
    run id differs), in words; None when it runs this very run, or names no run id (a lock
    file of an older ctrbench)."""
    holder = lock.holder or {}
    other = holder.get("run_id")
    if other is None or other == spec.run_id:
        return None
    return (f"{lock.path} is held by run {other}, another configuration of this model and "
            f"seed (pid {holder.get('pid')} on {holder.get('host', '?')})")


def _held(spec: RunSpec, lock: RunLock) -> RunResult:
    """The result of a run whose lock another process holds: ``locked`` when that process runs
    this very run; ``refused`` when it runs another configuration, whose finished record would
    then block this one (never done, so never reported as in progress)."""
    other = _other_holder(spec, lock)
    if other is not None:
        return RunResult(spec, "refused", f"not run: {other}; run again once it has ended "
                                          "(with --force to replace its record), or use "
                                          "--results DIR to keep both")
    holder = lock.holder or {}
    return RunResult(spec, "locked", f"in progress (pid {holder.get('pid')} on "
                                     f"{holder.get('host', '?')})")


# --------------------------------------------------------------------------- one run
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _clean_stale_temporaries(record_file: Path) -> None:
    """Temporary files of this run left by a killed writer (we hold the run's lock)."""
    for pattern in (f".{record_file.name}.tmp-*", f".{record_file.stem}.tmp-*.npz"):
        for tmp in record_file.parent.glob(pattern):
            tmp.unlink(missing_ok=True)


def _save(spec: RunSpec, record: RunRecord, arrays: dict[str, Any] | None) -> str:
    """Save the outcome (archive, fallback: :func:`save_outcome`); "" when at its place, else
    where it went. Raises :class:`WriteError` when no directory accepted it."""
    relative = Path(spec.dataset) / spec.model / spec.record_file.name
    saved = save_outcome(spec.record_file, record, arrays, relative)
    if saved.fallback is None:
        return ""
    move = f"move it to {spec.record_file}"
    if arrays is not None:
        move += f" and {scores_path(saved.fallback)} to {scores_path(spec.record_file)}"
    return (f"the results disk refused it ({saved.errors[0]}); saved to {saved.fallback} "
            f"instead: {move}")


def _base_record(spec: RunSpec, dataset: DatasetHandle, env: dict[str, Any]) -> RunRecord:
    return RunRecord(run_id=spec.run_id, dataset=spec.dataset, model=spec.model, seed=spec.seed,
                     status="running", dataset_config=dataset.config,
                     dataset_identity=dataset.data.identity, model_config=spec.card.resolved(),
                     model_hash=config_hash(spec.card.resolved()), environment=env,
                     started_at=_now(), init=spec.card.train.init)


def execute_one(spec: RunSpec, dataset: DatasetHandle, *, device: str = "auto",
                force: bool = False, show_progress: bool = True) -> RunResult:
    """Run one spec under its lock and write its record (finished or failed)."""
    from ctrbench.engine.train import resolve_device, train_and_evaluate
    from ctrbench.environment import environment

    lock = RunLock(lock_path(spec.record_file), run_id=spec.run_id)
    try:
        acquired = lock.acquire()
    except OSError as exc:  # the other runs go on (the directory was writable at the start)
        return RunResult(spec, "failed", f"{_lock_failure(lock, exc)} (the results directory "
                                         "must be writable and not full)")
    if not acquired:
        return _held(spec, lock)
    try:
        state = record_state(spec)
        if not force and state.kind == "finished":
            return RunResult(spec, "skipped", "finished meanwhile by another process")
        if not force and state.protected:
            return RunResult(spec, "refused", refusal(state))
        _clean_stale_temporaries(spec.record_file)
        run_device = resolve_device(device)
        record = _base_record(spec, dataset, {**environment(run_device),
                                              "onednn": onednn_linear.status(run_device)})
        epochs: list[EpochRow] = []
        signals_before = signals_raised()
        try:
            outcome = train_and_evaluate(dataset.data, spec.card, spec.seed, device=device,
                                         on_epoch=epochs.append, progress=show_progress)
        except Exception as exc:  # recorded; KeyboardInterrupt/SystemExit propagate
            interrupted = signal_exception(signals_before, exc)
            if interrupted is not None:  # a library turned the signal into another error
                raise interrupted from exc
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            record.epochs = epochs
            record.extra["traceback"] = traceback.format_exc(limit=8)
            record.finished_at = _now()
            try:
                where = _save(spec, record, None)
            except WriteError as write_error:
                where = f"the failed record could not be written: {write_error}"
            return RunResult(spec, "failed", record.error + (f" ({where})" if where else ""))
        raise_if_signalled(signals_before)  # one a finalizer dropped: no record, as for others
        record.status = "finished"
        record.epochs = outcome.epochs
        record.best_epoch = outcome.best_epoch
        record.valid = outcome.valid
        record.test = outcome.test
        record.n_parameters = outcome.n_parameters
        record.init = outcome.init
        record.health = outcome.health
        record.extra["device"] = outcome.device
        if outcome.explain_parts:
            record.extra["explain_parts"] = outcome.explain_parts
        record.finished_at = _now()
        arrays = dict(outcome.test_scores)
        arrays.update({f"explain__{k}": v for k, v in outcome.explain.items()})
        if outcome.explain:
            arrays["explain_rows"] = outcome.explain_rows
        arrays["run_id"] = np.array(spec.run_id)
        auc = outcome.test.get("auc", float("nan"))
        summary = f"test AUC {auc:.4f}, best epoch {outcome.best_epoch}"
        try:
            where = _save(spec, record, arrays)
        except WriteError as exc:  # nothing accepted it: say what was lost, keep going
            return RunResult(spec, "unsaved", f"{summary}; NOT SAVED: {exc}")
        if where:
            return RunResult(spec, "unsaved", f"{summary}; {where}")
        return RunResult(spec, "finished", summary)
    finally:
        lock.release()


# --------------------------------------------------------------------------- many runs
_WORKER: dict[str, Any] = {}


def _init_worker(device: str, threads: int, modules: Sequence[str], mode: str,
                 dataset: DatasetHandle) -> None:
    install_termination_handler()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    orphans.exit_when_parent_dies()
    apply_threads(threads)
    for module in modules:  # architectures registered outside ctrbench.models
        __import__(module)
    progress_mod.set_mode(mode)
    _WORKER.update(device=device, dataset=dataset)


def _worker_run(task: tuple[RunSpec, bool]) -> RunResult:
    spec, force = task
    signals_before = signals_raised()
    try:  # SystemExit (SIGTERM from the parent) propagates: the run's lock is released
        return execute_one(spec, _WORKER["dataset"], device=_WORKER["device"], force=force,
                           show_progress=True)
    except Exception as exc:  # a bug outside training; keep going
        interrupted = signal_exception(signals_before, exc)
        if interrupted is not None:  # a library turned the signal into another error
            raise interrupted from exc
        return RunResult(spec, "failed", f"{type(exc).__name__}: {exc}")


def record_failed(spec: RunSpec, dataset: DatasetHandle, error: str,
                  environment: dict[str, Any] | None = None, since: str = "") -> RunResult:
    """The run of a process that ended without a result (a dead worker, a terminated or lost
    Slurm task): a failed record saying ``error``, unless the record file holds the run's own
    finished record (with ``since``, a forced rerun's start in ISO UTC, only one written from
    then counts: an older one is kept and the run reported failed) or a protected one
    (:func:`record_state`), which is kept."""
    lock = RunLock(lock_path(spec.record_file), run_id=spec.run_id)
    try:
        acquired = lock.acquire()
    except OSError as exc:  # the other runs go on: no exception out of the caller's loop
        return RunResult(spec, "failed", f"{error} (not recorded: {_lock_failure(lock, exc)})")
    if not acquired:
        other = _other_holder(spec, lock)
        if other is not None:  # this run is not going on elsewhere: it failed
            return RunResult(spec, "failed", f"{error} (not recorded: {other})")
        return _held(spec, lock)
    try:
        _clean_stale_temporaries(spec.record_file)  # the dead process's, if it was writing
        state = record_state(spec)
        if state.kind == "finished" and (state.record.finished_at or "") >= since:
            return RunResult(spec, "finished", "finished (recorded before the process ended)")
        if state.kind == "finished" or state.protected:
            what = ("an earlier finished record of this run" if state.kind == "finished"
                    else state.detail)
            return RunResult(spec, "failed", f"{error} (not recorded: {spec.record_file} "
                                             f"holds {what}; it is kept)")
        record = _base_record(spec, dataset, environment or {})
        record.status, record.error, record.finished_at = "failed", error, _now()
        try:
            where = _save(spec, record, None)
        except WriteError as write_error:
            where = f"the failed record could not be written: {write_error}"
        return RunResult(spec, "failed", error + (f" ({where})" if where else ""))
    finally:
        lock.release()


def _plugin_modules(specs: Sequence[RunSpec]) -> list[str]:
    from ctrbench.models import ARCHITECTURES

    modules = {ARCHITECTURES.get(s.card.arch).__module__ for s in specs}
    return sorted(m for m in modules if not m.startswith("ctrbench.") and m != "__main__")


def execute(specs: Sequence[RunSpec], dataset: DatasetHandle, *, device: str = "auto",
            jobs: int = 1, devices: Sequence[str] = (), force: bool = False,
            show_progress: bool = True, threads: int | None = None,
            held: Mapping[int, RunResult] | None = None) -> list[RunResult]:
    """Run every spec not finished yet (all with ``force``); returns one result per spec.

    A split of the prepared data that no longer matches its ``meta.json`` (files or values)
    raises :class:`~ctrbench.data.store.DamagedStoreError` first.
    ``held``: ``id(spec) -> result`` decided elsewhere and not run here (a run queued on Slurm,
    :func:`ctrbench.runs.slurm_runs.held_by_slurm`).

    A spec whose record file holds a finished record of another configuration, or a file this
    ctrbench cannot read, is refused (unless ``force``). Raises :class:`CtrbenchError` before
    any training when a record directory cannot be written. ``threads``: torch intra-op
    threads per process; None leaves this process's setting alone and gives each of several
    workers ``usable_cores() // workers`` (:mod:`ctrbench.engine.threads`).
    """
    if specs:  # a damaged or unusable store is named once, before any folder or training
        check_runnable(dataset)
    check_record_dirs(specs)
    results = dict(held or {})
    todo = []
    for spec in (s for s in specs if id(s) not in results):
        state = record_state(spec)
        if spec.record_file.is_dir():  # the run could never be saved: refuse, do not train
            results[id(spec)] = RunResult(spec, "refused", f"{spec.record_file} is a "
                                          "directory, not a run record: move it away")
        elif state.kind == "finished" and not force:
            results[id(spec)] = RunResult(spec, "skipped", "finished")
        elif state.protected and not force:
            results[id(spec)] = RunResult(spec, "refused", refusal(state))
        else:
            todo.append(spec)
    total = len(todo)
    if jobs <= 1 or total <= 1:
        if threads is not None:
            apply_threads(threads)
        for i, spec in enumerate(todo, 1):
            progress_mod.message(f"[{i}/{total}] {spec.model} seed {spec.seed}: training")
            result = execute_one(spec, dataset, device=device, force=force,
                                 show_progress=show_progress)
            progress_mod.message(f"[{i}/{total}] {spec.model} seed {spec.seed}: "
                                 f"{result.status} {result.detail}")
            results[id(spec)] = result
    else:
        for spec, result in zip(todo, _execute_parallel(todo, dataset, device, jobs, devices,
                                                        force, threads)):
            results[id(spec)] = result
    return [results[id(s)] for s in specs]


def _execute_parallel(todo: Sequence[RunSpec], dataset: DatasetHandle, device: str, jobs: int,
                      devices: Sequence[str], force: bool,
                      threads: int | None = None) -> list[RunResult]:
    """``todo`` in worker processes (:mod:`ctrbench.runs.pool`); a worker that dies (kill -9,
    out of memory, a crash in native code) costs its own run only, recorded as failed."""
    from ctrbench.runs.pool import how_it_died, run_tasks

    workers = min(jobs, len(todo))
    threads = default_threads(workers) if threads is None else threads
    mode = progress_mod._effective_mode()
    mode = "lines" if mode == "bar" else mode  # one terminal, several writers
    modules = _plugin_modules(todo)
    since = _now() if force else ""  # with --force, only a record written from now counts
    results: dict[int, RunResult] = {}

    def done(i: int, result: RunResult) -> None:
        results[i] = result
        progress_mod.message(f"[{len(results)}/{len(todo)}] {result.spec.model} seed "
                             f"{result.spec.seed}: {result.status} {result.detail}")

    def lost(i: int, exitcode: int | None) -> None:
        done(i, record_failed(todo[i], dataset, how_it_died(exitcode), since=since))

    run_tasks([(spec, force) for spec in todo], workers=workers, init=_init_worker,
              init_args=lambda slot: ((devices[slot % len(devices)] if devices else device),
                                      threads, modules, mode, dataset),
              call=_worker_run, on_done=done, on_lost=lost)
    return [results.get(i, RunResult(s, "interrupted")) for i, s in enumerate(todo)]


def default_dataset_loader(name: str) -> DatasetHandle:
    """Prepare (or reuse) the named dataset."""
    from ctrbench.cards import load_dataset_card
    from ctrbench.data.prepare import prepare_dataset

    card = load_dataset_card(name)
    return DatasetHandle(name=name, data=prepare_dataset(card), config=card.resolved())
