"""``ctrbench tune --executor slurm --workers N``: N Slurm array tasks, one shared Optuna study.

The submitting host prepares the dataset and opens (creates) the study, queueing the card's own
values as the first trial; each task (:func:`run_worker`) opens the prepared store by path, checks
that its card and data still give the study's signature, and runs trials until the study holds
the requested number (the counting of :func:`ctrbench.tune.study.run_study`, so N workers never
overshoot). The storage must be reachable from every node: PostgreSQL (``postgresql://...``) or
a journal file on a shared disk (``journal:PATH``, the default here); SQLite is refused. A URL
with a password reaches the tasks through the job's environment (``CTRBENCH_TUNE_STORAGE``),
never through the script on disk.

Re-running the command tops the workers up to N: tasks of earlier submissions that are still
queued or running count (``<results>/tuning/<study>/slurm-jobs.json`` lists them). A submission
that sbatch did not answer in time is listed by its job's unique name and task count: the next
command finds its job by that name (then counts its tasks), counts it as its tasks while Slurm
does not list it yet or cannot be asked, and forgets it ``UNCONFIRMED_GRACE_S`` after the
sbatch if Slurm never listed it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ctrbench.errors import CtrbenchError
from ctrbench.record import atomic_write_text
from ctrbench.runs import slurm
from ctrbench.runs.slurm_runs import now_iso, submission_age_s
from ctrbench.tune.storage import JOURNAL_PREFIX, redact, safe_file_name

STORAGE_ENV = "CTRBENCH_TUNE_STORAGE"
UNCONFIRMED = "UNCONFIRMED"  # the state of a stand-in task of a submission sbatch did not confirm
UNCONFIRMED_GRACE_S = 300.0  # a job not listed this long after its sbatch was never made


def default_storage(results_root: Path, study_name: str) -> str:
    """``journal:<results>/tuning/<study>.log`` (on the shared results disk)."""
    path = Path(results_root).resolve() / "tuning" / f"{safe_file_name(study_name)}.log"
    return f"{JOURNAL_PREFIX}{path}"


def check_shared_storage(url: str) -> str:
    """Refuse storages that workers on several nodes cannot share; absolute journal paths."""
    if url.startswith(JOURNAL_PREFIX):
        return f"{JOURNAL_PREFIX}{Path(url[len(JOURNAL_PREFIX):]).resolve()}"
    if url.startswith("sqlite"):
        raise CtrbenchError("--executor slurm cannot share a SQLite storage between nodes",
                            hint="use --storage postgresql://user:pass@host/db or "
                                 "--storage journal:PATH on a disk every node mounts")
    return url


def _jobs_file(out_dir: Path) -> Path:
    return Path(out_dir) / "slurm-jobs.json"


def _read_jobs(out_dir: Path) -> list[Any]:
    """The study's submissions: job ids, and ``{"name", "tasks", "submitted_at"}`` for one that
    sbatch did not confirm."""
    try:
        jobs = json.loads(_jobs_file(out_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return jobs if isinstance(jobs, list) else []


def _note_job(out_dir: Path, entry: Any, replacing: Any = None) -> None:
    """Add ``entry`` to the study's submissions, in place of ``replacing`` when given (None:
    only remove ``replacing``)."""
    jobs = [j for j in _read_jobs(out_dir) if j != replacing]
    if entry is not None:
        jobs.append(entry)
    atomic_write_text(_jobs_file(out_dir), json.dumps(jobs) + "\n")


def _settle_unconfirmed(out_dir: Path) -> tuple[list[str], dict[tuple[str, int], slurm.TaskState]]:
    """The job ids of the study's submissions, with those sbatch did not confirm looked up by
    name (found: noted by id; unlisted past the grace time: forgotten), and a stand-in task
    for each task of a submission still unsettled (Slurm cannot be asked, or not listed yet):
    it may run, so it counts as a worker."""
    ids: list[str] = []
    unsettled: dict[tuple[str, int], slurm.TaskState] = {}
    for entry in _read_jobs(out_dir):
        if not isinstance(entry, dict):
            ids.append(str(entry))
            continue
        name = str(entry.get("name", ""))
        try:
            found = max(slurm.jobs_named(name), key=int, default=None)
        except CtrbenchError as exc:
            why = f"sbatch did not answer and Slurm cannot be asked ({exc.args[0]})"
        else:
            if found is not None:
                _note_job(out_dir, found, replacing=entry)
                ids.append(found)
                continue
            if submission_age_s(entry) >= UNCONFIRMED_GRACE_S:
                _note_job(out_dir, None, replacing=entry)  # never made
                continue
            why = "sbatch did not answer; Slurm does not list it (yet)"
        for index in range(int(entry.get("tasks", 1))):
            unsettled[(name, index)] = slurm.TaskState(UNCONFIRMED, f"{why}; squeue --name={name}")
    return ids, unsettled


def live_workers(out_dir: Path) -> dict[tuple[str, int], slurm.TaskState]:
    """Tasks of earlier submissions for this study that are still queued or running, and a
    stand-in (state ``UNCONFIRMED``, keyed by the job's name) for each task of a submission
    that sbatch did not confirm and Slurm does not list yet."""
    ids, unsettled = _settle_unconfirmed(out_dir)
    states = slurm.query(ids)
    return {**{k: s for k, s in states.items() if s.active}, **unsettled}


def submit_workers(n: int, *, model: str, store: Path, study_name: str, storage_url: str,
                   heartbeat: int, settings: Any, signature: dict[str, Any], out_dir: Path,
                   options: slurm.SlurmOptions) -> str:
    """Write the manifest and job script of ``n`` workers and sbatch them; returns the job id."""
    secret = redact(storage_url) != storage_url
    sub = out_dir / "slurm" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    sub = sub.with_name(f"{sub.name}-{os.urandom(3).hex()}")
    (sub / "logs").mkdir(parents=True)
    manifest = {"kind": "tune", "model": model, "store": str(Path(store).resolve()),
                "study": study_name, "storage": None if secret else storage_url,
                "heartbeat": heartbeat, "settings": dataclasses.asdict(settings),
                "signature": signature}
    manifest_file = sub / "manifest.json"
    atomic_write_text(manifest_file, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    from ctrbench.runs.slurm_runs import sbatch_submission, task_command

    # unique (the submission's folder): the next command finds a job sbatch did not confirm
    job_name = f"ctrbench-tune-{safe_file_name(study_name)}-{sub.name}"
    (sub / "job.sh").write_text(slurm.array_script(
        job_name=job_name, n_tasks=n, log_dir=sub / "logs", chdir=Path.cwd(), options=options,
        command=task_command(manifest_file, "tune", module="ctrbench.tune.slurm_task")))
    unconfirmed = {"name": job_name, "tasks": n, "submitted_at": now_iso()}
    job_id = sbatch_submission(
        sub, job_name, env={STORAGE_ENV: storage_url} if secret else None,
        unconfirmed=lambda: _note_job(out_dir, unconfirmed),
        settles=(f"the next `ctrbench tune` of this study looks for it by that name and counts "
                 f"its {n} worker(s), or submits them again if Slurm never got it"))
    _note_job(out_dir, job_id)
    return job_id


def study_line(study: optuna.Study, workers: dict[tuple[str, int], slurm.TaskState]) -> str:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    pending = sum(s.waiting for s in workers.values())
    unconfirmed = sum(s.state == UNCONFIRMED for s in workers.values())
    return (f"study {study.study_name!r}: {counts[TrialState.COMPLETE]} complete, "
            f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed, "
            f"{counts[TrialState.RUNNING]} running; workers: {pending} pending, "
            f"{len(workers) - pending - unconfirmed} running"
            + (f", {unconfirmed} of a submission sbatch did not confirm" if unconfirmed else ""))


def wait_workers(study: optuna.Study, out_dir: Path, *, interval: float,
                 on_line: Callable[[str], None]) -> None:
    """Poll until no worker of this study is queued or running; a line when anything changes."""
    last = None
    while True:
        try:
            workers = live_workers(out_dir)
        except CtrbenchError as exc:  # squeue failed: the controller may be restarting
            on_line(f"warning: {exc}; retrying in {interval:g} s")
            workers = None
        if workers is not None:
            line = study_line(study, workers)
            if line != last:
                on_line(line)
                last = line
            if not workers:
                return
        time.sleep(interval)


# --------------------------------------------------------------------------- in the task
def run_worker(manifest: dict[str, Any], index: int, log: Callable[[str], None]) -> int:
    """One worker: trials on the shared study until it holds the requested number."""
    from ctrbench.cards import load_model_card
    from ctrbench.data.store import open_store
    from ctrbench.tune.space import parse_search_space
    from ctrbench.tune.storage import open_storage
    from ctrbench.tune.study import TuneSettings, open_study, run_study, study_signature

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the task logs its own trial lines
    url = manifest["storage"] or os.environ.get(STORAGE_ENV)
    if not url:
        log(f"no storage URL: {STORAGE_ENV} did not reach the job (sbatch --export?)")
        return 2
    settings = TuneSettings(**manifest["settings"])
    card = load_model_card(manifest["model"])
    space = parse_search_space(card)
    data = open_store(manifest["store"])
    signature = study_signature(card, data, settings)
    if signature != manifest["signature"]:
        log(f"the card or the data changed since submission: {signature} != "
            f"{manifest['signature']}")
        return 2
    handle = open_storage(url, Path.cwd(), manifest["study"], heartbeat=manifest["heartbeat"])
    study, _ = open_study(handle, manifest["study"], signature)
    log(f"worker {index} on study {manifest['study']!r} in {handle.display}")

    def on_trial(frozen, counts) -> None:
        value = f"value {frozen.value:.5f}" if frozen.value is not None else ""
        log(f"trial {frozen.number}: {frozen.state.name} {value}")

    summary = run_study(study, handle, data, card, space, settings, on_trial=on_trial)
    log(f"worker {index} stops: {summary.stop_reason}")
    return 0


def summary_of(study: optuna.Study, storage: str, stop_reason: str):
    """A TuneSummary of the study as it stands (the workers ran the trials)."""
    from ctrbench.tune.study import TuneSummary, count_states

    counts = count_states(study)
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return TuneSummary(study_name=study.study_name, storage=storage,
                       n_complete=counts[TrialState.COMPLETE], n_pruned=counts[TrialState.PRUNED],
                       n_failed=counts[TrialState.FAIL], n_running=counts[TrialState.RUNNING],
                       stop_reason=stop_reason, best=best)
