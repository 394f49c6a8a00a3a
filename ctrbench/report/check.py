"""The CI regression gate behind ``ctrbench check``: current runs against a committed reference.

The reference is a leaderboard CSV (``ctrbench report``'s ``leaderboard.csv`` columns, which
include each model's per-seed AUCs, its resolved model config and its dataset identity). Only
current runs whose model config (params and train settings, epochs included) and dataset
identity equal the reference row's are compared; when no run matches, the model is
``incomparable`` and the note names the keys that differ. A model is ``worse`` when its mean
AUC drops by more than ``tolerance`` AND a one-sided test over seeds finds the drop significant
at ``alpha``: the paired t-test when both sides ran the same seeds, else Welch's t-test. With
fewer than two seeds on a side no test is possible and the tolerance alone decides. ``better`` is
the mirror image (one-sided in the other direction). A model with fewer finished seeds than its
reference row, or with a finished record whose test AUC is not finite, is ``incomparable`` (its
numbers are still shown). A baseline with a non-finite AUC or a duplicated row is malformed.
For every model the gate states the smallest drop it detects with 80% power at the
reference's seed std and n (:mod:`ctrbench.analysis.power`).

Exit codes: 0 no regression, 1 a regression, 3 incomparable (and no regression), 2 the gate
could not run (a missing or malformed baseline, an unwritable baseline for ``--update``, or a
crash: never 1).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.analysis import stats
from ctrbench.analysis.power import detectable_drop
from ctrbench.errors import CtrbenchError, WriteError
from ctrbench.record import atomic_write_text, exclusive
from ctrbench.report.data import MAX_SEED, CardBook, ResultSet, load_results
from ctrbench.report.groups import ModelRuns, describe_difference
from ctrbench.report.tables import LEADERBOARD_COLUMNS, csv_text, leaderboard

EXIT_OK, EXIT_REGRESSION, EXIT_ERROR, EXIT_INCOMPARABLE = 0, 1, 2, 3
POWER = 0.8
REQUIRED_COLUMNS = ("dataset", "model", "status", "n_seeds", "auc_mean", "auc_std", "seed_aucs",
                    "identity", "protocol", "version", "config", "model_config",
                    "dataset_identity")
CHECK_COLUMNS = ("dataset", "model", "verdict", "ref_auc", "ref_std", "ref_seeds", "cur_auc",
                 "cur_std", "cur_seeds", "delta", "tolerance", "test", "p_worse", "p_better",
                 "detectable", "note")


class BaselineError(CtrbenchError):
    """A reference CSV that is missing or malformed (a usage error: exit status 2)."""


def parse_seed_aucs(text: str) -> dict[int, float]:
    """``"0:0.8123;1:0.8130"`` -> {0: 0.8123, 1: 0.8130}; each AUC finite, in [0, 1], each
    seed once."""
    out: dict[int, float] = {}
    for item in filter(None, (t.strip() for t in str(text).split(";"))):
        seed, _, value = item.partition(":")
        try:
            key, auc = int(seed), float(value)
        except ValueError:
            raise BaselineError(f"bad seed_aucs entry {item!r} (expected seed:auc)") from None
        if not 0 <= key <= MAX_SEED:
            raise BaselineError(f"bad seed_aucs entry {item!r}: the seed is not an integer in "
                                "[0, 2**63 - 1]")
        if not 0.0 <= auc <= 1.0:  # also nan and inf
            raise BaselineError(f"bad seed_aucs entry {item!r}: the AUC is not a finite "
                                "number in [0, 1]")
        if key in out:
            raise BaselineError(f"bad seed_aucs entry {item!r}: seed {key} appears twice")
        out[key] = auc
    return out


def read_reference(path: Path) -> pd.DataFrame:
    """The reference CSV with numeric columns parsed; BaselineError when unusable."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline {path} does not exist",
                            hint="create it with `ctrbench check --baseline PATH --update`")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise BaselineError(f"baseline {path} lacks column(s) {', '.join(missing)}",
                            hint="it must be a leaderboard.csv written by this ctrbench's "
                            "report or `check --update` (regenerate it)")
    twice = frame[frame.duplicated(["dataset", "model"], keep=False)]
    if not twice.empty:
        ds, model = twice.iloc[0][["dataset", "model"]]
        rows = twice.index[(twice["dataset"] == ds) & (twice["model"] == model)] + 2
        raise BaselineError(f"baseline {path}: {ds}/{model} appears more than once (lines "
                            f"{', '.join(map(str, rows))}); one row per dataset and model",
                            hint="regenerate it with `ctrbench check --baseline PATH --update`")
    raw_auc = frame["auc_mean"].copy()
    for col in ("auc_mean", "auc_std", "n_seeds"):
        frame[col] = pd.to_numeric(frame[col].replace("", np.nan), errors="coerce")
    seed_maps = []
    for i, r in frame.iterrows():
        where = f"baseline {path} line {i + 2} ({r['dataset']}/{r['model']})"
        try:
            seed_maps.append(parse_seed_aucs(r["seed_aucs"]))
        except BaselineError as exc:
            raise BaselineError(f"{where}: {exc}") from None
        if r["status"] == "ok" and not 0.0 <= r["auc_mean"] <= 1.0:
            raise BaselineError(f"{where}: auc_mean {raw_auc[i]!r} is not a finite number in "
                                "[0, 1]")
    frame["seed_map"] = seed_maps
    for col in ("model_config", "dataset_identity"):
        frame[col] = [_json_object(path, i, r, col) for i, r in frame.iterrows()]
    return frame


