"""``ctrbench run --executor slurm``: every pending run as one task of a Slurm job array.

- Submission: the dataset is prepared on the submitting host first (so no two tasks ever build
  the same store); a submission directory ``<results>/slurm/<stamp>/`` holds ``manifest.json``
  (store path, resolved model cards, run ids, record paths), ``job.sh`` and ``logs/<job>_<i>.log``.
  Each run gets a marker ``seed-<k>.<run id>.slurm-job`` beside its record naming its job and
  task (one per run id: two configurations of one seed never share a marker).
- Tasks (:mod:`ctrbench.runs.slurm_task`) open the prepared store, check the run id, and run
  :func:`ctrbench.runs.runner.execute_one` (same lock, same record, same results directory as a
  local run). SIGTERM (``scancel``, time limit, preemption) is recorded as a failed run.
- Re-running: finished records are skipped; a run whose marker's task is still queued or running
  (``squeue``) is attached to, never submitted twice; a task that ended without a record
  (SIGKILL, node failure) is recorded as failed here; failed and missing runs are submitted.
  A submission that sbatch did not confirm (no answer in time) is looked for by its job's
  unique name first (:func:`resolve_unconfirmed`).
  Submissions from several shells at once are serialised by a lock file in ``<results>/slurm``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrbench import progress
from ctrbench.errors import CtrbenchError
from ctrbench.record import atomic_write_text, read_record
from ctrbench.runs import runner, slurm
from ctrbench.runs.runner import DatasetHandle, RunResult, RunSpec, record_failed

SETTLE_S = 5.0  # a task that ended is given this long for its record to appear (shared disks)


@dataclass
class Tracked:
    """A run handed to Slurm: its spec, its task and the last state seen."""

    spec: RunSpec
    job_id: str
    index: int
    state: str = "submitted"  # pending | running | finished | failed | locked
    detail: str = ""
    submitted_at: str = ""  # ISO UTC (the marker's): older failed records are not this task's
    ended_at: float | None = None  # when squeue first stopped listing it as active
    force: bool = False  # --force: older finished records are not this task's either

    @property
    def task(self) -> str:
        return f"{self.job_id}_{self.index}"

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed", "locked")


# --------------------------------------------------------------------------- markers
def marker_path(record_file: Path, run_id: str | None = None) -> Path:
    """``seed-<k>.<run id>.slurm-job``: one marker per run id, so that two configurations of
    one (model, seed) never share one. Without ``run_id``: the one-per-record-file marker
    ``seed-<k>.slurm-job`` of earlier versions (still read, for its own run id only)."""
    record_file = Path(record_file)
    if run_id is None:
        return record_file.with_suffix(".slurm-job")
    return record_file.with_name(f"{record_file.stem}.{run_id}.slurm-job")


def _marker_json(path: Path) -> dict[str, Any] | None:
    """The marker file's JSON object with an integer task ``index``, else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # (json.JSONDecodeError and UnicodeDecodeError too)
        return None
    return data if isinstance(data, dict) and isinstance(data.get("index"), int) else None


def _load_marker(path: Path) -> dict[str, Any] | None:
    """A marker of a submission sbatch confirmed (a job id), else None."""
    data = _marker_json(path)
    return data if data is not None and str(data.get("job_id", "")).isdigit() else None


def read_marker(spec: RunSpec) -> dict[str, Any] | None:
    """The marker of the spec's run id (its own file, else an earlier version's
    one-per-record-file marker when that names the same run id); None when there is none."""
    for path in (marker_path(spec.record_file, spec.run_id), marker_path(spec.record_file)):
        data = _load_marker(path)
        if data is not None and data.get("run_id") == spec.run_id:
            return data
    return None


def write_marker(spec: RunSpec, data: dict[str, Any]) -> None:
    atomic_write_text(marker_path(spec.record_file, spec.run_id),
                      json.dumps(data, indent=2, sort_keys=True) + "\n")
    legacy = marker_path(spec.record_file)
    if (_load_marker(legacy) or {}).get("run_id") == spec.run_id:
        legacy.unlink(missing_ok=True)  # superseded: never read in place of the new one


