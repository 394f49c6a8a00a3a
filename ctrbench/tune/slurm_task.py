"""What one Slurm array task of ``ctrbench tune --executor slurm`` runs:
``python -m ctrbench.tune.slurm_task tune MANIFEST INDEX``: worker INDEX runs trials on the shared
study until it holds the requested number (:func:`ctrbench.tune.study.run_study`).

Exit status as :mod:`ctrbench.runs.slurm_task`.
"""

from __future__ import annotations

import sys
from typing import Any

from ctrbench.runs.slurm_task import task_log, task_main


def tune_task(manifest: dict[str, Any], index: int) -> int:
    from ctrbench.tune.slurm_workers import run_worker

    return run_worker(manifest, index, log=task_log)


def main(argv: list[str] | None = None) -> int:
    return task_main("ctrbench.tune.slurm_task", {"tune": tune_task}, argv)


if __name__ == "__main__":
    sys.exit(main())
