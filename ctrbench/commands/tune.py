"""``ctrbench tune``: an Optuna study over a model card's ``[search]`` space."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from tabulate import tabulate

from ctrbench.tune.space import PRUNERS, SAMPLERS


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
@click.option("--model", required=True, help="Model card to tune (its [search] table).")
@click.option("--dataset", required=True,
              help="Dataset card (prepared when needed) or the path of a prepared store.")
@click.option("--trials", "n_trials", type=int, default=20, show_default=True,
              help="Run until the STUDY holds this many complete or pruned trials, counting "
                   "trials already stored (by earlier runs or other workers); 0 only rewrites "
                   "the outputs.")
@click.option("--timeout", type=float, default=None,
              help="Start no new trial after this many seconds (a running trial finishes).")
@click.option("--storage", default=None,
              help="Optuna storage: an SQLAlchemy URL (sqlite:///x.db, "
                   "postgresql://user:pass@host/db) or journal:PATH. "
                   "[default: sqlite:///<results>/tuning/<study>.db]")
@click.option("--study", "study_name", default=None,
              help="Study name [default: <model>@<dataset>].")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(PRUNERS), default="median", show_default=True)
@click.option("--prune-after", type=int, default=5, show_default=True,
              help="Median pruner: complete trials needed before it prunes anything.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the sampler and each trial's training (derived per trial number).")
@click.option("--epochs", type=int, default=None, help="Cap on training epochs per trial.")
@click.option("--results", "results_root", type=click.Path(path_type=Path), default=None,
              help="Results directory [default: ./results].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--card-first/--no-card-first", default=True, show_default=True,
              help="Make the card's own values the first trial of a new study.")
@click.option("--heartbeat", type=int, default=60, show_default=True,
              help="Seconds between a worker's heartbeats (database storages); a trial "
                   "silent for twice as long is marked FAIL and retried once. 0 disables.")
@click.option("--fail-running", is_flag=True, default=False,
              help="First mark every RUNNING trial FAIL (for journal storage, which has no "
                   "heartbeat; only when no other worker is alive).")
@click.option("--threads", default="auto", show_default=True, metavar="N|auto",
              help="Torch intra-op threads of this worker; auto: the usable cores. With several "
                   "workers on one machine give each its share (cores // workers).")
@click.option("-q", "--quiet", is_flag=True, default=False, help="No progress on stderr.")
def tune(model: str, dataset: str, n_trials: int, timeout: float | None, storage: str | None,
         study_name: str | None, sampler: str, pruner: str, prune_after: int, seed: int,
         epochs: int | None, results_root: Path | None, device: str, card_first: bool,
         heartbeat: int, fail_running: bool, threads: str, quiet: bool) -> None:
    """Tune a model's hyperparameters on a dataset's VALIDATION split (never test).

    Each trial trains the card with sampled values (the card's [search] table) and reports its
    validation AUC per epoch; the pruner stops hopeless trials; a trial that fails (NaN loss,
    error) is recorded FAIL and the study goes on. The study lives in --storage, so re-running
    the same command resumes it, and several `ctrbench tune` processes, on one machine or many,
    can share one study (same --storage and --study). Writes <results>/tuning/<study>/
    (trials.csv, trials.md, history.png, importances.png) and the tuned card
    models/tuned/<model>@<dataset>.toml, which extends the model's card.

    \b
    The path from tuning to a result:
      1. ctrbench tune --model din --dataset synthetic --trials 30 --epochs 3
      2. ctrbench run --models 'din@synthetic' --dataset synthetic --seeds 5
      3. ctrbench report
    (the seeds of step 2 are new: the tuned card is judged on the test split only there.)

    \b
    Several workers on one study (each runs until the study has 40 trials):
      ctrbench tune --model mian --dataset books --trials 40 \\
        --storage postgresql://user:pass@db-host/optuna   # on each machine
    """
    import optuna

    from ctrbench import progress as progress_mod
    from ctrbench.cards import load_model_card
    from ctrbench.commands.run import resolve_threads_option
    from ctrbench.engine.threads import apply_threads
    from ctrbench.paths import default_results_root
    from ctrbench.tune.outputs import (
        study_dir,
        tuned_card_name,
        tuned_from_table,
        write_plots,
        write_trials_table,
        write_tuned_card,
    )
    from ctrbench.tune.space import parse_search_space
    from ctrbench.tune.storage import fail_running as fail_running_trials
    from ctrbench.tune.storage import open_storage
    from ctrbench.tune.study import TuneSettings, open_study, run_study, study_signature

    apply_threads(resolve_threads_option(threads))
    if quiet:
        progress_mod.set_mode("quiet")
    verbose = logging.getLogger().getEffectiveLevel() < logging.WARNING
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)

    settings = TuneSettings(n_trials=n_trials, timeout=timeout, sampler=sampler, pruner=pruner,
                            seed=seed, max_epochs=epochs, device=device, prune_after=prune_after,
                            card_first=card_first, progress=not quiet)
    card = load_model_card(model)
    space = parse_search_space(card)
    if sampler == "grid":
        from ctrbench.tune.space import grid

        grid(space)  # a continuous dimension is an error before any work
    data = _load_data(dataset)
    signature = study_signature(card, data, settings)
    dataset_name = signature["dataset"]
    tuned_card_name(card, dataset_name)  # refuse re-tuning a tuned card before any work
    name = study_name or f"{card.name}@{dataset_name}"
    results_root = results_root or default_results_root()
    handle = open_storage(storage, results_root, name, heartbeat=heartbeat)
    study, created = open_study(handle, name, signature)
    if fail_running:
        failed = fail_running_trials(study)
        progress_mod.message(f"marked {len(failed)} RUNNING trial(s) FAIL: {failed}")
    progress_mod.message(f"study {name!r} in {handle.display}: {len(study.trials)} trial(s) "
                         f"stored; running until {n_trials} are complete or pruned")

    def on_trial(frozen, counts) -> None:
        progress_mod.message(_trial_line(frozen, counts, n_trials))

    out_dir = study_dir(results_root, name)
    try:
        summary = run_study(study, handle, data, card, space, settings, on_trial=on_trial,
                            new_study=created)
    finally:  # also after Ctrl-C: the table shows what is finished
        write_trials_table(study, out_dir)
    plots = write_plots(study, out_dir)

    click.echo(f"study {name!r} ({summary.storage}): {summary.stop_reason}")
    click.echo(f"trials: {summary.n_complete} complete, {summary.n_pruned} pruned, "
               f"{summary.n_failed} failed, {summary.n_running} running")
    click.echo(f"table:  {out_dir / 'trials.md'} (and trials.csv)")
    for what, where in plots.items():
        click.echo(f"{what}: {where}")
    if summary.best is None:
        if n_trials == 0 or summary.n_failed == 0:
            click.echo("no trial has completed yet: no tuned card written")
            return
        from ctrbench.errors import CtrbenchError

        raise CtrbenchError(f"no trial of study {name!r} has completed, so no tuned card",
                            hint=f"see the errors in {out_dir / 'trials.md'}")
    best = summary.best
    tuned_from = tuned_from_table(study, summary.storage, best, dataset_name, signature, settings)
    card_path = write_tuned_card(card, dataset_name, best, tuned_from)
    click.echo(f"best:   trial {best.number}, valid AUC {best.value:.5f}")
    rows = [(k, f"{v:.6g}" if isinstance(v, float) else str(v))
            for k, v in sorted(best.params.items())]
    click.echo(tabulate(rows, headers=["parameter", "value"], disable_numparse=True))
    click.echo(f"tuned card: {card_path}")
    click.echo(f"next:   ctrbench run --models '{tuned_card_name(card, dataset_name)}' "
               f"--dataset {dataset_name} --seeds 5")
