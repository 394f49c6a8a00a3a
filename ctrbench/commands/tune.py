"""``ctrbench tune``: an Optuna study over a model card's ``[search]`` space."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import click
from tabulate import tabulate

from ctrbench.commands.run import device_name
from ctrbench.commands.slurm_options import (
    check_executor_options,
    executor_options,
    slurm_settings,
    tune_on_slurm,
)
from ctrbench.tune.slurm_workers import check_shared_storage, default_storage
from ctrbench.tune.space import PRUNERS, SAMPLERS


class Seconds(click.ParamType):
    """A finite number of seconds > 0 (``nan``, ``inf``, 0 and negatives exit 2)."""

    name = "seconds"

    def convert(self, value, param, ctx) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r}: expected a finite number of seconds > 0", param, ctx)
        return seconds


SECONDS = Seconds()


def _load_data(spec: str):
    """A dataset card name (prepared when needed) or the path of a prepared store."""
    from ctrbench.data.store import open_store

    if (Path(spec) / "meta.json").is_file():
        return open_store(spec)
    from ctrbench.data.prepare import prepare_dataset

    return prepare_dataset(spec)


def _trial_line(frozen, counts, target: int) -> str:
    from optuna.trial import TrialState

    done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    params = ", ".join(f"{k.split('.', 1)[1]}={v:.4g}" if isinstance(v, float)
                       else f"{k.split('.', 1)[1]}={v}" for k, v in sorted(frozen.params.items()))
    if frozen.state == TrialState.COMPLETE:
        what = f"valid AUC {frozen.value:.5f}"
    elif frozen.state == TrialState.PRUNED:
        what = f"pruned at epoch {frozen.last_step}"
    else:
        what = f"FAILED: {str(frozen.user_attrs.get('error', 'no result')).splitlines()[0]}"
    return f"trial {frozen.number} {what} ({params}) [{done}/{target} done]"


@click.command(name="tune")
@click.option("--model", default=None, help="Model card to tune (its [search] table).")
@click.option("--models", "models_spec", default=None,
              help="Tune a group with EQUAL budgets: a group name or a list (table2, "
                   "'lr,din'); one study per model, same trials, seed, pruner and epochs.")
@click.option("--dataset", required=True,
              help="Dataset card (prepared when needed) or the path of a prepared store.")
@click.option("--trials", "n_trials", type=click.IntRange(min=0), default=None,
              help="Run until the STUDY holds this many complete or pruned trials, counting "
                   "trials already stored (by earlier runs or other workers); 0 only rewrites "
                   "the outputs. [default: 20; with --timeout-per-model: no trial cap]")
@click.option("--timeout", type=SECONDS, default=None,
              help="Start no new trial after this many seconds (a running trial finishes; "
                   "default: no time limit).")
@click.option("--timeout-per-model", type=SECONDS, default=None,
              help="With --models: budget every model by wall clock instead of trials (each "
                   "study starts no new trial after this many seconds).")
@click.option("--storage", default=None,
              help="Optuna storage: an SQLAlchemy URL (sqlite:///x.db, "
                   "postgresql://user:pass@host/db) or journal:PATH. "
                   "[default: sqlite:///<results>/tuning/<study>.db; with --executor slurm: "
                   "journal:<results>/tuning/<study>.log]")
@click.option("--study", "study_name", default=None,
              help="Study name [default: <model>@<dataset>] (not with --models).")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True,
              help="Optuna sampler: tpe (Bayesian), random, or grid (every point of a space "
                   "whose dimensions all have a step or choices).")
@click.option("--pruner", type=click.Choice(PRUNERS), default="median", show_default=True,
              help="Stops hopeless trials early from their per-epoch validation AUC; none "
                   "trains every trial for all its epochs.")
@click.option("--prune-after", type=click.IntRange(min=0), default=5, show_default=True,
              help="Median pruner: complete trials needed before it prunes anything.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the sampler and each trial's training (derived per trial number).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Cap on training epochs per trial (default: the card's train.epochs).")
@click.option("--results", "results_root", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Results directory [default: $CTRBENCH_RESULTS, else ./results].")
@click.option("--device", default="auto", show_default=True, callback=device_name,
              help="auto | cpu | cuda[:N]")
@click.option("--card-first/--no-card-first", default=True, show_default=True,
              help="Make the card's own values the first trial of a new study.")
@click.option("--heartbeat", type=click.IntRange(min=0), default=60, show_default=True,
              help="Seconds between a worker's heartbeats (database storages); a trial "
                   "silent for twice as long is marked FAIL and retried once. 0 disables.")
@click.option("--replace-card", is_flag=True, default=False,
              help="Let this study's best replace a tuned card that another study or storage "
                   "wrote (refused otherwise: the card is kept, the trials too).")
@click.option("--fail-running", is_flag=True, default=False,
              help="First mark every RUNNING trial FAIL (for journal storage, which has no "
                   "heartbeat; only when no other worker is alive).")
@click.option("--threads", default="auto", show_default=True, metavar="N|auto",
              help="Torch intra-op threads of this worker; auto: 1, as for run (never more "
                   "than the usable cores).")
@click.option("-q", "--quiet", is_flag=True, default=False,
              help="No progress on stderr (warnings and errors are still shown).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="[slurm] Workers (array tasks) on the study; a re-run tops them up to N.")
@executor_options
def tune(model: str | None, models_spec: str | None, dataset: str, n_trials: int | None,
         timeout: float | None, timeout_per_model: float | None, storage: str | None,
         study_name: str | None, sampler: str, pruner: str, prune_after: int, seed: int,
         epochs: int | None, results_root: Path | None, device: str, card_first: bool,
         heartbeat: int, replace_card: bool, fail_running: bool, threads: str, quiet: bool,
         workers: int = 1,
         executor: str = "local", **slurm_args) -> None:
    """Tune hyperparameters on a dataset's VALIDATION split (never test).

    Each trial trains the card with sampled values (the card's [search] table: the shared keys
    of models/_paper.toml plus the architecture's own) and reports its validation AUC per
    epoch; the pruner stops hopeless trials; a trial that fails (NaN loss, error) is recorded
    FAIL and the study goes on. A [search] value the model cannot take on the dataset is
    refused before any trial; a sampled combination it cannot take stops the study (exit
    status 1). The study lives in --storage, so re-running the same command
    resumes it, and several `ctrbench tune` processes, on one machine or many, can share one
    study (same --storage and --study). Writes <results>/tuning/<study>/ (trials.csv,
    trials.md, history.png, importances.png) and the tuned card
    models/tuned/<model>@<dataset>.toml, which extends the model's card. Only the study that
    wrote that card (same --study and storage) rewrites it; another study's card is kept, with
    exit status 1, unless --replace-card. Ctrl-C or SIGTERM (exit 130, 143) queue the running
    trial's values again with its training seed: the next run retries them.

    \b
    The path from tuning to a result:
      1. ctrbench tune --model din --dataset synthetic --trials 30 --epochs 3
      2. ctrbench run --models 'din@synthetic' --dataset synthetic --seeds 5
      3. ctrbench report
    (the seeds of step 2 are new: the tuned card is judged on the test split only there.)

    \b
    A group with equal budgets (one study per model, the same trials for each):
      ctrbench tune --models table2 --dataset synthetic --trials 20 --epochs 3
      ctrbench run --models 'table2@synthetic' --dataset synthetic --seeds 5
      ctrbench report      # the defaults-vs-tuned table

    \b
    Several workers on one study (each runs until the study has 40 trials):
      ctrbench tune --model mian --dataset books --trials 40 \\
        --storage postgresql://user:pass@db-host/optuna   # on each machine
    or, as 8 Slurm array tasks (default storage: journal:<results>/tuning/<study>.log):
      ctrbench tune --model mian --dataset books --trials 40 --executor slurm \\
        --workers 8 --gpus-per-run 1
    """
    import optuna

    from ctrbench import progress as progress_mod
    from ctrbench.cards import load_model_card, resolve_model_spec
    from ctrbench.commands.run import resolve_threads_option
    from ctrbench.data.store import ensure_directory
    from ctrbench.engine.threads import apply_threads
    from ctrbench.errors import CtrbenchError
    from ctrbench.paths import default_results_root
    from ctrbench.tune.group import (
        budget_mode,
        study_name_of,
        tune_group,
        tune_one,
        unequal_budgets,
    )
    from ctrbench.tune.outputs import tuned_card_name
    from ctrbench.tune.space import card_values, check_space_on_data
    from ctrbench.tune.study import TuneSettings

    apply_threads(resolve_threads_option(threads))
    if (model is None) == (models_spec is None):
        raise click.UsageError("give exactly one of --model NAME or --models GROUP")
    if models_spec is not None and study_name is not None:
        raise click.UsageError("--study names one study; with --models each model's study is "
                               "<model>@<dataset>")
    if timeout_per_model is not None and models_spec is None:
        raise click.UsageError("--timeout-per-model needs --models (use --timeout for one model)")
    if timeout_per_model is not None and timeout is not None:
        raise click.UsageError("give --timeout or --timeout-per-model, not both")
    if n_trials is None:
        n_trials = 10_000 if timeout_per_model is not None else 20
    if quiet:
        progress_mod.set_mode("quiet")
    given = click.get_current_context().get_parameter_source("prune_after")
    if pruner == "none" and given is click.core.ParameterSource.COMMANDLINE:
        progress_mod.message("warning: --prune-after has no effect with --pruner none")
    if workers < 1 or (workers > 1 and executor != "slurm"):
        raise click.UsageError("--workers N needs --executor slurm (and N >= 1); on one "
                               "machine, start several `ctrbench tune` processes instead")
    if executor == "slurm" and storage:
        check_shared_storage(storage)  # before any work
    check_executor_options(executor, **slurm_args)
    options = slurm_settings(**{k: v for k, v in slurm_args.items() if k != "no_wait"})
    verbose = logging.getLogger().getEffectiveLevel() < logging.WARNING
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)

    settings = TuneSettings(n_trials=n_trials, timeout=timeout or timeout_per_model,
                            sampler=sampler, pruner=pruner, seed=seed, max_epochs=epochs,
                            device=device, prune_after=prune_after, card_first=card_first,
                            progress=not quiet)
    results_root = results_root or default_results_root()
    ensure_directory(results_root, "results folder")  # a file in its way: one line, no work

    def on_trial(frozen, counts) -> None:
        progress_mod.message(_trial_line(frozen, counts, n_trials))

    def storage_for(name: str) -> str | None:
        if executor == "slurm":  # every node must reach the storage
            return check_shared_storage(storage or default_storage(results_root, name))
        return storage

    def on_slurm(opened):
        """Top the study's Slurm workers up to --workers and wait for them (or not)."""
        if opened.created and card_first and sampler != "grid":  # as run_study does locally
            defaults = card_values(opened.card, opened.space)
            if defaults is not None:
                opened.study.enqueue_trial(defaults, user_attrs={"origin": "card"},
                                           skip_if_exists=True)
        return tune_on_slurm(opened.study, opened.handle, workers=workers,
                             model=opened.card.name, store=data.path,
                             storage_url=storage_for(opened.study.study_name),
                             heartbeat=heartbeat, settings=settings,
                             signature=opened.signature, out_dir=opened.out_dir,
                             options=options, no_wait=slurm_args["no_wait"])

    execute = on_slurm if executor == "slurm" else None

    if models_spec is not None:
        cards = [load_model_card(name) for name in resolve_model_spec(models_spec)]
        data = _load_data(dataset)
        rows, budget_path = tune_group(
            cards, data, settings, results_root=results_root, label=_group_label(models_spec),
            storage_for=storage_for, heartbeat=heartbeat, fail_running=fail_running,
            replace_card=replace_card, on_message=progress_mod.message, on_trial=on_trial,
            execute=execute)
        click.echo(f"budget: {budget_mode(settings)}")
        click.echo(tabulate(
            [(r.model, r.status, r.trials_complete, r.trials_pruned, r.trials_failed,
              f"{r.wall_clock_s:.0f}",
              "" if r.best_valid_auc is None else f"{r.best_valid_auc:.5f}", r.tuned_card)
             for r in rows],
            headers=["model", "status", "complete", "pruned", "failed", "wall-clock s",
                     "best valid AUC", "tuned card"], disable_numparse=True))
        click.echo(f"budget table: {budget_path} (and budget.md)")
        unequal = unequal_budgets(rows, settings)
        for line in unequal:
            click.echo(f"UNEQUAL BUDGET: {line}")
        dataset_name = str(data.meta.get("dataset", data.path.name))
        if "," in models_spec or models_spec in {r.model for r in rows}:
            selection = ",".join(r.model if r.status == "nothing to tune"
                                 else f"{r.model}@{dataset_name}" for r in rows)
        else:  # a group name
            selection = f"{models_spec}@{dataset_name}"
        click.echo(f"next:   ctrbench run --models '{selection}' --dataset {dataset_name} "
                   "--seeds 5")
        failing = [f"{r.model}: {r.failing}" for r in rows if r.failing]
        if any(r.status == "no complete trial" for r in rows):
            raise CtrbenchError("\n".join(["some studies of the group have no complete trial, "
                                            "so no tuned card", *failing]),
                                hint=f"see {budget_path.parent / 'budget.md'}")
        refused = [r.detail for r in rows if r.status == "card refused"] + failing
        if refused:
            raise CtrbenchError("\n".join(refused))
        return

    card = load_model_card(model)
    data = _load_data(dataset)
    check_space_on_data(card, data)  # a value the model refuses: before any study or trial
    outcome = tune_one(card, data, settings, results_root=results_root,
                       storage=storage_for(study_name_of(card, data, study_name)),
                       study_name=study_name, heartbeat=heartbeat, fail_running=fail_running,
                       replace_card=replace_card, on_message=progress_mod.message,
                       on_trial=on_trial, execute=execute)
    if outcome.summary is None:  # --no-wait: the workers run on
        return
    summary, out_dir, name = outcome.summary, outcome.out_dir, outcome.summary.study_name
    click.echo(f"study {name!r} ({summary.storage}): {summary.stop_reason}")
    click.echo(f"trials: {summary.n_complete} complete, {summary.n_pruned} pruned, "
               f"{summary.n_failed} failed, {summary.n_running} running")
    click.echo(f"table:  {out_dir / 'trials.md'} (and trials.csv)")
    for what, where in outcome.plots.items():
        click.echo(f"{what}: {where}")
    if summary.best is None:
        if not summary.failing and (n_trials == 0 or summary.n_failed == 0):
            click.echo("no trial has completed yet: no tuned card written")
            return
        raise CtrbenchError(f"no trial of study {name!r} has completed, so no tuned card"
                            + (f" ({summary.failing})" if summary.failing else ""),
                            hint=f"see the errors in {out_dir / 'trials.md'}")
    best = summary.best
    dataset_name = outcome.tuned_from["dataset"]
    click.echo(f"best:   trial {best.number}, valid AUC {best.value:.5f}")
    rows = [(k, f"{v:.6g}" if isinstance(v, float) else str(v))
            for k, v in sorted(best.params.items())]
    click.echo(tabulate(rows, headers=["parameter", "value"], disable_numparse=True))
    if outcome.refused:
        raise CtrbenchError(outcome.refused)
    click.echo(f"tuned card: {outcome.card_path}"
               + (f" (replaced {outcome.replaced})" if outcome.replaced else ""))
    click.echo(f"next:   ctrbench run --models '{tuned_card_name(card, dataset_name)}' "
               f"--dataset {dataset_name} --seeds 5")
    if summary.failing:  # a card from fewer trials than asked for
        raise CtrbenchError(f"study {name!r} {summary.failing}",
                            hint=f"see the errors in {out_dir / 'trials.md'}")


def _group_label(spec: str) -> str:
    """The budget table's name: the group name, or the models joined by '+'."""
    return "+".join(part.strip() for part in spec.split(",") if part.strip())
