"""The ``--executor slurm`` options of ``ctrbench run`` and ``ctrbench tune``, and the run side."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import click


def _checked(check_name: str) -> Callable:
    """A click callback that runs ``ctrbench.runs.slurm.<check_name>`` on every value: a bad
    value is a usage error (exit 2) before anything else, Slurm present or not."""
    def callback(ctx: click.Context, param: click.Parameter, value):
        from ctrbench.errors import CtrbenchError
        from ctrbench.runs import slurm

        for item in (value if isinstance(value, tuple) else (value,)):
            try:
                getattr(slurm, check_name)(item)
            except CtrbenchError as exc:
                hint = f" ({exc.hint})" if exc.hint else ""
                raise click.BadParameter(f"{exc.args[0]}{hint}", ctx=ctx, param=param
                                         ) from None
        return value
    return callback


def executor_options(func: Callable) -> Callable:
    """``--executor`` and the Slurm resources every task asks for."""
    options = [
        click.option("--executor", type=click.Choice(["local", "slurm"]), default="local",
                     show_default=True,
                     help="local: run here; slurm: one Slurm job-array task per run (worker)."),
        click.option("--partition", default=None,
                     help="[slurm] Partition (default: the cluster's default partition)."),
        click.option("--gpus-per-run", type=click.IntRange(min=0), default=0, show_default=True,
                     help="[slurm] GPUs per task (--gres=gpu:N)."),
        click.option("--cpus-per-run", type=click.IntRange(min=1), default=1, show_default=True,
                     help="[slurm] CPU cores per task (torch threads)."),
        click.option("--time", "time_limit", default="4:00:00", show_default=True,
                     callback=_checked("check_time"),
                     help="[slurm] Time limit per task in any Slurm form: HH:MM:SS, MM:SS, "
                          "MM (minutes), D-HH[:MM[:SS]]."),
        click.option("--max-parallel", type=click.IntRange(min=1), default=None,
                     help="[slurm] At most N tasks running at once (the array's %N; "
                          "default: no limit)."),
        click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="OPTION",
                     callback=_checked("check_sbatch_arg"),
                     help="[slurm] Extra sbatch option, repeatable: --sbatch-arg=--account=lab."),
        click.option("--no-wait", is_flag=True,
                     help="[slurm] Submit and return; run the same command again to wait."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def slurm_settings(partition: str | None, gpus_per_run: int, cpus_per_run: int,
                   time_limit: str, max_parallel: int | None, sbatch_args: Sequence[str]):
    from ctrbench.runs.slurm import SlurmOptions

    return SlurmOptions(partition=partition, time=time_limit, gpus_per_run=gpus_per_run,
                        cpus_per_run=cpus_per_run, max_parallel=max_parallel,
                        sbatch_args=tuple(sbatch_args))


_DEFAULTS = {"partition": ("--partition", None), "gpus_per_run": ("--gpus-per-run", 0),
             "cpus_per_run": ("--cpus-per-run", 1), "time_limit": ("--time", "4:00:00"),
             "max_parallel": ("--max-parallel", None), "sbatch_args": ("--sbatch-arg", ()),
             "no_wait": ("--no-wait", False)}


def check_executor_options(executor: str, **given: object) -> None:
    """With ``--executor slurm``: Slurm's commands must exist (checked before any work);
    without it, Slurm options are a usage error, not ignored."""
    if executor == "slurm":
        from ctrbench.runs.slurm import require_slurm

        require_slurm()
        return
    wrong = [_DEFAULTS[k][0] for k, v in given.items() if k in _DEFAULTS and v != _DEFAULTS[k][1]]
    if wrong:
        verb = "only apply" if len(wrong) > 1 else "only applies"
        raise click.UsageError(f"{', '.join(wrong)} {verb} with --executor slurm")


def reattach_hint(job_ids: Sequence[str]) -> str:
    from ctrbench.runs.slurm import cancel_hint

    jobs = ",".join(sorted(set(job_ids)))
    return (f"the Slurm job(s) {jobs} keep running. Reattach: run the same command again (it "
            f"submits nothing that is queued or running, and waits); follow: squeue -j {jobs}; "
            f"stop: {cancel_hint(job_ids)}")


def say_left_running(exc: BaseException, job_ids: Sequence[str]) -> None:
    """On Ctrl-C (then exit 130) or SIGTERM (exit 143) while jobs run: say how to reattach."""
    if not job_ids:
        return
    if isinstance(exc, KeyboardInterrupt):
        click.echo(f"\nInterrupted: {reattach_hint(job_ids)}", err=True)
        sys.exit(130)
    if isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:
        click.echo(f"\nTerminated: {reattach_hint(job_ids)}", err=True)


@contextlib.contextmanager
def left_running(job_ids: Sequence[str]) -> Iterator[None]:
    """Ctrl-C or SIGTERM in the block leaves ``job_ids`` running and says how to reattach."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        say_left_running(exc, job_ids)
        raise


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends (sbatch done and every run marked), then
    raise them (KeyboardInterrupt, SystemExit(143)): a job submitted but not marked would be
    submitted again by the next run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if signal.SIGTERM in caught:
        raise SystemExit(128 + signal.SIGTERM)
    if caught:
        raise KeyboardInterrupt


