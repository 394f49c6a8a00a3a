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
import signal
import traceback
from collections.abc import Sequence
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
from ctrbench.errors import CardError, CtrbenchError, WriteError, install_termination_handler
from ctrbench.paths import ensure_writable_dir
from ctrbench.record import EpochRow, RunRecord, record_path, scores_path
from ctrbench.runs import orphans
from ctrbench.runs.lock import RunLock
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
    status: str  # finished | failed | skipped | locked | interrupted | refused | unsaved
    detail: str = ""


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
        raise CardError(f"overrides name unknown model(s): {', '.join(unknown)}",
                        hint="per-model overrides are `model:key=value` or [models.<name>]")
    unselected = [item for name, items in overrides.set_items.items() if name not in names
                  for item in items]
    if unselected:
        raise CardError(f"--set {', '.join(unselected)}: names a model that is not selected "
                        f"(selected: {', '.join(names)})",
                        hint="add the model to --models, or drop the override")
    cards = []
    for name in names:
        card = load_model_card(name).with_overrides(overrides.for_model(name))
        if epochs is not None:
            if epochs < 1:
                raise CardError("--epochs must be >= 1")
            card = card.with_overrides({"train": {"epochs": min(card.train.epochs, epochs)}})
        _check_params(card)
        cards.append(_one_spelling(card))
    return cards


def _one_spelling(card: ModelCard) -> ModelCard:
    """``card`` with its params in their rules' form, so that ``dropout=0`` and ``0.0`` are
    one configuration with one run id (the built-in cards are unchanged by it)."""
    from ctrbench.models import config_of

    return dataclasses.replace(card, params=config_of(card.arch).normalised(card.params))


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

    lock = RunLock(lock_path(spec.record_file))
    try:
        acquired = lock.acquire()
    except OSError as exc:
        raise CtrbenchError(f"cannot create the lock file {lock.path}: {exc.strerror or exc}",
                            hint="the results directory must be writable (and not full)"
                            ) from None
    if not acquired:
        holder = lock.holder or {}
        return RunResult(spec, "locked", f"in progress (pid {holder.get('pid')} on "
                                         f"{holder.get('host', '?')})")
    try:
        state = record_state(spec)
        if not force and state.kind == "finished":
            return RunResult(spec, "skipped", "finished meanwhile by another process")
        if not force and state.protected:
            return RunResult(spec, "refused", refusal(state))
        _clean_stale_temporaries(spec.record_file)
        record = _base_record(spec, dataset, environment(resolve_device(device)))
        epochs: list[EpochRow] = []
        try:
            outcome = train_and_evaluate(dataset.data, spec.card, spec.seed, device=device,
                                         on_epoch=epochs.append, progress=show_progress)
        except Exception as exc:  # recorded; KeyboardInterrupt/SystemExit propagate
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
    try:  # SystemExit (SIGTERM from the parent) propagates: the run's lock is released
        return execute_one(spec, _WORKER["dataset"], device=_WORKER["device"], force=force,
                           show_progress=True)
    except Exception as exc:  # a bug outside training; keep going
        return RunResult(spec, "failed", f"{type(exc).__name__}: {exc}")


def record_failed(spec: RunSpec, dataset: DatasetHandle, error: str,
                  environment: dict[str, Any] | None = None, since: str = "") -> RunResult:
    """The run of a process that ended without a result (a dead worker, a terminated or lost
    Slurm task): a failed record saying ``error``, unless the record file holds the run's own
    finished record (with ``since``, a forced rerun's start in ISO UTC, only one written from
    then counts: an older one is kept and the run reported failed) or a protected one
    (:func:`record_state`), which is kept."""
    lock = RunLock(lock_path(spec.record_file))
    try:
        acquired = lock.acquire()
    except OSError as exc:  # the other runs go on: no exception out of the caller's loop
        return RunResult(spec, "failed", f"{error} (not recorded: cannot create the lock file "
                                         f"{lock.path}: {exc.strerror or exc})")
    if not acquired:
        holder = lock.holder or {}
        return RunResult(spec, "locked", f"in progress (pid {holder.get('pid')} on "
                                         f"{holder.get('host', '?')})")
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
            show_progress: bool = True, threads: int | None = None) -> list[RunResult]:
    """Run every spec not finished yet (all with ``force``); returns one result per spec.

    A spec whose record file holds a finished record of another configuration, or a file this
    ctrbench cannot read, is refused (unless ``force``). Raises :class:`CtrbenchError` before
    any training when a record directory cannot be written. ``threads``: torch intra-op
    threads per process; None leaves this process's setting alone and gives each of several
    workers ``usable_cores() // workers`` (:mod:`ctrbench.engine.threads`).
    """
    for directory in sorted({s.record_file.parent for s in specs}):
        ensure_writable_dir(directory, "run records")
    results: dict[int, RunResult] = {}
    todo = []
    for spec in specs:
        state = record_state(spec)
        if state.kind == "finished" and not force:
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


