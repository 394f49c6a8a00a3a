"""``ctrbench run`` (the multi-run protocol) and ``ctrbench plan`` (one command per pending run)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click
from tabulate import tabulate

from ctrbench.commands.slurm_options import (
    check_executor_options,
    executor_options,
    run_on_slurm,
    slurm_settings,
)

MAX_SEED = 2**32 - 1  # numpy's legacy seeding range; torch accepts it too
MAX_SEEDS = 10_000  # runs per model: beyond it, a typo, not a protocol


def device_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--device`` / ``--devices``: every name must be auto, cpu, cuda or cuda:N (else exit 2);
    whether the device exists is checked where it trains (exit 1)."""
    from ctrbench.engine.devices import parse_device
    from ctrbench.errors import CtrbenchError

    names = (value or "").split(",") if param.name == "devices" else [value or "auto"]
    for name in filter(str.strip, names):
        try:
            parse_device(name)
        except CtrbenchError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _seed_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    """``--seed-list 0,1,2`` -> [0, 1, 2] (repeats dropped); bad values exit 2 with the range."""
    if value is None:
        return None
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected integers like 0,1,2") from None
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if not seeds or bad:
        raise click.BadParameter(f"{value!r}: give one or more seeds in 0..{MAX_SEED}")
    return list(dict.fromkeys(seeds))


def _set_items(ctx: click.Context, param: click.Parameter,
               value: tuple[str, ...]) -> tuple[str, ...]:
    """``--set [MODEL:]KEY=VALUE`` items: one whose key is missing or has an empty part
    (``train.lr``, ``=1``, ``:train.lr=1``, ``train..lr=1``) exits 2 naming it."""
    for item in value:
        key, sep, _ = item.partition("=")
        model, colon, key = key.partition(":") if ":" in key else ("", "", key)
        if not sep or (colon and not model.strip()) or not all(map(str.strip, key.split("."))):
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. train.lr=0.01 "
                                     "(or for one model mian:train.lr=0.01)")
    return value


def _parse_seeds(seeds: int | None, seed_list: list[int] | None) -> list[int]:
    """The seeds to run: --seed-list, or 0..N-1 for --seeds N (default 3); not both."""
    if seed_list is not None:
        if seeds is not None:
            raise click.UsageError("--seeds N and --seed-list exclude each other: give one")
        return seed_list
    return list(range(3 if seeds is None else seeds))


def selection_options(func: Callable) -> Callable:
    """The options `run` and `plan` share (the selection of runs and their configuration)."""
    options = [
        click.option("--models", "-m", required=True,
                     help="Model names, groups or globs, comma-separated (mian,dien | table2 | "
                          "'mian*')."),
        click.option("--dataset", "-d", required=True, help="Dataset card name (e.g. synthetic)."),
        click.option("--seeds", type=click.IntRange(min=1, max=MAX_SEEDS), default=None,
                     help=f"Run seeds 0..N-1 (default 3; N <= {MAX_SEEDS:,})."),
        click.option("--seed-list", default=None, callback=_seed_list,
                     help=f"Explicit seeds in 0..{MAX_SEED}, e.g. 0,1,2 (not with --seeds)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Cap every model's train.epochs at N (part of the run's identity; "
                          "default: each card's train.epochs)."),
        click.option("--device", default="auto", show_default=True, callback=device_name,
                     help="auto | cpu | cuda | cuda:N."),
        click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None,
                     help="Results root (default: $CTRBENCH_RESULTS, else ./results)."),
        click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE", callback=_set_items,
                     help="Override a card value: train.lr=0.01, params.embedding_dim=8, or for "
                          "one model mian:train.lr=0.01. Repeatable; wins over --config."),
        click.option("--config", "config_file",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="TOML overrides: [train], [params], [models.<name>.train|params]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _prepare_selection(models: str, dataset: str, seeds: int | None,
                       seed_list: list[int] | None,
                       epochs: int | None, results_dir: Path | None, set_items: tuple[str, ...],
                       config_file: Path | None):
    from ctrbench.paths import default_results_root
    from ctrbench.runs import runner
    from ctrbench.runs.preflight import check_buildable

    seed_values = _parse_seeds(seeds, seed_list)
    overrides = runner.load_overrides(config_file, set_items)
    cards = runner.resolve_cards(models, overrides, epochs)
    handle = runner.default_dataset_loader(dataset)
    check_buildable(cards, handle)  # a configuration this schema refuses: exit 1, no run
    results_root = results_dir or default_results_root()
    specs = runner.plan_runs(handle, cards, seed_values, results_root)
    return handle, specs, results_root


