"""Tuning a group of models with equal budgets (``ctrbench tune --models GROUP``).

One study per model (``<model>@<dataset>``), every study with the same settings: the same number
of complete-or-pruned trials (the default budget) or the same wall-clock seconds per model, the
same sampler seed, pruner and epoch cap, on the validation split only. Each model's tuned card is
written as by a single-model study; the group's budget table (``budget.json`` / ``budget.md``
under ``<results>/tuning/<label>@<dataset>/``) records what every model actually received, so the
report can show the budget beside each tuned result and flag unequal ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ctrbench.cards import ModelCard
from ctrbench.data.store import PreparedData
from ctrbench.errors import CtrbenchError
from ctrbench.record import atomic_write_text, exclusive
from ctrbench.tune.outputs import (
    card_holder,
    study_dir,
    tuned_card_name,
    tuned_card_path,
    tuned_from_table,
    write_plots,
    write_trials_table,
    write_tuned_card,
)
from ctrbench.tune.space import check_spaces_on_data, has_search_space, parse_search_space
from ctrbench.tune.storage import fail_running as fail_running_trials
from ctrbench.tune.storage import open_storage
from ctrbench.tune.study import TuneSettings, TuneSummary, open_study, run_study, study_signature


@dataclass
class ModelBudget:
    """What one model of a group received and what came of it."""

    model: str
    # "tuned" | "nothing to tune" | "no complete trial" | "submitted" (not awaited) |
    # "card refused" (tuned, but models/tuned/ holds another study's card: kept)
    status: str
    study: str = ""
    trials_complete: int = 0
    trials_pruned: int = 0
    trials_failed: int = 0
    wall_clock_s: float = 0.0
    best_valid_auc: float | None = None
    tuned_card: str = ""
    detail: str = ""  # why a tuned study has no card ("card refused")
    failing: str = ""  # why the study stopped short: its trials kept failing

    @property
    def trials_done(self) -> int:
        return self.trials_complete + self.trials_pruned


@dataclass
class StudyOutcome:
    summary: TuneSummary | None  # None: the trials were handed to workers that were not awaited
    out_dir: Path
    plots: dict[str, str]
    card_path: Path | None
    tuned_from: dict[str, Any] | None
    replaced: str | None = None  # what the written card replaced (with replace_card)
    refused: str | None = None  # why no card was written although a trial completed


@dataclass(frozen=True)
class OpenStudy:
    """What an executor needs to run a study's trials elsewhere (e.g. Slurm workers)."""

    study: Any  # optuna.Study
    handle: Any  # StudyStorage
    card: ModelCard
    space: list
    signature: dict[str, Any]
    out_dir: Path
    created: bool


#: Runs the trials of an opened study somewhere else; returns its summary, or None when the
#: trials were only handed over (not awaited). None = run them here (``run_study``).
Executor = Callable[[OpenStudy], TuneSummary | None]


def study_name_of(card: ModelCard, data: PreparedData, study_name: str | None = None) -> str:
    return study_name or f"{card.name}@{data.meta.get('dataset', data.path.name)}"