def _json_object(path: Path, i: int, row: pd.Series, column: str) -> dict:
    """The row's ``column`` (a JSON object, as written by ``--update``), or BaselineError."""
    text = row[column]
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BaselineError(f"baseline {path} line {i + 2} ({row['dataset']}/{row['model']}): "
                            f"column {column} is not a JSON object: {text[:60]!r}")
    return value


@dataclass
class CheckRow:
    """The verdict for one (dataset, model)."""

    dataset: str
    model: str
    verdict: str  # better | worse | unchanged | incomparable | new
    ref_auc: float = float("nan")
    ref_std: float = float("nan")
    ref_seeds: int = 0
    cur_auc: float = float("nan")
    cur_std: float = float("nan")
    cur_seeds: int = 0
    delta: float = float("nan")
    tolerance: float = float("nan")
    test: str = ""
    p_worse: float = float("nan")  # one-sided p of "current < reference"
    p_better: float = float("nan")  # one-sided p of "current > reference"
    detectable: float = float("nan")  # smallest drop flagged with 80% power
    note: str = ""
    power_line: str = field(default="", repr=False)


@dataclass
class CheckOutcome:
    """Every verdict, and the records that could not be read (listed, never judged)."""

    rows: list[CheckRow]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, error)


def _mismatch(ref: pd.Series, runs: pd.DataFrame, rs: ResultSet) -> str:
    """Why none of ``runs`` (finished, this model) matches the reference row: differing keys."""
    notes = []
    for column, flats, want, label in (
            ("identity", rs.identities, ref["dataset_identity"], "dataset identity differs"),
            ("config", rs.configs, ref["model_config"], "model config differs")):
        if (runs[column] == ref[column]).any():
            continue
        seen = runs.groupby(column, sort=True)
        current = [flats.get(str(g["path"].iloc[0]), {}) for _, g in seen]
        seeds = [sorted(g["seed"].astype(int)) for _, g in seen]
        diff = describe_difference([want, *current], [["reference"], *seeds])
        notes.append(f"{label}: {diff}")
        break  # the identity first: a config diff across datasets says little
    return "; ".join(notes) or "no run matches the reference's identity and config together"


def select_runs(ref: pd.Series, rs: ResultSet | None) -> tuple[ModelRuns | None, str]:
    """The current finished runs of the reference row's model that match its config and
    identity, as :class:`ModelRuns`; (None, why) when there are none."""
    if rs is None:
        return None, "missing runs: no run records"
    mine = rs.runs[(rs.runs["dataset"] == ref["dataset"]) & (rs.runs["model"] == ref["model"])]
    fin = mine[mine["status"] == "finished"].sort_values("seed")
    if fin.empty:
        return None, "missing runs: no finished run for this model"
    match = fin[(fin["config"] == ref["config"]) & (fin["identity"] == ref["identity"])]
    if match.empty:
        return None, _mismatch(ref, fin, rs)
    other = len(fin) - len(match)
    note = f"{other} run(s) with another config or identity ignored" if other else ""
    runs = ModelRuns(ref["model"], "ok", match, int((mine["status"] != "finished").sum()),
                     ref["identity"], ref["protocol"], ref["version"], note, ref["config"])
    return runs, note


