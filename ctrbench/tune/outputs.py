"""What a study leaves behind: the trials table, the tuned model card, and two plots.

- ``<results>/tuning/<study>/trials.csv`` and ``trials.md``: number, state, value (validation
  AUC), one column per searched parameter, duration, the epoch a pruned trial stopped at, the
  trial's training seed, the worker that ran it, and the error of a failed trial;
- ``models/tuned/<model>@<dataset>.toml`` (in the working directory, which card lookup searches):
  ``extends`` the tuned card, sets the best trial's values, and records ``[tuned_from]``. Only
  the study that wrote it (same name, same storage) rewrites it; any other card there is kept
  unless the caller asks to replace it (:func:`card_holder`, ``tune --replace-card``);
- ``history.png`` (optimisation history) and ``importances.png`` (parameter importances; needs
  at least two complete trials).
All files are written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import uuid
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from tabulate import tabulate

from ctrbench import __version__
from ctrbench.cards import ModelCard
from ctrbench.errors import CtrbenchError
from ctrbench.paths import safe_name
from ctrbench.record import atomic_write_text, exclusive, remove_stale_temporaries
from ctrbench.tune.space import decode, parse_search_space
from ctrbench.tune.storage import safe_file_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STUDY_FILES = ("trials.csv", "trials.md", "history.png", "importances.png")
TRIAL_COLUMNS = ("number", "state", "value", "duration_s", "pruned_at_epoch", "best_epoch",
                 "train_seed", "worker", "error")


def study_dir(results_root: Path, study_name: str) -> Path:
    """``<results>/tuning/<study>``. A name that is not a plain file name as it stands (``/``,
    spaces, ``..``) gets a suffix from its hash, so that it stays inside ``tuning/`` and two
    such names (``a/b``, ``a b``) never share one folder."""
    safe = safe_file_name(study_name)
    if safe != study_name or not safe.strip("."):
        digest = hashlib.sha256(study_name.encode()).hexdigest()[:8]
        safe = f"{safe}-{digest}"
    return Path(results_root) / "tuning" / safe


def tuned_card_name(card: ModelCard, dataset: str) -> str:
    if card.tuned_from or card.name.endswith(f"@{dataset}"):
        raise CtrbenchError(f"model {card.name!r} is already a tuned card",
                            hint="tune the card it extends instead (the search space is the same)")
    return f"{card.name}@{safe_name('dataset', dataset)}"  # a file name: no '/' or '..'


# --------------------------------------------------------------------------- trials table
def _failure_text(trial: FrozenTrial) -> str:
    if trial.state != TrialState.FAIL:
        return ""
    error = trial.user_attrs.get("error")
    if error:
        return str(error).splitlines()[0]
    if trial.value is not None and not math.isfinite(trial.value):
        return f"objective returned {trial.value}"
    return "stopped without a result (worker killed, or its heartbeat was lost)"


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, in trial-number order."""
    trials = study.get_trials(deepcopy=False)
    param_keys = sorted({k for t in trials for k in t.params})
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        pruned_at = t.user_attrs.get("pruned_at_epoch")
        if t.state == TrialState.PRUNED and pruned_at is None:
            pruned_at = t.last_step
        row: dict[str, Any] = {
            "number": t.number, "state": t.state.name, "value": t.value,
            "duration_s": None if duration is None else round(duration, 2),
            "pruned_at_epoch": pruned_at, "best_epoch": t.user_attrs.get("best_epoch"),
            "train_seed": t.user_attrs.get("train_seed"), "worker": t.user_attrs.get("worker"),
            "error": _failure_text(t),
        }
        row.update({k: t.params.get(k) for k in param_keys})
        rows.append(row)
    columns = [*TRIAL_COLUMNS[:3], *param_keys, *TRIAL_COLUMNS[3:]]
    return pd.DataFrame(rows, columns=columns).astype(
        {"pruned_at_epoch": "Int64", "best_epoch": "Int64", "train_seed": "Int64"})


def write_trials_table(study: optuna.Study, out_dir: Path) -> tuple[Path, Path]:
    """``trials.csv`` and ``trials.md`` under ``out_dir``, one pair from one reading of the
    study, written by one worker at a time (the last one holds the study's latest state)."""
    csv_path, md_path = Path(out_dir) / "trials.csv", Path(out_dir) / "trials.md"
    with study_files_lock(out_dir):
        _write_trials_pair(study, csv_path, md_path)
    return csv_path, md_path


@contextlib.contextmanager
def study_files_lock(out_dir: Path) -> Iterator[None]:
    """Hold the lock of a study's files (table and plots): the workers of one study finishing
    at once write them one after the other; what a killed writer left is removed first."""
    with exclusive(Path(out_dir) / "trials.csv"):
        remove_stale_temporaries(out_dir, names=STUDY_FILES)
        yield


def _write_trials_pair(study: optuna.Study, csv_path: Path, md_path: Path) -> None:
    """Both tables from one reading of the study's trials."""
    frame = trials_frame(study)
    atomic_write_text(csv_path, frame.to_csv(index=False))
    shown = frame.astype(object).where(frame.notna(), "")
    title = f"# Trials of study `{study.study_name}`\n\nvalue = best validation AUC.\n\n"
    table = tabulate(shown, headers="keys", tablefmt="github", showindex=False, floatfmt=".5g")
    atomic_write_text(md_path, title + table + "\n")