def tune_one(card: ModelCard, data: PreparedData, settings: TuneSettings, *,
             results_root: Path, storage: str | None = None, study_name: str | None = None,
             heartbeat: int = 60, fail_running: bool = False, replace_card: bool = False,
             on_message: Callable[[str], None] = lambda text: None,
             on_trial: Callable | None = None, execute: Executor | None = None) -> StudyOutcome:
    """Open (or resume) ``card``'s study on ``data``, run it, write its table and tuned card.

    A tuned card that another study or storage wrote is kept (``refused`` says why) unless
    ``replace_card``; the study's trials stay in its storage either way."""
    space = parse_search_space(card)
    if settings.sampler == "grid":
        from ctrbench.tune.space import grid

        grid(space)  # a continuous dimension is an error before any work
    signature = study_signature(card, data, settings)
    dataset_name = signature["dataset"]
    tuned_card_name(card, dataset_name)  # refuse re-tuning a tuned card before any work
    name = study_name_of(card, data, study_name)
    handle = open_storage(storage, results_root, name, heartbeat=heartbeat)
    study, created = open_study(handle, name, signature)
    if fail_running:
        failed = fail_running_trials(study)
        on_message(f"marked {len(failed)} RUNNING trial(s) FAIL: {failed}")
    on_message(f"study {name!r} in {handle.display}: {len(study.trials)} trial(s) stored; "
               f"running until {settings.n_trials} are complete or pruned")
    card_file = tuned_card_path(card, dataset_name)
    holder = card_holder(card_file, name, handle.display)
    if holder:
        on_message(f"{card_file} holds {holder}: this study's best "
                   + ("will replace it (--replace-card)" if replace_card
                      else "will not replace it unless you add --replace-card"))
    out_dir = study_dir(results_root, name)
    try:
        if execute is None:
            summary = run_study(study, handle, data, card, space, settings, on_trial=on_trial,
                                new_study=created)
        else:
            summary = execute(OpenStudy(study, handle, card, space, signature, out_dir, created))
    finally:  # also after Ctrl-C: the table shows what is finished
        write_trials_table(study, out_dir)
    if summary is None:
        return StudyOutcome(None, out_dir, {}, None, None)
    plots = write_plots(study, out_dir)
    if summary.best is None:
        return StudyOutcome(summary, out_dir, plots, None, None)
    # one writer of the card at a time (the workers of this study, other studies): the check
    # of who holds it and the write are one step, from the study's latest best trial
    with exclusive(card_file):
        summary = replace(summary, best=latest_best(study) or summary.best)
        tuned_from = tuned_from_table(study, summary.storage, summary.best, dataset_name,
                                      signature, settings)
        holder = card_holder(card_file, name, summary.storage)
        if holder and not replace_card:
            refused = (f"tuned card not written: {card_file} holds {holder}; it is kept. This "
                       f"study's trials are kept in {summary.storage}: run the same command "
                       "with --replace-card to make its best trial the tuned card (no trial "
                       "runs again)")
            return StudyOutcome(summary, out_dir, plots, None, tuned_from, refused=refused)
        card_path = write_tuned_card(card, dataset_name, summary.best, tuned_from)
    return StudyOutcome(summary, out_dir, plots, card_path, tuned_from, replaced=holder)


