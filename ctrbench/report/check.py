"""The CI regression gate behind ``ctrbench check``: current runs against a committed reference.

The reference is a leaderboard CSV (``ctrbench report``'s ``leaderboard.csv`` columns, which
include each model's per-seed AUCs and its dataset identity). A model is ``worse`` when its mean
AUC drops by more than ``max(tolerance, k * pooled seed std)`` AND a test over seeds finds the
drop significant: the paired t-test when both sides ran the same seeds, else Welch's t-test
(asv's threshold-plus-statistics rule). With fewer than two seeds on a side no test is possible
and the threshold alone decides. ``better`` is the mirror image. A model whose runs are missing,
or whose dataset identity (data hashes, protocol, version) differs, is ``incomparable``.

Exit codes: 0 no regression, 1 a regression, 3 incomparable (and no regression); click's usage
errors (a missing or malformed baseline file) exit 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.analysis import stats
from ctrbench.errors import CtrbenchError
from ctrbench.record import atomic_write_text
from ctrbench.report.data import CardBook, load_results
from ctrbench.report.tables import (
    LEADERBOARD_COLUMNS,
    ModelRuns,
    csv_text,
    group_models,
    leaderboard,
)

EXIT_OK, EXIT_REGRESSION, EXIT_INCOMPARABLE = 0, 1, 3
REQUIRED_COLUMNS = ("dataset", "model", "status", "n_seeds", "auc_mean", "auc_std", "seed_aucs",
                    "identity", "protocol", "version")
CHECK_COLUMNS = ("dataset", "model", "verdict", "ref_auc", "ref_std", "ref_seeds", "cur_auc",
                 "cur_std", "cur_seeds", "delta", "threshold", "test", "p", "note")


class BaselineError(CtrbenchError):
    """A reference CSV that is missing or malformed (a usage error: exit status 2)."""


def parse_seed_aucs(text: str) -> dict[int, float]:
    """``"0:0.8123;1:0.8130"`` -> {0: 0.8123, 1: 0.8130}."""
    out: dict[int, float] = {}
    for item in filter(None, (t.strip() for t in str(text).split(";"))):
        seed, _, value = item.partition(":")
        try:
            out[int(seed)] = float(value)
        except ValueError:
            raise BaselineError(f"bad seed_aucs entry {item!r} (expected seed:auc)") from None
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
                            hint="it must be a leaderboard.csv written by ctrbench report/check")
    for col in ("auc_mean", "auc_std", "n_seeds"):
        frame[col] = pd.to_numeric(frame[col].replace("", np.nan), errors="coerce")
    frame["seed_map"] = [parse_seed_aucs(t) for t in frame["seed_aucs"]]
    return frame


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
    threshold: float = float("nan")
    test: str = ""
    p: float = float("nan")
    note: str = ""


def _identity_change(ref: pd.Series, cur: ModelRuns) -> str:
    if (ref["protocol"], ref["version"]) != (cur.protocol, cur.version):
        return (f"protocol/version differ: {ref['protocol']} v{ref['version']} -> "
                f"{cur.protocol} v{cur.version}")
    return f"dataset identity differs: {ref['identity'][:8]} -> {cur.identity[:8]}"


def judge(ref: pd.Series, cur: ModelRuns | None, *, tolerance: float, k: float,
          alpha: float) -> CheckRow:
    """Apply the threshold-plus-statistics rule to one reference row."""
    seeds_ref: dict[int, float] = ref["seed_map"]
    row = CheckRow(ref["dataset"], ref["model"], "incomparable", ref_seeds=len(seeds_ref))
    ref_vals = np.array(list(seeds_ref.values()), dtype=float)
    if ref["status"] != "ok" or not seeds_ref:
        row.note = f"reference row is not usable (status {ref['status']!r})"
        return row
    s_ref = stats.summarize(ref_vals)
    row.ref_auc, row.ref_std = s_ref.mean, s_ref.std
    if cur is None or cur.status == "no_finished_runs":
        row.note = "missing runs: no finished run for this model"
        return row
    if cur.status != "ok":
        row.note = cur.note
        return row
    if cur.identity != ref["identity"]:
        row.note = _identity_change(ref, cur)
        return row
    # compared at the precision the reference stores (8 significant digits), so that an
    # identical re-run is exactly unchanged
    seeds_cur = {s: float(f"{v:.8g}") for s, v in cur.seed_values("test_auc").items()}
    cur_vals = np.array(list(seeds_cur.values()), dtype=float)
    s_cur = stats.summarize(cur_vals)
    row.cur_auc, row.cur_std, row.cur_seeds = s_cur.mean, s_cur.std, len(seeds_cur)
    row.delta = s_cur.mean - s_ref.mean
    spread = stats.pooled_std(ref_vals, cur_vals)
    row.threshold = max(tolerance, k * spread) if np.isfinite(spread) else tolerance
    if set(seeds_cur) == set(seeds_ref):
        common = sorted(seeds_ref)
        row.test = "paired t"
        row.p = stats.paired_ttest([seeds_cur[s] for s in common], [seeds_ref[s] for s in common])
    else:
        row.test = "Welch"
        row.p = stats.welch_ttest(cur_vals, ref_vals)
    notes = []
    if not np.isfinite(row.p):
        notes.append("no test possible (fewer than 2 seeds): threshold only")
    if cur.n_failed:
        notes.append(f"{cur.n_failed} run(s) not finished")
    significant = not np.isfinite(row.p) or row.p < alpha
    if abs(row.delta) > row.threshold and significant:
        row.verdict = "worse" if row.delta < 0 else "better"
    else:
        row.verdict = "unchanged"
    row.note = "; ".join(notes)
    return row


def check_results(reference: pd.DataFrame, results_root: Path, *, tolerance: float = 0.001,
                  k: float = 2.0, alpha: float = 0.05,
                  datasets: Sequence[str] | None = None) -> list[CheckRow]:
    """Judge every reference row (optionally only ``datasets``) against current records."""
    ref = reference if not datasets else reference[reference["dataset"].isin(datasets)]
    if ref.empty:
        raise BaselineError("the baseline has no rows" + (f" for {', '.join(datasets)}"
                                                          if datasets else ""))
    wanted = sorted(ref["dataset"].unique())
    groups: dict[str, dict[str, ModelRuns]] = {}
    if (Path(results_root) / "runs").is_dir():
        rs = load_results(Path(results_root))
        groups = {ds: group_models(rs, ds) for ds in wanted if ds in set(rs.datasets())}
    rows = [judge(r, groups.get(r["dataset"], {}).get(r["model"]), tolerance=tolerance, k=k,
                  alpha=alpha) for _, r in ref.iterrows()]
    known = set(zip(ref["dataset"], ref["model"]))
    for ds in wanted:
        for model, g in groups.get(ds, {}).items():
            if (ds, model) not in known and g.status == "ok":
                s = g.summary("test_auc")
                rows.append(CheckRow(ds, model, "new", cur_auc=s.mean, cur_std=s.std,
                                     cur_seeds=s.n, note="not in the baseline"))
    return rows


def exit_code(rows: Sequence[CheckRow]) -> int:
    """1 when any model is worse; else 3 when any is incomparable; else 0."""
    verdicts = {r.verdict for r in rows}
    if "worse" in verdicts:
        return EXIT_REGRESSION
    if "incomparable" in verdicts:
        return EXIT_INCOMPARABLE
    return EXIT_OK


def rows_frame(rows: Sequence[CheckRow]) -> pd.DataFrame:
    return pd.DataFrame([r.__dict__ for r in rows], columns=list(CHECK_COLUMNS))


def update_reference(path: Path, results_root: Path, *,
                     datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Rewrite the reference from the current records (atomically); returns the new frame.

    Only usable rows (status ``ok``) are written: a model whose records mix dataset identities
    or that has no finished run cannot serve as a reference.
    """
    rs = load_results(Path(results_root), datasets)
    if rs.finished.empty:
        raise CtrbenchError(f"no finished runs under {results_root}: refusing to write an "
                            "empty reference")
    frame, _ = leaderboard(rs, CardBook(), n_boot=0)
    usable = frame[frame["status"] == "ok"].loc[:, list(LEADERBOARD_COLUMNS)]
    if usable.empty:
        raise CtrbenchError("no model has usable runs (finished, one dataset identity): "
                            "refusing to write an empty reference")
    atomic_write_text(Path(path), csv_text(usable))
    return usable