def threads_option(func: Callable) -> Callable:
    """``--threads N|auto``: torch intra-op threads per process (see resolve_threads_option)."""
    return click.option(
        "--threads", default="auto", show_default=True, metavar="N|auto",
        help="Torch intra-op threads per process. auto: 1 (measured faster for these "
             "small-op models on CPU; spend spare cores on --jobs), never more than the usable "
             "cores (affinity mask, cgroup quota) divided by the parallel workers. N > 1 under "
             "OMP_WAIT_POLICY=PASSIVE (the default): the large oneDNN products (xDeepFM's CIN) "
             "on N threads, every other op on one.")(func)


def resolve_threads_option(value: str, jobs: int = 1) -> int | None:
    """``--threads`` -> a thread count; ``auto`` is :func:`default_threads` for one process and
    None with ``jobs > 1`` (the runner divides the cores by the workers it starts). Bad values
    exit 2."""
    from ctrbench.engine.threads import default_threads, parse_threads

    try:
        threads = parse_threads(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--threads") from None
    if threads is None and jobs <= 1:
        return default_threads(1)
    return threads


def _quiet_option(func: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress output on stderr (warnings and errors are still "
                             "shown).")(func)


@click.command(name="run")
@selection_options
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Independent runs in parallel worker processes.")
@click.option("--devices", default=None, callback=device_name,
              help="Devices for the parallel workers of --jobs N > 1, round-robin, e.g. "
                   "cuda:0,cuda:1 (default: --device for every worker; one worker uses "
                   "--device).")
@click.option("--force", is_flag=True,
              help="Rerun finished runs; replace finished records of another configuration "
                   "(the old record and scores move to replaced/).")
@threads_option
@_quiet_option
@executor_options
def run(models: str, dataset: str, seeds: int | None, seed_list: list[int] | None,
        epochs: int | None,
        device: str, results_dir: Path | None, set_items: tuple[str, ...],
        config_file: Path | None, jobs: int, devices: str | None, force: bool,
        threads: str, quiet: bool, executor: str = "local", **slurm_args) -> None:
    """Train and evaluate models x seeds on a dataset; record each run once.

    Prepares the dataset when needed; skips runs whose finished record has the same run id
    (dataset identity + resolved model config + seed) unless --force; a failed run (NaN loss,
    OOM, error) is recorded as failed and the others go on. A finished record of another
    configuration is never overwritten: that run is refused unless --force (which moves the old
    record to replaced/). Ctrl-C keeps every finished record; the next `run` does only what is
    missing. Ends with a leaderboard on stdout; the exit status is 1 when any run of this
    invocation failed, was refused or could not be saved in --results (after all the others
    ran); see docs/reliability.md.

    \b
    Examples:
      ctrbench run --models table2 --dataset synthetic --seeds 3
      ctrbench run -m mian,din -d synthetic --seed-list 0,1 --set train.optimizer=lazy_adam
      ctrbench run -m baselines -d electronics --jobs 2 --devices cuda:0,cuda:1
      ctrbench run -m table2 -d books --seeds 5 --executor slurm --gpus-per-run 1

    With --executor slurm every pending run is one task of a Slurm job array (the dataset is
    prepared here first); the command waits with a line per state change, and Ctrl-C leaves the
    jobs running: the same command again reattaches and submits only what is missing or failed.
    """
    from ctrbench import progress
    from ctrbench.engine.train import resolve_device
    from ctrbench.runs import runner

    if quiet:
        progress.set_mode("quiet")
    n_threads = resolve_threads_option(threads, jobs)
    device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else []
    check_executor_options(executor, **slurm_args)
    if executor == "slurm" and (jobs != 1 or device_list):
        raise click.UsageError("--jobs/--devices are for --executor local; with slurm use "
                               "--max-parallel and --gpus-per-run")
    for d in [device, *device_list] if executor == "local" else []:
        resolve_device(d)  # unknown or unavailable devices fail before any work
    if device_list and jobs <= 1:
        progress.message("warning: --devices is for --jobs N > 1; this one worker uses "
                         f"--device {device}")
    options = slurm_settings(**{k: v for k, v in slurm_args.items() if k != "no_wait"})
    handle, specs, results_root = _prepare_selection(models, dataset, seeds, seed_list, epochs,
                                                     results_dir, set_items, config_file)
    if executor == "slurm":  # the tasks resolve --device on their own nodes
        results = run_on_slurm(handle, specs, results_root, options, device=device, force=force,
                               no_wait=slurm_args["no_wait"])
    else:
        from ctrbench.runs.slurm_runs import held_by_slurm

        results = runner.execute(specs, handle, device=device, jobs=jobs, devices=device_list,
                                 force=force, show_progress=not quiet, threads=n_threads,
                                 held=held_by_slurm(specs, force))
    _print_summary(results, specs)
    if _explain_problems(results):
        sys.exit(1)


def _explain_problems(results) -> bool:
    """One stderr line per failed, refused or unsaved run (exit status 1 when any)."""
    from ctrbench.runs.runner import NOT_DONE

    problems = [r for r in results if r.status in NOT_DONE]
    failed = sum(r.status == "failed" for r in problems)
    if failed:
        click.echo(f"{failed} run(s) failed (never averaged; the next `run` redoes them); "
                   "the other runs went on.", err=True)
    for r in problems:  # a failed run's reason too: one that left no record is in no table
        click.echo(f"{r.spec.model} seed {r.spec.seed}: {r.status}: {r.detail}", err=True)
    return bool(problems)


def _print_summary(results, specs) -> None:
    from ctrbench.runs.summary import leaderboard

    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    rows, failed = leaderboard(specs)
    click.echo(tabulate(rows, headers=["model", "seeds", "test AUC", "test logloss", "s/epoch"]))
    if failed:
        click.echo("\nFailed runs, and records that are not this run's (never in the means):")
        click.echo(tabulate(failed, headers=["model", "seed", "error"]))
    click.echo("\n" + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    locked = [r for r in results if r.status == "locked"]
    for r in locked:
        click.echo(f"{r.spec.model} seed {r.spec.seed}: {r.detail}; not run here", err=True)


def _working_directory_environment(dataset: str, specs) -> str:
    """``NAME=value `` assignments that make `plan`'s commands independent of the directory it
    ran in: a relative ``$CTRBENCH_HOME`` or ``$CTRBENCH_CARDS`` made absolute, and this
    directory added to the card roots when a card came from its ``./datasets`` or ``./models``
    (not the built-in ones). Empty in the usual case."""
    import os
    import shlex

    from ctrbench.cards import load_dataset_card
    from ctrbench.paths import card_dirs

    env: dict[str, str] = {}
    home = os.environ.get("CTRBENCH_HOME", "")
    if home and not Path(home).expanduser().is_absolute():
        env["CTRBENCH_HOME"] = str(Path(home).resolve())
    roots = [r for r in os.environ.get("CTRBENCH_CARDS", "").split(os.pathsep) if r]
    cwd = Path.cwd().resolve()
    paths = [(load_dataset_card(dataset).path, "datasets"),
             *((spec.card.path, "models") for spec in specs)]
    from_cwd = any(path and Path(path).resolve().is_relative_to(cwd / kind)
                   and card_dirs(kind)[-1].resolve() != cwd / kind for path, kind in paths)
    if from_cwd or any(not Path(r).expanduser().is_absolute() for r in roots):
        env["CTRBENCH_CARDS"] = os.pathsep.join(
            [str(Path(r).expanduser().resolve()) for r in roots] + [str(cwd)] * from_cwd)
    return "".join(f"{name}={shlex.quote(value)} " for name, value in env.items())


@click.command(name="plan")
@selection_options
@click.option("--force", is_flag=True,
              help="List every run, finished or not (the commands get --force).")
def plan(models: str, dataset: str, seeds: int | None, seed_list: list[int] | None,
         epochs: int | None,
         device: str, results_dir: Path | None, set_items: tuple[str, ...],
         config_file: Path | None, force: bool) -> None:
    """Print one self-contained `ctrbench run` command per pending run (for a batch system).

    Prepares the dataset first (so that the jobs do not race to prepare it), then lists the runs
    without a finished record of the same run id, one command per line, e.g. for a Slurm array:

    \b
      ctrbench plan -m table2 -d synthetic --seeds 5 > runs.txt
      sbatch --array=1-$(wc -l < runs.txt) job.sh   # job.sh: sed -n "${SLURM_ARRAY_TASK_ID}p"
                                                    #   runs.txt | bash

    On Slurm, `ctrbench run ... --executor slurm` does this itself and follows the jobs.
    """
    from ctrbench.runs import runner
    from ctrbench.runs.plan import plan_commands
    from ctrbench.runs.preflight import check_record_dirs
    from ctrbench.runs.slurm_runs import held_by_slurm

    _, specs, results_root = _prepare_selection(models, dataset, seeds, seed_list, epochs,
                                                results_dir, set_items, config_file)
    todo = runner.pending(specs, force)
    queued = held_by_slurm(todo, force)  # each named on stderr; not planned a second time
    todo = [s for s in todo if id(s) not in queued]
    check_record_dirs(todo)  # a folder `run` would refuse: its message, not failing commands
    prefix = _working_directory_environment(dataset, specs)
    for line in plan_commands(todo, results_root=results_root, device=device,
                              config_file=config_file, set_items=set_items,
                              epochs=epochs, force=force):
        click.echo(prefix + line)
    click.echo(f"{len(todo)} of {len(specs)} runs pending"
               + (f" ({len(queued)} more queued on Slurm)" if queued else ""), err=True)
    held = [s for s in todo if runner.record_state(s).protected] if not force else []
    if held:
        click.echo(f"{len(held)} of them would replace a record that is kept (a finished "
                   "record of another configuration, or one this ctrbench cannot read): their "
                   "commands are refused unless you add --force (the old records then move to "
                   "replaced/)", err=True)


__all__ = ["plan", "run"]