def judge(ref: pd.Series, cur: ModelRuns | None, why: str = "", *, tolerance: float,
          alpha: float) -> CheckRow:
    """Apply the tolerance-plus-one-sided-test rule to one reference row."""
    seeds_ref: dict[int, float] = ref["seed_map"]
    row = CheckRow(ref["dataset"], ref["model"], "incomparable", ref_seeds=len(seeds_ref),
                   tolerance=tolerance)
    ref_vals = np.array(list(seeds_ref.values()), dtype=float)
    if ref["status"] != "ok" or not seeds_ref:
        row.note = f"reference row is not usable (status {ref['status']!r})"
        return row
    s_ref = stats.summarize(ref_vals)
    row.ref_auc, row.ref_std = s_ref.mean, s_ref.std
    if cur is None:
        row.note = why
        _power(row, len(seeds_ref), paired=True, alpha=alpha)
        return row
    # compared at the precision the reference stores (8 significant digits), so that an
    # identical re-run is exactly unchanged; a non-finite AUC is never compared
    values = cur.seed_values("test_auc")
    broken = sorted(s for s, v in values.items() if not np.isfinite(v))
    seeds_cur = {s: float(f"{v:.8g}") for s, v in values.items() if np.isfinite(v)}
    missing = sorted(set(seeds_ref) - set(seeds_cur))
    incomparable = []
    if broken:
        incomparable.append(f"test AUC is not a finite number in the finished record(s) of "
                            f"seed {_seeds(broken)}")
    if len(seeds_cur) < len(seeds_ref):
        incomparable.append(f"missing runs: {len(seeds_cur)} finished seed(s) against the "
                            f"baseline's {len(seeds_ref)} (no finished run for seed "
                            f"{_seeds(missing)})")
    if not seeds_cur:
        row.note = "; ".join(filter(None, [why, *incomparable]))
        _power(row, len(seeds_ref), paired=True, alpha=alpha)
        return row
    cur_vals = np.array(list(seeds_cur.values()), dtype=float)
    s_cur = stats.summarize(cur_vals)
    row.cur_auc, row.cur_std, row.cur_seeds = s_cur.mean, s_cur.std, len(seeds_cur)
    row.delta = s_cur.mean - s_ref.mean
    paired = set(seeds_cur) == set(seeds_ref)
    if paired:
        common = sorted(seeds_ref)
        a, b = [seeds_cur[s] for s in common], [seeds_ref[s] for s in common]
        row.test = "paired t, one-sided"
        row.p_worse = stats.paired_ttest(a, b, "less")
        row.p_better = stats.paired_ttest(a, b, "greater")
    else:
        row.test = "Welch, one-sided"
        row.p_worse = stats.welch_ttest(cur_vals, ref_vals, "less")
        row.p_better = stats.welch_ttest(cur_vals, ref_vals, "greater")
    notes = [why] if why else []
    if not np.isfinite(row.p_worse):
        notes.append("no test possible (fewer than 2 seeds): tolerance only")
    if cur.n_failed:
        notes.append(f"{cur.n_failed} run(s) not finished")
    tested = np.isfinite(row.p_worse)
    if row.delta < -tolerance and (not tested or row.p_worse < alpha):
        row.verdict = "worse"
    elif row.delta > tolerance and (not tested or row.p_better < alpha):
        row.verdict = "better"
    else:
        row.verdict = "unchanged"
    if incomparable:  # the numbers stay shown; the gate never passes on fewer or broken seeds
        row.verdict = "incomparable"
        notes = incomparable + notes
    row.note = "; ".join(notes)
    _power(row, len(seeds_cur), paired=paired, alpha=alpha)
    return row


def _seeds(seeds: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, seeds[:limit]))
    return shown + (f" and {len(seeds) - limit} more" if len(seeds) > limit else "")


def _power(row: CheckRow, n_cur: int, *, paired: bool, alpha: float) -> None:
    """Fill ``detectable`` and the printed power line (at the reference's seed std)."""
    if not np.isfinite(row.ref_std):
        row.power_line = (f"{row.dataset}/{row.model}: detectable drop unknown (the reference "
                          f"has {row.ref_seeds} seed(s): no seed std)")
        return
    row.detectable = detectable_drop(row.ref_std, row.ref_seeds, n_cur, paired=paired,
                                     alpha=alpha, power=POWER, tolerance=row.tolerance)
    test = "paired t" if paired else "Welch t"
    row.power_line = (f"{row.dataset}/{row.model}: detects a drop of {row.detectable:.4f} AUC "
                      f"with {POWER:.0%} power (seed std {row.ref_std:.4f}, n {row.ref_seeds} "
                      f"vs {n_cur}, one-sided {test}, alpha {alpha:g}, tolerance "
                      f"{row.tolerance:g})")