# --------------------------------------------------------------------------- the tuned card
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """A scalar or list as TOML (floats keep every digit: ``repr`` round-trips)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _toml_table(name: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{_toml_key(k)} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def tuned_card_text(card: ModelCard, dataset: str, best: FrozenTrial,
                    tuned_from: Mapping[str, Any]) -> str:
    """The TOML of ``<model>@<dataset>``: extends ``card`` and sets the best trial's values."""
    name = tuned_card_name(card, dataset)
    sections: dict[str, dict[str, Any]] = {"params": {}, "train": {}}
    values = decode(parse_search_space(card), best.params)
    for key, value in sorted(values.items()):
        section, _, field = key.partition(".")
        sections[section][field] = value
    header = (
        f"# Written by `ctrbench tune`: {card.name} tuned on {dataset} (study "
        f"{tuned_from['study']!r}, trial {best.number}).\n"
        "# Re-running this study (same --study and storage) rewrites this file; another study\n"
        "# or storage may replace it only with `ctrbench tune --replace-card`.\n"
        "# Evaluate it on fresh seeds with\n"
        f"#   ctrbench run --models '{name}' --dataset {dataset} --seeds 5\n"
    )
    description = f"{card.name} tuned on {dataset} (valid AUC {best.value:.5f})"
    top = (f"name = {toml_value(name)}\nextends = {toml_value(card.name)}\n"
           f'groups = ["tuned"]\ndescription = {toml_value(description)}\n')
    tables = [_toml_table(s, v) for s, v in sections.items() if v]
    tables.append(_toml_table("tuned_from", tuned_from))
    return header + top + "\n" + "\n".join(tables)


def tuned_card_path(card: ModelCard, dataset: str, cards_root: Path | None = None) -> Path:
    """``<cards_root>/tuned/<model>@<dataset>.toml`` (default ``./models``)."""
    root = Path.cwd() / "models" if cards_root is None else Path(cards_root)
    return root / "tuned" / f"{tuned_card_name(card, dataset)}.toml"


def card_holder(path: Path, study: str, storage: str) -> str | None:
    """What the card at ``path`` holds when it is not study ``study``'s in ``storage`` (another
    study or storage, or a card `ctrbench tune` did not write); None when the file is absent or
    this study's own, i.e. when writing it loses nothing."""
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"a card that cannot be read ({exc})"
    origin = table.get("tuned_from")
    if not isinstance(origin, Mapping):
        return "a card not written by `ctrbench tune` (no [tuned_from] table)"
    if origin.get("study") == study and origin.get("storage") == storage:
        return None
    value = origin.get("value")
    score = f", valid AUC {value:.5f}" if isinstance(value, float) else ""
    return (f"the card of study {origin.get('study')!r} in {origin.get('storage')} (trial "
            f"{origin.get('trial')}{score}, tuned {origin.get('tuned_at', 'at an unknown time')})")


def write_tuned_card(card: ModelCard, dataset: str, best: FrozenTrial,
                     tuned_from: Mapping[str, Any], cards_root: Path | None = None) -> Path:
    """Write ``<cards_root>/tuned/<model>@<dataset>.toml`` (default ``./models``); the caller
    checks :func:`card_holder` first."""
    path = tuned_card_path(card, dataset, cards_root)
    atomic_write_text(path, tuned_card_text(card, dataset, best, tuned_from))
    return path


def tuned_from_table(study: optuna.Study, storage: str, best: FrozenTrial, dataset: str,
                     signature: Mapping[str, Any], settings: Any) -> dict[str, Any]:
    """The ``[tuned_from]`` record: where the values came from (no passwords)."""
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    wall_clock = 0.0
    for t in study.get_trials(deepcopy=False):
        if t.state.name in counts:
            counts[t.state.name] += 1
        if t.duration is not None:
            wall_clock += t.duration.total_seconds()
    table: dict[str, Any] = {
        "study": study.study_name, "storage": storage, "trial": best.number,
        "value": float(best.value), "metric": "valid_auc", "dataset": dataset,
        "data_hash": signature["data_hash"], "train_seed": best.user_attrs.get("train_seed", -1),
        "best_epoch": best.user_attrs.get("best_epoch", -1),
        "trials_complete": counts["COMPLETE"], "trials_pruned": counts["PRUNED"],
        "trials_failed": counts["FAIL"], "trials_target": settings.n_trials,
        "wall_clock_s": round(wall_clock, 1), "sampler": settings.sampler,
        "pruner": settings.pruner,
        "seed": settings.seed, "ctrbench_version": __version__,
        "tuned_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if settings.max_epochs:
        table["max_epochs"] = settings.max_epochs
    return table


# --------------------------------------------------------------------------- plots
def _save_axes(axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        figure.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(figure)


def write_plots(study: optuna.Study, out_dir: Path) -> dict[str, str]:
    """``history.png`` and ``importances.png``; name -> path written, or why it was skipped."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    with study_files_lock(out_dir):
        return _draw_plots(study, Path(out_dir))


def _draw_plots(study: optuna.Study, out_dir: Path) -> dict[str, str]:
    """:func:`write_plots` under the study files' lock."""
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    written: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            path = out_dir / "history.png"
            _save_axes(optuna_plots.plot_optimization_history(study), path)
            written["history"] = str(path)
        else:
            written["history"] = "skipped: no complete trial yet"
        varied = [k for k in {k for t in complete for k in t.params}
                  if len({repr(t.params.get(k)) for t in complete}) > 1]
        if len(complete) < 2:
            written["importances"] = (f"skipped: needs at least 2 complete trials "
                                      f"(the study has {len(complete)})")
        elif not varied:
            written["importances"] = "skipped: the complete trials share all parameter values"
        else:
            path = out_dir / "importances.png"
            _save_axes(optuna_plots.plot_param_importances(study), path)
            written["importances"] = str(path)
    return written
