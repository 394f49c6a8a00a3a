"""A thin client of Slurm's own commands: write a job-array script, ``sbatch`` it, read ``squeue``.

Why ``sbatch`` directly and not submitit: the records on disk are the results, so nothing has to
be pickled and sent back; submitit reads job states with ``sacct``, which needs Slurm's
accounting daemon (slurmdbd and a database) that many small clusters, and the CI cluster of
``.ci/slurm.sh``, do not run; and a plain script under the results directory can be read,
edited and resubmitted by hand. Job states come from ``squeue`` (queued and running jobs, and
jobs that ended less than ``MinJobAge`` ago); the outcome of a run comes from its record.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctrbench.errors import CtrbenchError

# squeue states in which a job (array task) may still run or write its record
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                 "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT",
                 "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
WAITING_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED", "STOPPED",
                  "RESV_DEL_HOLD", "SPECIAL_EXIT"}
# Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$")
COMMAND_TIMEOUT_S = 60  # default wait for sbatch/squeue; $CTRBENCH_SLURM_TIMEOUT to change
# sbatch options that ctrbench writes itself: another value would break the link between array
# tasks, manifest entries and log files (--array: tasks without a run; --output/--error: logs
# where nothing looks; --chdir: relative paths elsewhere; --wrap: no script at all)
_OWN_OPTIONS = {"--array": "-a", "--output": "-o", "--error": "-e", "--chdir": "-D",
                "--wrap": None}


def check_time(value: str) -> None:
    if not _TIME.match(value):
        raise CtrbenchError(f"--time {value!r} is not a Slurm time limit",
                            hint="e.g. 4:00:00, 30:00, 120 (minutes) or 1-12:00:00")


def check_sbatch_arg(arg: str) -> None:
    if not arg.startswith("-"):
        raise CtrbenchError(f"--sbatch-arg {arg!r} is not an sbatch option",
                            hint="e.g. --sbatch-arg=--account=mylab")
    if "\n" in arg or "\r" in arg:
        raise CtrbenchError(f"--sbatch-arg {arg!r} spans several lines",
                            hint="one option per --sbatch-arg")
    name = arg.split("=", 1)[0]
    for long, short in _OWN_OPTIONS.items():
        if name == long or (short and arg.startswith(short)):
            raise CtrbenchError(f"--sbatch-arg {arg!r}: ctrbench sets {long} itself (one array "
                                "task per run, logs under <results>/slurm/)",
                                hint="use --max-parallel for --array's %N")


@dataclass(frozen=True)
class SlurmOptions:
    """What every task of a job array asks Slurm for (``ctrbench run/tune --executor slurm``)."""

    partition: str | None = None
    time: str = "4:00:00"  # per task: [D-]HH:MM:SS
    gpus_per_run: int = 0
    cpus_per_run: int = 1
    max_parallel: int | None = None  # tasks running at once (the array's %N)
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)  # e.g. --account=lab

    def __post_init__(self) -> None:
        check_time(self.time)
        if self.gpus_per_run < 0:
            raise CtrbenchError("--gpus-per-run must be >= 0")
        if self.cpus_per_run < 1:
            raise CtrbenchError("--cpus-per-run must be >= 1")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise CtrbenchError("--max-parallel must be >= 1")
        for arg in self.sbatch_args:
            check_sbatch_arg(arg)


@dataclass(frozen=True)
class TaskState:
    """One array task as ``squeue`` shows it."""

    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, ...
    reason: str  # the node list when running, the reason when pending

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def waiting(self) -> bool:
        return self.state in WAITING_STATES


def require_slurm() -> None:
    """Fail with a clear message when Slurm's client commands are not on PATH."""
    missing = [c for c in ("sbatch", "squeue") if shutil.which(c) is None]
    if missing:
        raise CtrbenchError(f"--executor slurm needs Slurm's commands; not found: "
                            f"{', '.join(missing)}",
                            hint="run on a Slurm login node (or start a test cluster with "
                                 "`eval \"$(bash .ci/slurm.sh)\"`)")


class NoAnswer(CtrbenchError):
    """A Slurm command that did not answer in time: it may still have acted (sbatch)."""


def command_timeout() -> float:
    """Seconds to wait for sbatch or squeue (``$CTRBENCH_SLURM_TIMEOUT``, default 60)."""
    value = os.environ.get("CTRBENCH_SLURM_TIMEOUT", "")
    try:
        seconds = float(value) if value else float(COMMAND_TIMEOUT_S)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise CtrbenchError(f"CTRBENCH_SLURM_TIMEOUT={value!r} is not a number of seconds > 0")
    return seconds