# --------------------------------------------------------------------------- summaries
def leaderboard(specs: Sequence[RunSpec]) -> tuple[list[list[Any]], list[list[Any]]]:
    """Rows (model, seeds finished, test AUC mean ± std, logloss, s/epoch) and the runs not
    counted (failed, or a record that is not this run's: :func:`record_state`, the rule the
    skip logic uses too)."""
    rows: list[list[Any]] = []
    failed: list[list[Any]] = []
    by_model: dict[str, list[RunSpec]] = {}
    for spec in specs:
        by_model.setdefault(spec.model, []).append(spec)
    for model, model_specs in by_model.items():
        aucs, losses, epoch_seconds = [], [], []
        for spec in model_specs:
            state = record_state(spec)
            record = state.record
            auc = _number(record.test.get("auc")) if record is not None else 0.0
            if state.kind == "finished" and not np.isfinite(auc):  # as `report`: left out
                failed.append([model, spec.seed, f"test AUC not finite ({auc}) in the finished "
                                                 "record: left out of the means"])
            elif state.kind == "finished" and record is not None:
                aucs.append(auc)
                losses.append(_number(record.test.get("logloss")))
                epoch_seconds.extend(e.train_seconds for e in record.epochs)
            elif state.kind == "failed" and record is not None:
                failed.append([model, spec.seed, record.error or ""])
            elif state.kind in ("other", "inconsistent", "unreadable", "damaged"):
                failed.append([model, spec.seed, f"not counted: {state.detail}"])
        rows.append([model, f"{len(aucs)}/{len(model_specs)}", _mean_std(aucs),
                     _mean_std(losses), f"{np.mean(epoch_seconds):.1f}" if epoch_seconds else "–"])
    return rows, failed


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return f"{arr.mean():.4f} ± {std:.4f}"


def _shell_word(word: str) -> str:
    """``word`` quoted for bash: :func:`shlex.quote`, or ``$'...'`` when it holds a control
    character (a newline would split a plan's one-command line in two)."""
    import shlex

    if not any(ord(c) < 32 or ord(c) == 127 for c in word):
        return shlex.quote(word)
    escaped = "".join("\\\\" if c == "\\" else "\\'" if c == "'"
                      else f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c
                      for c in word)
    return f"$'{escaped}'"


def plan_commands(specs: Sequence[RunSpec], *, results_root: Path, device: str,
                  config_file: Path | None, set_items: Sequence[str],
                  epochs: int | None, force: bool = False) -> list[str]:
    """One self-contained ``ctrbench run`` command line per spec (bash syntax: one line each,
    whatever the values hold)."""
    commands = []
    for spec in specs:
        parts = ["ctrbench", "run", "--models", spec.model, "--dataset", spec.dataset,
                 "--seed-list", str(spec.seed), "--results", str(Path(results_root).resolve()),
                 "--device", device]
        if epochs is not None:
            parts += ["--epochs", str(epochs)]
        if force:
            parts.append("--force")
        if config_file is not None:
            parts += ["--config", str(Path(config_file).resolve())]
        for item in set_items:
            key = item.split("=", 1)[0]
            if ":" not in key or key.split(":", 1)[0] == spec.model:
                parts += ["--set", item]
        commands.append(" ".join(_shell_word(part) for part in parts))
    return commands


def default_dataset_loader(name: str) -> DatasetHandle:
    """Prepare (or reuse) the named dataset."""
    from ctrbench.cards import load_dataset_card
    from ctrbench.data.prepare import prepare_dataset

    card = load_dataset_card(name)
    return DatasetHandle(name=name, data=prepare_dataset(card), config=card.resolved())
