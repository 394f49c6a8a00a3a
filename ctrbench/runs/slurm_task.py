"""What one Slurm array task runs: ``python -m ctrbench.runs.slurm_task run MANIFEST INDEX``.

- ``run``: task INDEX of a ``ctrbench run --executor slurm`` submission. Opens the prepared store
  named in the manifest (never prepares it), rebuilds the resolved model card, checks that the
  run id is the one submitted, and runs it through :func:`ctrbench.runs.runner.execute_one`
  (lock, atomic record, same results directory). SIGTERM (``scancel``, the time limit,
  preemption) is recorded as a failed run before the task exits.
- ``tune`` tasks have their own entry point, :mod:`ctrbench.tune.slurm_task` (tune sits above
  runs), which shares this module's set-up and dispatch (:func:`task_main`).

Exit status: 0 finished (or skipped / locked by this run elsewhere), 1 failed, refused (e.g.
another configuration holds the run's lock) or unsaved, 2 a bad manifest, 143 killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ctrbench.errors import install_termination_handler
from ctrbench.record import atomic_write_text


def task_log(text: str) -> None:
    print(f"ctrbench slurm task: {text}", file=sys.stderr, flush=True)


def task_error(text: str) -> None:
    """The task's last word on why its run did not finish; the submitting side puts it into
    the failed record when the task could not write one (``slurm_runs.task_reason``)."""
    task_log(f"error: {' '.join(text.split())}")


def _setup(manifest: dict[str, Any]) -> None:
    from ctrbench import progress
    from ctrbench.engine.threads import apply_threads

    install_termination_handler()
    progress.set_mode("lines")
    apply_threads(max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))))
    for module in manifest.get("plugins", []):
        __import__(module)


def _note_start(manifest_file: Path, index: int) -> None:
    from ctrbench.runs.slurm_runs import task_info_path

    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{index}"
    info = {"host": socket.gethostname(), "pid": os.getpid(), "job": job}
    atomic_write_text(task_info_path(manifest_file.parent, index), json.dumps(info) + "\n")


def run_task(manifest: dict[str, Any], index: int) -> int:
    from ctrbench.cards import model_card_from_dict
    from ctrbench.data.store import open_store
    from ctrbench.errors import CtrbenchError
    from ctrbench.runs import runner
    from ctrbench.runs.runner import NOT_DONE, record_failed
    from ctrbench.runs.slurm_runs import now_iso

    started = now_iso()
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{index}"
    try:
        task = manifest["tasks"][index]
        store, record_file = manifest["store"], Path(task["record"])
        seed, run_id = int(task["seed"]), str(task["run_id"])
        dataset, config = str(manifest["dataset"]), manifest["dataset_config"]
        device, force = str(manifest["device"]), bool(manifest["force"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        task_error(f"the manifest has no usable task {index} ({type(exc).__name__}: {exc}); "
                   "was it edited after submission? submit again")
        return 2
    try:
        data = open_store(store)
    except (CtrbenchError, OSError) as exc:
        task_error(f"cannot open the prepared store on {socket.gethostname()}: {exc} "
                   "(every node must mount $CTRBENCH_HOME; the store must not be removed "
                   "while tasks are queued)")
        return 1
    handle = runner.DatasetHandle(name=dataset, data=data, config=config)
    try:
        card = model_card_from_dict(task["card"])
    except (CtrbenchError, KeyError, TypeError, ValueError) as exc:
        task_error(f"the manifest's model card of task {index} cannot be rebuilt: {exc}")
        return 2
    spec = runner.RunSpec(dataset=handle.name, model=card.name, seed=seed, card=card,
                          run_id=runner.run_id(handle, card, seed), record_file=record_file)
    if spec.run_id != run_id:
        result = record_failed(dataclasses.replace(spec, run_id=run_id), handle,
                               f"Slurm task {job}: the prepared store or the code changed since "
                               "submission (run id differs); submit again")
        task_error(result.detail)
        return 1
    task_log(f"{spec.model} seed {spec.seed} on {socket.gethostname()} (task {job}, "
         f"store {data.path})")
    try:
        result = runner.execute_one(spec, handle, device=device, force=force,
                                    show_progress=True)
    except (SystemExit, KeyboardInterrupt) as exc:  # SIGTERM: scancel, time limit, preemption
        code = exc.code if isinstance(exc, SystemExit) else 130
        result = record_failed(spec, handle, f"Slurm task {job} was terminated (signal, exit "
                                             f"{code}: scancel, time limit or preemption)",
                               since=started if force else "")
        task_log(f"terminated; recorded as {result.status}")
        if result.status != "finished":
            task_error(result.detail)
        return 143
    task_log(f"{spec.model} seed {spec.seed}: {result.status} {result.detail}")
    if result.status in NOT_DONE:
        task_error(f"{result.status}: {result.detail}")
        return 1
    return 0


def task_main(module: str, tasks: dict[str, Any], argv: list[str] | None = None) -> int:
    """``KIND MANIFEST INDEX`` -> ``tasks[KIND](manifest, index)`` after the common set-up."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in tasks or not args[2].isdigit():
        task_log(f"usage: python -m {module} {'|'.join(tasks)} MANIFEST INDEX")
        return 2
    kind, manifest_file, index = args[0], Path(args[1]), int(args[2])
    try:
        manifest = json.loads(manifest_file.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:  # (json.JSONDecodeError is a ValueError)
        task_error(f"cannot read the manifest {manifest_file}: {exc} (edited or truncated "
                   "after submission?)")
        return 2
    if manifest.get("kind") != kind:
        task_log(f"{manifest_file} is a {manifest.get('kind')!r} manifest, not {kind!r}")
        return 2
    _setup(manifest)
    _note_start(manifest_file, index)
    return tasks[kind](manifest, index)


def main(argv: list[str] | None = None) -> int:
    return task_main("ctrbench.runs.slurm_task", {"run": run_task}, argv)


if __name__ == "__main__":
    sys.exit(main())