def run_on_slurm(handle, specs, results_root: Path, options, *, device: str, force: bool,
                 no_wait: bool) -> list:
    """Submit the pending runs of ``specs`` (attach to queued/running ones) and wait; returns
    one RunResult per spec. Ctrl-C while waiting leaves the jobs running (exit 130)."""
    from ctrbench import progress
    from ctrbench.runs import slurm, slurm_runs

    slurm.require_slurm()
    tracked = []
    try:
        with deferred_interrupt(), slurm_runs.submission_lock(results_root):
            done, attached, todo = slurm_runs.reconcile(specs, handle, force)
            fresh = slurm_runs.submit_runs(todo, handle, options, results_root=results_root,
                                           device=device, force=force)
            tracked = attached + fresh
        if attached:
            jobs = ",".join(sorted({t.job_id for t in attached}))
            progress.message(f"{len(attached)} run(s) already queued or running in Slurm "
                             f"job(s) {jobs}: not submitted again")
        if fresh:
            sub = Path(slurm_runs.read_marker(fresh[0].spec)["submission"])
            progress.message(f"submitted {len(fresh)} run(s) as Slurm job array "
                             f"{fresh[0].job_id} (script, manifest and logs in {sub})")
        elif not attached:
            progress.message("nothing to submit")
        if tracked and no_wait:
            click.echo(f"not waiting: {reattach_hint([t.job_id for t in tracked])}", err=True)
        elif tracked:
            slurm_runs.wait(tracked, handle, interval=slurm_runs.poll_interval(),
                            on_line=progress.message)
    except (KeyboardInterrupt, SystemExit) as exc:
        say_left_running(exc, [t.job_id for t in tracked])
        raise
    return slurm_runs.results_of(specs, done, tracked)


def tune_on_slurm(study, handle, *, workers: int, model: str, store: Path, storage_url: str,
                  heartbeat: int, settings, signature: dict, out_dir: Path, options,
                  no_wait: bool):
    """Top the study's Slurm workers up to ``workers`` and wait for them to end; returns the
    study's TuneSummary (None with --no-wait). Ctrl-C leaves the workers running (exit 130)."""
    from optuna.trial import TrialState

    from ctrbench import progress
    from ctrbench.runs import slurm, slurm_runs
    from ctrbench.tune import slurm_workers
    from ctrbench.tune.study import count_states

    slurm.require_slurm()
    counts = count_states(study)
    done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    with deferred_interrupt():
        live = slurm_workers.live_workers(out_dir)
        missing = 0 if done >= settings.n_trials else workers - len(live)
        job_ids = sorted({job for job, _ in live if job.isdigit()})  # not an unconfirmed name
        if missing > 0:
            job_ids.append(slurm_workers.submit_workers(
                missing, model=model, store=store, study_name=study.study_name,
                storage_url=storage_url, heartbeat=heartbeat, settings=settings,
                signature=signature, out_dir=out_dir, options=options))
            progress.message(f"submitted {missing} worker(s) as Slurm job array {job_ids[-1]} "
                             f"(logs in {out_dir / 'slurm'})")
    if live:
        progress.message(f"{len(live)} worker(s) already queued or running: not submitted again")
    for job, why in sorted({(job, s.reason) for (job, _), s in live.items() if not job.isdigit()}):
        progress.message(f"counted as workers: the tasks of job {job}: {why}")
    if job_ids and no_wait:
        click.echo(f"not waiting: {reattach_hint(job_ids)}", err=True)
        return None
    with left_running(job_ids):
        slurm_workers.wait_workers(study, out_dir, interval=slurm_runs.poll_interval(),
                                   on_line=progress.message)
    reason = "no Slurm worker of this study is queued or running"
    running = count_states(study)[TrialState.RUNNING]
    if running and not handle.heartbeat:
        reason += (f"; {running} trial(s) were left RUNNING by killed workers: re-run with "
                   "--fail-running")
    return slurm_workers.summary_of(study, handle.display, reason)