def latest_best(study: Any) -> Any:
    """The study's best trial as its storage holds it now (other workers may have finished
    better trials since this worker's summary), or None."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def tune_group(cards: Sequence[ModelCard], data: PreparedData, settings: TuneSettings, *,
               results_root: Path, label: str, storage_for: Callable[[str], str | None],
               heartbeat: int = 60, fail_running: bool = False, replace_card: bool = False,
               on_message: Callable[[str], None] = lambda text: None,
               on_trial: Callable | None = None,
               execute: Executor | None = None) -> tuple[list[ModelBudget], Path]:
    """Tune every card with the same ``settings``; write and return the budget table.

    ``storage_for(study_name)``: the storage URL of each model's study (None = the default
    SQLite file under ``<results>/tuning/``); one shared database or journal lets workers on
    several machines run the same command and share every study of the group. A card whose
    [search] space the model refuses is a CardError before any model is tuned.
    """
    check_spaces_on_data(cards, data)
    dataset = str(data.meta.get("dataset", data.path.name))
    rows: list[ModelBudget] = []
    for card in cards:
        if not has_search_space(card):
            on_message(f"{card.name}: nothing to tune (no [search] dimension applies); its "
                       "defaults are its only configuration")
            rows.append(ModelBudget(model=card.name, status="nothing to tune"))
            continue
        name = f"{card.name}@{dataset}"
        on_message(f"--- {card.name} ({len(rows) + 1}/{len(cards)})")
        outcome = tune_one(card, data, settings, results_root=results_root,
                           storage=storage_for(name), study_name=name, heartbeat=heartbeat,
                           fail_running=fail_running, replace_card=replace_card,
                           on_message=on_message, on_trial=on_trial, execute=execute)
        s = outcome.summary
        if s is None:
            rows.append(ModelBudget(model=card.name, status="submitted", study=name))
            continue
        wall = float(outcome.tuned_from["wall_clock_s"]) if outcome.tuned_from else 0.0
        status = ("no complete trial" if s.best is None
                  else "card refused" if outcome.refused else "tuned")
        rows.append(ModelBudget(
            model=card.name, status=status,
            study=name, trials_complete=s.n_complete, trials_pruned=s.n_pruned,
            trials_failed=s.n_failed, wall_clock_s=wall,
            best_valid_auc=None if s.best is None else float(s.best.value),
            tuned_card=str(outcome.card_path or ""), detail=outcome.refused or "",
            failing=s.failing or ""))
    path = write_budget(results_root, label, dataset, settings, rows)
    return rows, path


def budget_mode(settings: TuneSettings) -> str:
    if settings.timeout is not None:
        return (f"{settings.timeout:g} s of wall clock per model "
                f"(at most {settings.n_trials} trials)")
    return f"{settings.n_trials} complete-or-pruned trials per model"


def unequal_budgets(rows: Sequence[ModelBudget], settings: TuneSettings) -> list[str]:
    """Models whose budget differs from the declared one (trial budget only), each with what
    to do about it."""
    if settings.timeout is not None:
        return []  # a wall-clock budget gives fast models more trials, by design
    lines = []
    for r in rows:
        if (r.status not in ("tuned", "no complete trial", "card refused")
                or r.trials_done == settings.n_trials):
            continue
        line = f"{r.model}: {r.trials_done} trials done, {settings.n_trials} declared"
        if r.failing:
            line += " (its trials kept failing: fix its card, then re-run the same command)"
        elif r.trials_done > settings.n_trials:
            line += (" (more than declared: its study held them already; declare at least "
                     f"{r.trials_done} to give every model as many)")
        else:
            line += " (re-run the same command to complete it)"
        lines.append(line)
    return lines


def write_budget(results_root: Path, label: str, dataset: str, settings: TuneSettings,
                 rows: Sequence[ModelBudget]) -> Path:
    """``<results>/tuning/<label>@<dataset>/budget.json`` and ``budget.md``."""
    out_dir = study_dir(results_root, f"{label}@{dataset}")
    payload = {
        "group": label, "dataset": dataset, "budget": budget_mode(settings),
        "settings": {"trials": settings.n_trials, "timeout_per_model_s": settings.timeout,
                     "epochs": settings.max_epochs, "sampler": settings.sampler,
                     "pruner": settings.pruner, "seed": settings.seed},
        "unequal": unequal_budgets(rows, settings),
        "models": [asdict(r) for r in rows],
    }
    atomic_write_text(out_dir / "budget.json", json.dumps(payload, indent=2) + "\n")
    table = tabulate(
        [(r.model, r.status, r.trials_complete, r.trials_pruned, r.trials_failed,
          f"{r.wall_clock_s:.0f}", "" if r.best_valid_auc is None else f"{r.best_valid_auc:.5f}")
         for r in rows],
        headers=["model", "status", "complete", "pruned", "failed", "wall-clock s",
                 "best valid AUC"], tablefmt="github", disable_numparse=True)
    lines = [f"# Tuning budget: {label} on {dataset}", "",
             f"Budget: {payload['budget']}; sampler {settings.sampler} (seed {settings.seed}), "
             f"pruner {settings.pruner}, epoch cap {settings.max_epochs or 'the card'}; "
             "objective: validation AUC (the test split is never read).", "", table, ""]
    if payload["unequal"]:
        lines += ["**Unequal budgets**:", *[f"- {u}" for u in payload["unequal"]], ""]
    atomic_write_text(out_dir / "budget.md", "\n".join(lines))
    return out_dir / "budget.json"


def read_budget(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CtrbenchError(f"cannot read the tuning budget {path}: {exc}") from None