def check_results(reference: pd.DataFrame, results_root: Path, *, tolerance: float = 0.001,
                  alpha: float = 0.05, datasets: Sequence[str] | None = None) -> CheckOutcome:
    """Judge every reference row (optionally only ``datasets``) against current records."""
    ref = reference if not datasets else reference[reference["dataset"].isin(datasets)]
    if ref.empty:
        present = sorted(reference["dataset"].unique()) if len(reference) else []
        raise BaselineError("the baseline has no rows" + (f" for {', '.join(datasets)}"
                                                          if datasets else ""),
                            hint=f"its datasets: {', '.join(present) or '(none)'}")
    wanted = sorted(ref["dataset"].unique())
    rs = None
    if (Path(results_root) / "runs").is_dir():
        rs = load_results(Path(results_root))
    rows = []
    for _, r in ref.iterrows():
        cur, why = select_runs(r, rs)
        rows.append(judge(r, cur, why, tolerance=tolerance, alpha=alpha))
    known = set(zip(ref["dataset"], ref["model"]))
    unreadable: list[tuple[str, str]] = []
    if rs is not None:
        fin = rs.finished[rs.finished["dataset"].isin(wanted)]
        for (ds, model), grp in fin.groupby(["dataset", "model"], sort=True):
            if (ds, model) not in known:
                s = stats.summarize(grp["test_auc"].to_numpy())
                rows.append(CheckRow(ds, model, "new", cur_auc=s.mean, cur_std=s.std,
                                     cur_seeds=s.n, note="not in the baseline"))
        bad = rs.runs[rs.runs["status"] == "unreadable"]
        unreadable = list(zip(bad["path"].astype(str), bad["error"].astype(str)))
    return CheckOutcome(rows, unreadable)


def exit_code(rows: Sequence[CheckRow]) -> int:
    """1 when any model is worse; else 3 when any is incomparable; else 0."""
    verdicts = {r.verdict for r in rows}
    if "worse" in verdicts:
        return EXIT_REGRESSION
    if "incomparable" in verdicts:
        return EXIT_INCOMPARABLE
    return EXIT_OK


def rows_frame(rows: Sequence[CheckRow]) -> pd.DataFrame:
    return pd.DataFrame([{c: getattr(r, c) for c in CHECK_COLUMNS} for r in rows],
                        columns=list(CHECK_COLUMNS))


def update_reference(path: Path, results_root: Path, *,
                     datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Rewrite the reference from the current records (atomically); returns the new frame.

    Only usable rows (status ``ok``) are written: a model whose records mix dataset identities
    or configs, or that has no finished run, cannot serve as a reference.
    """
    rs = load_results(Path(results_root), datasets)
    if rs.finished.empty:
        raise CtrbenchError(f"no finished runs under {results_root}: refusing to write an "
                            "empty reference")
    frame, _ = leaderboard(rs, CardBook(), n_boot=0)
    usable = frame[frame["status"] == "ok"].loc[:, list(LEADERBOARD_COLUMNS)]
    if usable.empty:
        raise CtrbenchError("no model has usable runs (finished, one dataset identity, one "
                            "config): refusing to write an empty reference")
    text = csv_text(usable)
    try:
        with exclusive(Path(path)):  # two `--update --dataset` at once: neither loses rows
            if datasets:
                text = _with_other_datasets(Path(path), text, set(datasets))
            atomic_write_text(Path(path), text)
    except WriteError as exc:  # read-only or full disk: nothing half-written is left
        raise BaselineError(f"cannot write baseline {path}: {exc.args[0]}", hint=exc.hint) from None
    except OSError as exc:
        raise BaselineError(f"cannot write baseline {path}: {exc.strerror or exc}") from None
    return usable


def _with_other_datasets(path: Path, text: str, datasets: set[str]) -> str:
    """``text`` (the new rows of ``datasets``) followed by the existing baseline's rows of the
    other datasets, their values unchanged: ``--update --dataset`` never drops another
    dataset's rows."""
    if not path.exists():
        return text
    try:
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BaselineError(f"cannot keep the other datasets' rows of baseline {path}: {exc}",
                            hint="update it whole (without --dataset)") from None
    if "dataset" not in old.columns:
        raise BaselineError(f"cannot keep the other datasets' rows of baseline {path}: it has "
                            "no dataset column", hint="update it whole (without --dataset)")
    kept = old[~old["dataset"].isin(datasets)]
    if kept.empty:
        return text
    new = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    both = pd.concat([new, kept], ignore_index=True).fillna("")
    return both.to_csv(index=False, lineterminator="\n")


def kept_rows(path: Path, datasets: Sequence[str] | None) -> int:
    """Rows of other datasets in the baseline at ``path`` (after ``--update --dataset``)."""
    if not datasets or not Path(path).is_file():
        return 0
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return int((~frame["dataset"].isin(list(datasets))).sum())


def power_lines(frame: pd.DataFrame, *, tolerance: float, alpha: float) -> list[str]:
    """The power line of each row of a reference frame, for a rerun on the same seeds."""
    out = []
    for _, r in frame.iterrows():
        seeds = parse_seed_aucs(r["seed_aucs"])
        row = CheckRow(r["dataset"], r["model"], "", ref_seeds=len(seeds), tolerance=tolerance,
                       ref_std=stats.summarize(list(seeds.values())).std)
        _power(row, len(seeds), paired=True, alpha=alpha)
        out.append(row.power_line)
    return out