def _call(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    timeout = command_timeout()
    try:
        return subprocess.run(list(args), capture_output=True, text=True, check=False,
                              timeout=timeout,
                              env=None if env is None else {**os.environ, **env})
    except FileNotFoundError:
        require_slurm()
        raise
    except subprocess.TimeoutExpired:
        raise NoAnswer(f"`{shlex.join(args)}` did not answer in {timeout:g} s",
                       hint="is slurmctld reachable? try `scontrol ping`; "
                            "CTRBENCH_SLURM_TIMEOUT=<seconds> waits longer") from None


def _directive(option: str, value: object) -> str:
    """``#SBATCH --option=value``, the value in double quotes when it holds a space (sbatch
    splits a directive line on white space: a results directory "my runs" was refused)."""
    text = str(value)
    return f'#SBATCH {option}="{text}"' if any(c.isspace() for c in text) else (
        f"#SBATCH {option}={text}")


def array_script(*, job_name: str, n_tasks: int, log_dir: Path, chdir: Path,
                 command: Sequence[str], options: SlurmOptions,
                 environment: dict[str, str] | None = None) -> str:
    """A bash job-array script: one task per index 0..n_tasks-1, each running ``command`` with
    ``$SLURM_ARRAY_TASK_ID`` appended; logs ``<log_dir>/<jobid>_<index>.log``."""
    if n_tasks < 1:
        raise ValueError("n_tasks must be >= 1")
    array = f"0-{n_tasks - 1}"
    if options.max_parallel is not None:
        array += f"%{options.max_parallel}"
    lines = ["#!/bin/bash",
             _directive("--job-name", job_name),
             f"#SBATCH --array={array}",
             _directive("--output", f"{log_dir}/%A_%a.log"),
             _directive("--chdir", chdir),
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={options.cpus_per_run}",
             f"#SBATCH --time={options.time}"]
    if options.partition:
        lines.append(_directive("--partition", options.partition))
    if options.gpus_per_run:
        lines.append(f"#SBATCH --gres=gpu:{options.gpus_per_run}")
    lines += [f"#SBATCH {arg}" for arg in options.sbatch_args]
    lines += ["# written by ctrbench; `sbatch` this file again to rerun every task",
              "set -eu",
              'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"']
    for key, value in sorted((environment or {}).items()):
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append(f'exec {shlex.join(command)} "$SLURM_ARRAY_TASK_ID"')
    return "\n".join(lines) + "\n"


def submit(script: Path, env: dict[str, str] | None = None) -> str:
    """``sbatch`` a script; returns the (array) job id. ``env``: extra variables that reach the
    job through its environment (sbatch exports the submitting environment), not the script."""
    require_slurm()
    done = _call(["sbatch", "--parsable", str(script)], env=env)
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip()
        if "Unable to contact" in said or "connect failure" in said:
            raise CtrbenchError(f"sbatch cannot reach the Slurm controller: {said}",
                                hint="is slurmctld running? try `scontrol ping`; nothing was "
                                     "submitted")
        # (the script is not named: the caller removes a refused submission's directory)
        raise CtrbenchError(f"sbatch refused the job array: {said}",
                            hint="check --partition, --time, --gpus-per-run and --sbatch-arg "
                                 "against `sinfo`")
    job_id = done.stdout.strip().split(";", 1)[0]  # "<id>[;cluster]"
    if not job_id.isdigit():
        raise CtrbenchError(f"sbatch answered {done.stdout.strip()!r}, not a job id")
    return job_id


def query(job_ids: Iterable[str]) -> dict[tuple[str, int], TaskState]:
    """``(job id, array index) -> TaskState`` for the given array jobs; tasks that Slurm has
    forgotten (ended longer than ``MinJobAge`` ago) are absent. Raises CtrbenchError when
    ``squeue`` itself fails (controller unreachable)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    done = _call(["squeue", "--noheader", "--array", "--states=all", "--jobs", ",".join(ids),
                  "--format=%F|%K|%T|%R"])
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return {}  # (a single id was given and) Slurm has forgotten it
        raise CtrbenchError(f"squeue failed: {done.stderr.strip() or done.stdout.strip()}",
                            hint="is slurmctld reachable? try `scontrol ping`")
    states: dict[tuple[str, int], TaskState] = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            continue  # not an array task
        states[(parts[0], int(parts[1]))] = TaskState(parts[2], parts[3])
    return states


def jobs_named(name: str) -> list[str]:
    """Ids of the jobs named ``name`` that ``squeue`` lists (queued, running, or ended less
    than ``MinJobAge`` ago), oldest first. Raises CtrbenchError when ``squeue`` fails."""
    done = _call(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%F"])
    if done.returncode != 0:
        raise CtrbenchError(f"squeue failed: {done.stderr.strip() or done.stdout.strip()}",
                            hint="is slurmctld reachable? try `scontrol ping`")
    return sorted({line.strip() for line in done.stdout.splitlines()
                   if line.strip().isdigit()}, key=int)


def cancel_hint(job_ids: Iterable[str]) -> str:
    return f"scancel {' '.join(sorted(set(job_ids)))}"