def now_iso() -> str:
    """Now, in ISO UTC to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def record_outcome(spec: RunSpec, since: str = "", force: bool = False
                   ) -> tuple[str, str] | None:
    """("finished" | "failed", detail) when the spec's record carries its run id, else None.

    ``since`` (an ISO UTC time): a failed record older than that (an earlier attempt's) does not
    count; with ``force`` (a forced rerun) neither does an older finished one."""
    if not spec.record_file.is_file():
        return None
    try:
        record = read_record(spec.record_file)
    except CtrbenchError:
        return None
    if record.run_id != spec.run_id or record.status not in ("finished", "failed"):
        return None
    if since and (force or record.status == "failed") and (record.finished_at or "") < since:
        return None
    if record.status == "finished":
        return "finished", f"test AUC {record.test.get('auc', float('nan')):.4f}"
    return "failed", record.error or ""


# --------------------------------------------------------------------------- lost tasks
def task_info_path(submission: Path, index: int) -> Path:
    """Where a task notes its host and pid when it starts."""
    return Path(submission) / "tasks" / f"{index}.json"


def _clear_dead_task_lock(spec: RunSpec, marker: dict[str, Any]) -> None:
    """Remove the lock a task left when it was killed: Slurm says the task has ended, and the
    lock names the host and pid that the task noted when it started."""
    path = runner.lock_path(spec.record_file)
    try:
        holder = json.loads(path.read_text())
        task = json.loads(task_info_path(marker["submission"], int(marker["index"])).read_text())
    except (OSError, KeyError, ValueError):
        return
    if (isinstance(holder, dict) and isinstance(task, dict)
            and holder.get("host") == task.get("host") and holder.get("pid") == task.get("pid")):
        path.unlink(missing_ok=True)


TASK_ERROR = "ctrbench slurm task: error: "  # a task's last word on why it could not run


def task_reason(log: str | os.PathLike | None) -> str:
    """The last ``TASK_ERROR`` line of a task's log ("" when none or no log)."""
    try:
        with open(log or "", "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 65536))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.startswith(TASK_ERROR)]
    return lines[-1][len(TASK_ERROR):].strip() if lines else ""


def record_lost(spec: RunSpec, dataset: DatasetHandle, marker: dict[str, Any],
                state: slurm.TaskState | None) -> RunResult:
    """A task that ended without leaving its run's record: record the run as failed, with the
    reason the task wrote to its log when it could not run."""
    _clear_dead_task_lock(spec, marker)
    how = f"state {state.state}" if state is not None else "no longer listed by squeue"
    task, log = f"{marker['job_id']}_{marker['index']}", marker.get("log")
    reason = task_reason(log)
    started = "submission" in marker and task_info_path(marker["submission"],
                                                        int(marker["index"])).exists()
    if reason:
        what = f"without writing a record: {reason}"
    elif not started and log and not Path(log).exists():
        what = "before it started (cancelled while queued?)"
    else:
        what = "without writing a record (killed, out of memory or node failure?)"
    error = f"Slurm task {task} ended ({how}) {what}; log: {log or '?'}"
    since = marker.get("submitted_at", "") if marker.get("force") else ""
    return record_failed(spec, dataset, error, since=since)


# --------------------------------------------------------------------------- reconcile
@contextlib.contextmanager
def submission_lock(results_root: Path) -> Iterator[None]:
    """One submitter at a time per results directory (``flock``; waits for the other)."""
    path = Path(results_root) / "slurm" / ".submit.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def reconcile(specs: Sequence[RunSpec], dataset: DatasetHandle, force: bool = False
              ) -> tuple[list[RunResult], list[Tracked], list[RunSpec]]:
    """Split specs into done (finished records), attached (their task is queued or running)
    and to-submit (missing, failed, or whose task ended without a record: recorded failed).
    Runs of a submission that sbatch did not confirm are settled first; those that stay
    unsettled are refused, never submitted twice."""
    unsettled = resolve_unconfirmed(specs)
    done = [RunResult(s, "refused", unsettled[id(s)]) for s in specs if id(s) in unsettled]
    specs = [s for s in specs if id(s) not in unsettled]
    markers = {id(s): m for s in specs if (m := read_marker(s)) is not None}
    states = slurm.query(m["job_id"] for m in markers.values())
    attached: list[Tracked] = []
    todo: list[RunSpec] = []
    for spec in specs:
        marker = markers.get(id(spec))
        state = states.get((marker["job_id"], int(marker["index"]))) if marker else None
        if state is not None and state.active:
            attached.append(Tracked(spec, marker["job_id"], int(marker["index"]),
                                    "pending" if state.waiting else "running", _where(state),
                                    submitted_at=marker.get("submitted_at", ""),
                                    force=bool(marker.get("force"))))
            continue
        outcome = record_outcome(spec)
        if not force and outcome is not None and outcome[0] == "finished":
            done.append(RunResult(spec, "skipped", "finished"))
            continue
        kept = runner.record_state(spec)
        if not force and kept.protected:  # as a local run: refused, never submitted
            done.append(RunResult(spec, "refused", runner.refusal(kept)))
            continue
        if marker is not None and outcome is None:  # its task ended without a record
            result = record_lost(spec, dataset, marker, state)
            if result.status == "locked":  # a live process elsewhere runs it
                done.append(result)
                continue
        todo.append(spec)
    return done, attached, todo


def held_by_slurm(specs: Sequence[RunSpec], force: bool = False) -> dict[int, RunResult]:
    """For a local run: ``id(spec) -> RunResult(spec, "queued", ...)`` for every spec whose
    Slurm task (its marker's) is still queued or running, so that it is not run twice. Nothing
    is held with ``force``, nor when no marker names a task Slurm still lists; when Slurm
    cannot be asked (its commands missing, the controller down) nothing is held either, and a
    line says so (the run's lock and record rules still keep either run from overwriting the
    other's finished record). A run of a submission that sbatch did not confirm and that
    cannot be settled (:func:`resolve_unconfirmed`) is refused."""
    if force:
        return {}
    specs = [s for s in specs if runner.finished_record(s) is None]
    unsettled = resolve_unconfirmed(specs)
    held = {id(s): RunResult(s, "refused", unsettled[id(s)]) for s in specs
            if id(s) in unsettled}
    for result in held.values():  # (`plan` says nothing else about them)
        progress.message(f"{result.spec.model} seed {result.spec.seed}: {result.detail}")
    markers = {id(s): m for s in specs if (m := read_marker(s)) is not None}
    if not markers:
        return held
    try:
        states = slurm.query(m["job_id"] for m in markers.values())
    except CtrbenchError as exc:
        progress.message(f"warning: cannot ask Slurm about the runs it was given "
                         f"({exc.args[0]}); running them here")
        return held
    for spec in specs:
        marker = markers.get(id(spec))
        state = states.get((marker["job_id"], marker["index"])) if marker else None
        if state is not None and state.active:
            held[id(spec)] = RunResult(spec, "queued", _queued_here(marker, state))
            progress.message(f"{spec.model} seed {spec.seed}: {held[id(spec)].detail}")
    return held


def _queued_here(marker: dict[str, Any], state: slurm.TaskState) -> str:
    task = f"{marker['job_id']}_{marker['index']}"
    now = " ".join(filter(None, ("pending" if state.waiting else "running", _where(state))))
    return (f"queued on Slurm as task {task}, {now}; not run here. Wait for it: the same "
            f"command with --executor slurm; cancel it: scancel {task}; or --force to run it "
            "here as well")


# --------------------------------------------------------------------------- submit
def task_command(manifest: Path, kind: str = "run",
                 module: str = "ctrbench.runs.slurm_task") -> list[str]:
    """The command each array task runs (its index is appended by the script)."""
    return [sys.executable, "-m", module, kind, str(manifest)]


def new_submission_dir(results_root: Path) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(results_root).resolve() / "slurm" / f"{stamp}-{uuid.uuid4().hex[:6]}"
    (path / "logs").mkdir(parents=True)
    return path


def sbatch_submission(sub: Path, job_name: str, *, unconfirmed: Callable[[], None],
                      settles: str, env: dict[str, str] | None = None) -> str:
    """``sbatch`` the ``job.sh`` of submission directory ``sub``; writes ``sub/job_id`` and
    returns the job id. A refused submission leaves no directory behind; one that sbatch did
    not answer in time keeps it (the job may exist and its tasks need the manifest), calls
    ``unconfirmed`` (which notes it, by its unique ``job_name``, for the next command: what
    that command does is ``settles``) and says how to look for the job."""
    try:
        job_id = slurm.submit(sub / "job.sh", env=env)
    except slurm.NoAnswer as exc:
        unconfirmed()
        raise CtrbenchError(
            f"{exc.args[0]}: the job array may have been submitted all the same; its script, "
            f"manifest and logs are kept in {sub}",
            hint=(f"`squeue --name={job_name}` lists it if it exists; {settles}. "
                  "CTRBENCH_SLURM_TIMEOUT=<seconds> waits longer")) from None
    except BaseException:  # refused: leave no submission directory behind
        shutil.rmtree(sub, ignore_errors=True)
        raise
    atomic_write_text(sub / "job_id", job_id + "\n")
    return job_id


def submit_runs(todo: Sequence[RunSpec], dataset: DatasetHandle, options: slurm.SlurmOptions, *,
                results_root: Path, device: str, force: bool) -> list[Tracked]:
    """Write the manifest and job script of ``todo``, sbatch it, mark every run; one array."""
    if not todo:
        return []
    sub = new_submission_dir(results_root)
    manifest = {
        "kind": "run", "dataset": dataset.name, "store": str(Path(dataset.data.path).resolve()),
        "dataset_config": dataset.config, "device": device, "force": bool(force),
        "plugins": runner._plugin_modules(todo),
        "tasks": [{"model": s.model, "seed": s.seed, "card": s.card.resolved(),
                   "run_id": s.run_id, "record": str(s.record_file.resolve())} for s in todo],
    }
    manifest_file = sub / "manifest.json"
    atomic_write_text(manifest_file, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    script = sub / "job.sh"
    job_name = f"ctrbench-{dataset.name}-{sub.name}"  # unique: finds a job sbatch did not confirm
    script.write_text(slurm.array_script(
        job_name=job_name, n_tasks=len(todo), log_dir=sub / "logs",
        chdir=Path.cwd(), command=task_command(manifest_file), options=options))
    marker = {"job_name": job_name, "submission": str(sub), "submitted_at": now_iso(),
              "force": bool(force)}
    job_id = sbatch_submission(
        sub, job_name, unconfirmed=lambda: _mark(todo, {**marker, "job_id": None}),
        settles=("the next `ctrbench run` of these runs looks for it by that name and waits "
                 "for it, or submits them again if Slurm never got it"))
    _mark(todo, {**marker, "job_id": job_id})
    return [Tracked(spec, job_id, index, "pending", submitted_at=marker["submitted_at"],
                    force=bool(force)) for index, spec in enumerate(todo)]


def _mark(specs: Sequence[RunSpec], marker: dict[str, Any]) -> None:
    """Write the marker of every run of one submission (array task ``i`` runs ``specs[i]``);
    ``job_id`` None: sbatch did not answer, the job is looked for by its name later."""
    job_id, sub = marker["job_id"], Path(marker["submission"])
    for index, spec in enumerate(specs):
        log = {"log": _task_log(sub, job_id, index)} if job_id else {}
        write_marker(spec, {**marker, **log, "index": index, "run_id": spec.run_id})


def _task_log(sub: Path, job_id: str, index: int) -> str:
    return str(sub / "logs" / f"{job_id}_{index}.log")  # (array_script's --output pattern)


# --------------------------------------------------------------------------- unconfirmed
UNCONFIRMED_GRACE_S = 300.0  # a job not listed this long after its sbatch was never made


def read_unconfirmed(spec: RunSpec) -> dict[str, Any] | None:
    """The spec's marker when it names a submission that sbatch did not confirm (no job id,
    a job name to look for), else None."""
    data = _marker_json(marker_path(spec.record_file, spec.run_id))
    if (data is not None and data.get("job_id") is None and data.get("job_name")
            and data.get("run_id") == spec.run_id):
        return data
    return None


def resolve_unconfirmed(specs: Sequence[RunSpec]) -> dict[int, str]:
    """Settle the runs of submissions that sbatch did not confirm, by their job's name: a job
    Slurm lists gets its markers (as a confirmed submission); one Slurm does not list, past
    ``UNCONFIRMED_GRACE_S``, is forgotten (its runs are pending again). Returns ``id(spec) ->
    why`` for the runs that stay unsettled (Slurm cannot be asked, or not listed yet)."""
    groups: dict[str, list[tuple[RunSpec, dict[str, Any]]]] = {}
    for spec in specs:
        if (marker := read_unconfirmed(spec)) is not None:
            groups.setdefault(marker["job_name"], []).append((spec, marker))
    unsettled = {}
    for name, group in groups.items():
        sub = Path(group[0][1]["submission"])
        try:
            job_id = _read_job_id(sub) or max(slurm.jobs_named(name), key=int, default=None)
        except CtrbenchError as exc:
            why = f"Slurm cannot be asked ({exc.args[0]})"
        else:
            if job_id is not None:
                _confirm(group, sub, job_id)
                continue
            if submission_age_s(group[0][1]) >= UNCONFIRMED_GRACE_S:
                _forget(group, sub)
                continue
            why = "Slurm does not list it (yet)"
        for spec, marker in group:
            unsettled[id(spec)] = _unsettled(spec, marker, why)
    return unsettled


def _read_job_id(sub: Path) -> str | None:
    """The job id an earlier command found for submission ``sub`` (its ``job_id`` file)."""
    try:
        text = (sub / "job_id").read_text().strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def submission_age_s(marker: dict[str, Any]) -> float:
    """Seconds since ``marker["submitted_at"]`` (ISO UTC; infinite when it has none)."""
    try:
        then = dt.datetime.fromisoformat(marker["submitted_at"])
    except (KeyError, TypeError, ValueError):
        return float("inf")
    return (dt.datetime.now(dt.timezone.utc) - then).total_seconds()


def _confirm(group: Sequence[tuple[RunSpec, dict[str, Any]]], sub: Path, job_id: str) -> None:
    atomic_write_text(sub / "job_id", job_id + "\n")
    for spec, marker in group:
        write_marker(spec, {**marker, "job_id": job_id,
                            "log": _task_log(sub, job_id, marker["index"])})
    progress.message(f"found Slurm job {job_id} ({group[0][1]['job_name']}), submitted when "
                     f"sbatch did not answer: {len(group)} run(s) marked as its tasks")


def _forget(group: Sequence[tuple[RunSpec, dict[str, Any]]], sub: Path) -> None:
    for spec, _ in group:
        marker_path(spec.record_file, spec.run_id).unlink(missing_ok=True)
    if not any((sub / "logs").glob("*")):  # (a job that ran and was forgotten left logs)
        shutil.rmtree(sub, ignore_errors=True)


def _unsettled(spec: RunSpec, marker: dict[str, Any], why: str) -> str:
    name = marker["job_name"]
    return (f"not submitted again: sbatch did not confirm submission {marker['submission']} "
            f"and {why}. Look with `squeue --name={name}`: if it is listed, the same command "
            f"attaches to it once Slurm answers; if it never will be, remove "
            f"{marker_path(spec.record_file, spec.run_id)} and run the command again")


# --------------------------------------------------------------------------- wait
def _where(state: slurm.TaskState) -> str:
    """"on node1" for a running task, "(Priority)" for a pending one, "" without a reason."""
    if not state.reason or state.reason in ("None", "(None)", "(null)"):
        return ""
    return f"({state.reason.strip('()')})" if state.waiting else f"on {state.reason}"


def _counts(tracked: Sequence[Tracked]) -> dict[str, int]:
    counts = dict.fromkeys(("pending", "running", "finished", "failed"), 0)
    for t in tracked:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def status_line(tracked: Sequence[Tracked]) -> str:
    jobs = ",".join(sorted({t.job_id for t in tracked}))
    counts = _counts(tracked)  # the four states always, others (locked) when present
    text = ", ".join(f"{n} {state}" for i, (state, n) in enumerate(counts.items()) if n or i < 4)
    return f"slurm job {jobs}: {len(tracked)} run(s): {text}"


def poll(tracked: Sequence[Tracked], dataset: DatasetHandle,
         now: float | None = None) -> list[Tracked]:
    """Refresh every unfinished task's state from squeue and the records; returns the ones whose
    state changed."""
    now = time.monotonic() if now is None else now
    open_ = [t for t in tracked if not t.done]
    states = slurm.query(t.job_id for t in open_)
    changed = []
    for t in open_:
        state = states.get((t.job_id, t.index))
        before = (t.state, t.detail)
        if state is not None and state.active:
            t.state = "pending" if state.waiting else "running"
            t.detail = _where(state)
            t.ended_at = None
        else:
            outcome = record_outcome(t.spec, since=t.submitted_at, force=t.force)
            if outcome is not None:
                t.state, t.detail = outcome
            elif t.ended_at is None:
                t.ended_at = now  # give the record SETTLE_S to show up on a shared disk
            elif now - t.ended_at >= SETTLE_S:
                marker = read_marker(t.spec) or {
                    "job_id": t.job_id, "index": t.index, "force": t.force,
                    "submitted_at": t.submitted_at}
                result = record_lost(t.spec, dataset, marker, state)
                t.state, t.detail = result.status, result.detail
        if (t.state, t.detail) != before:
            changed.append(t)
    return changed


def wait(tracked: Sequence[Tracked], dataset: DatasetHandle, *, interval: float = 10.0,
         on_line: Callable[[str], None] = lambda line: None) -> None:
    """Poll until every task has finished or failed; one line per state change of a run and a
    count line whenever the counts change. KeyboardInterrupt leaves the jobs running."""
    last = None
    while True:
        try:
            changed = poll(tracked, dataset)
        except CtrbenchError as exc:  # squeue failed: the controller may be restarting
            on_line(f"warning: {exc}; retrying in {interval:g} s")
            changed = []
        for t in changed:
            detail = f" {t.detail}" if t.detail else ""
            on_line(f"{t.spec.model} seed {t.spec.seed} (task {t.task}): {t.state}{detail}")
        line = status_line(tracked)
        if line != last:
            on_line(line)
            last = line
        if all(t.done for t in tracked):
            return
        time.sleep(interval)


def results_of(specs: Sequence[RunSpec], done: Sequence[RunResult],
               tracked: Sequence[Tracked]) -> list[RunResult]:
    """One RunResult per spec, in the specs' order (queued/running ones as such)."""
    by_id: dict[int, RunResult] = {id(r.spec): r for r in done}
    for t in tracked:
        status = "queued" if t.state in ("pending", "submitted") else t.state
        by_id[id(t.spec)] = RunResult(t.spec, status, f"task {t.task} {t.detail}".strip())
    return [by_id[id(s)] for s in specs]


def poll_interval() -> float:
    """Seconds between two ``squeue`` calls while waiting (``$CTRBENCH_SLURM_POLL``, default
    10)."""
    try:
        return max(0.5, float(os.environ.get("CTRBENCH_SLURM_POLL", "10")))
    except ValueError:
        raise CtrbenchError("CTRBENCH_SLURM_POLL must be a number of seconds") from None
