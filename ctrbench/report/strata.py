"""Test AUC by stratum: where a model wins or loses (issue 10, item 6; MIAN Fig. 3).

The stored test scores of every finished run (``seed-<k>.npz``) are joined, row by row, to the
prepared store the run was trained on (found by its dataset identity under the cache's
``prepared/`` directory, or among ``--store`` directories). A test *sample* is a positive row and
the negative rows after it (the builder writes them adjacent; they share the user, the history
and the context), and a sample is never split: every stratum is a property of the sample, read
from its positive row. Families (:data:`FAMILIES`):

- ``category``: the positive candidate's category absent from the valid history ("new demand",
  Fig. 3a; an out-of-vocabulary category never matches) or present;
- ``gap``: more than :data:`INACTIVE_DAYS` days since the user's previous review (Fig. 3b), at
  most that, or no previous review (stored ``gap_days``);
- ``history``: the model-visible history length ``hist_len`` in fixed buckets
  0 | 1-4 | 5-9 | 10-19 | 20..T-1 | T (full; T = the store's ``max_len``);
- ``activity``: the user's positive training rows, in buckets at the quartiles of that count
  over the training users (0 = no training rows, e.g. every test user of a ``dien`` store);
- ``profile``: how much the user's profile favours the positive's category, as the lift
  ``P(category | profile value) / P(category)`` over the TRAINING positives (the first of
  :data:`PROFILE_FIELDS` the store has; buckets of :data:`LIFT_EDGES`): on synthetic data the
  planted occupation x category effect, which MIAN's IUIM is meant to pick up;
- ``season``: the same lift for the review month (``month``): the planted season x category
  effect, which MIAN's ICIM is meant to pick up.

Per (dataset, family, bucket, model): the AUC over the stratum's rows for each seed, mean and
std over seeds, and against the reference model (taken as a parameter: the report's) the
ΔAUC and a two-sided paired t-test over the common seeds, Holm-adjusted across the models of the
same stratum. On synthetic data the oracle's AUC per stratum is a row of its own (model
``oracle``). A stratum of fewer than two samples, or of one class, has no AUC (no mean, Δ or
test; shown as :data:`UNDEFINED_CELL`, its note says why). Columns: :data:`STRATA_COLUMNS`
(documented in results/README.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ctrbench import paths
from ctrbench.analysis import stats
from ctrbench.data.describe import GAP_DAYS, INACTIVE_DAYS
from ctrbench.data.store import PreparedData, open_store
from ctrbench.errors import DataError
from ctrbench.report.data import ResultSet, finite_auc, identity_key, markdown_safe
from ctrbench.schema import GROUP_KEY, HIST_LEN, LABEL, OOV_ID, ORACLE

ORACLE_ROW = "oracle"
ROW_CHUNK = 1 << 18  # samples per chunk when matching candidates against histories
STRATA_COLUMNS = (
    "dataset", "stratum", "bucket", "model", "n_samples", "n_rows", "sample_share",
    "positive_rate", "n_seeds", "auc_mean", "auc_std", "seed_aucs", "reference", "delta_auc",
    "ttest_p", "ttest_p_holm", "significant", "oracle_auc", "note",
)
FAMILIES = ("category", "gap", "history", "activity", "profile", "season")
PROFILE_FIELDS = ("occupation", "age", "gender")  # the first present defines ``profile``
SEASON_FIELD = "month"
CANDIDATE_CATEGORY = "cate_id"
LIFT_EDGES = (0.5, 1.0, 2.0)  # lift buckets: < 0.5 | 0.5-1 | 1-2 | >= 2
UNDEFINED_NOTE = "AUC not defined"  # the note of a stratum of < 2 samples or of one class
UNDEFINED_CELL = "—"
UNDEFINED_LEGEND = (f" {UNDEFINED_CELL} = AUC not defined: the stratum holds fewer than two "
                    "samples or one class (no mean, Δ or test).")


# --------------------------------------------------------------------------- the test samples
@dataclass
class Family:
    """One way of cutting the test set: a bucket code per row and the buckets' labels."""

    name: str
    codes: np.ndarray  # (N,) int, index into ``labels``
    labels: list[str]


@dataclass
class TestStrata:
    """A prepared store's test split cut into strata (rows in store order)."""

    labels: np.ndarray  # (N,) float
    oracle: np.ndarray | None  # (N,) float, synthetic data only
    n_samples: int
    families: list[Family] = field(default_factory=list)


def sample_ids(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(sample id per row, row of each sample's positive): a sample = a positive row and the
    negatives after it. Raises DataError when the rows are not laid out that way."""
    positive = np.asarray(labels) > 0.5
    sid = np.cumsum(positive) - 1  # (N,)
    first = np.flatnonzero(positive)  # (S,)
    if len(labels) and (sid[0] < 0):
        raise DataError("test rows do not start with a positive: cannot pair them into samples")
    groups = None if groups is None else np.asarray(groups)
    if groups is not None and not np.array_equal(groups, groups[first][sid]):
        raise DataError("test rows of one sample (a positive and the negatives after it) belong "
                        "to different users: cannot keep the samples together")
    return sid, first


def category_absent(cands: np.ndarray, hists: np.ndarray, hist_len: np.ndarray,
                    rows: np.ndarray) -> np.ndarray:
    """Per row in ``rows``: the candidate id is not among its first ``hist_len`` history ids."""
    out = np.empty(len(rows), dtype=bool)
    for lo in range(0, len(rows), ROW_CHUNK):
        take = rows[lo:lo + ROW_CHUNK]
        cand = np.asarray(cands[take])[:, None]  # (n, 1)
        hist = np.asarray(hists[take])  # (n, T)
        valid = np.arange(hist.shape[1])[None, :] < np.asarray(hist_len[take])[:, None]
        out[lo:lo + ROW_CHUNK] = ~((hist == cand) & valid & (cand != OOV_ID)).any(axis=1)
    return out


def history_buckets(max_len: int) -> tuple[np.ndarray, list[str]]:
    """Right-open edges over hist_len and labels: 0 | 1-4 | 5-9 | 10-19 | 20..T-1 | T."""
    inner = [e for e in (1, 5, 10, 20) if e < max_len]
    edges = np.array([*inner, max_len])
    bounds = [0, *inner, max_len]
    labels = []
    for lo, hi in itertools.pairwise(bounds):
        labels.append(str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}")
    labels.append(f"{max_len} (full)")
    return edges, labels


def activity_buckets(user_counts: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Edges for the positive-training-row count of a user: 0, then the training users'
    quartiles (integers, deduplicated). Codes = ``searchsorted(edges, count, "left")``."""
    counts = np.asarray(user_counts)
    counts = counts[counts > 0]
    quartiles = np.quantile(counts, [0.25, 0.5, 0.75], method="lower") if counts.size else []
    edges = [0, *sorted({int(q) for q in quartiles if q >= 1})]
    labels = ["0"]
    for lo, hi in itertools.pairwise(edges):
        labels.append(str(hi) if hi == lo + 1 else f"{lo + 1}-{hi}")
    labels.append(f"{edges[-1] + 1}+")
    return np.array(edges), labels


def cut_test_split(data: PreparedData) -> TestStrata:
    """Every family of :data:`FAMILIES` for the store's test split (vectorised)."""
    test = data.split("test")
    labels = np.asarray(test[LABEL], dtype=np.float64)
    groups = np.asarray(test[GROUP_KEY]) if GROUP_KEY in test else None
    sid, first = sample_ids(labels, groups)
    out = TestStrata(labels=labels, n_samples=len(first),
                     oracle=np.asarray(test[ORACLE], dtype=np.float64) if ORACLE in test else None)
    hist_len = np.asarray(test[HIST_LEN])
    if "cate_id" in test and "hist_cate_id" in test:
        absent = category_absent(test["cate_id"], test["hist_cate_id"], hist_len, first)
        out.families.append(Family("category", np.where(absent, 0, 1)[sid],
                                   ["new (not in history)", "in history"]))
    if GAP_DAYS in test:
        gap = np.asarray(test[GAP_DAYS], dtype=np.float64)[first]
        code = np.where(np.isnan(gap), 2, np.where(gap > INACTIVE_DAYS, 0, 1))
        out.families.append(Family("gap", code[sid], [
            f"> {INACTIVE_DAYS} days", f"<= {INACTIVE_DAYS} days", "no previous review"]))
    edges, names = history_buckets(data.schema.max_len)
    out.families.append(Family("history", np.searchsorted(edges, hist_len[first],
                                                          side="right")[sid], names))
    if groups is not None:
        train = data.split("train")
        users, counts = np.unique(np.asarray(train[GROUP_KEY])[np.asarray(train[LABEL]) > 0.5],
                                  return_counts=True)
        test_users = groups[first]
        mine = np.zeros(len(first), dtype=np.int64)  # (S,) the user's positive train rows
        if users.size:
            pos = np.minimum(np.searchsorted(users, test_users), users.size - 1)
            hit = users[pos] == test_users
            mine[hit] = counts[pos[hit]]
        edges, names = activity_buckets(counts)
        out.families.append(Family("activity",
                                   np.searchsorted(edges, mine, side="left")[sid], names))
    out.families.extend(lift_families(data.split("train"), test, first, sid))
    return out


def category_lift(train_values: np.ndarray, train_cates: np.ndarray, values: np.ndarray,
                  cates: np.ndarray) -> np.ndarray:
    """``P(c | v) / P(c)`` estimated on training positives ``(train_values, train_cates)``,
    looked up for each ``(values[i], cates[i])``; add-one smoothed over the categories, so
    that an unseen pair or value gives a finite lift."""
    train_values, train_cates = np.asarray(train_values), np.asarray(train_cates)
    n_values = int(max(train_values.max(initial=0), np.max(values, initial=0))) + 1
    n_cates = int(max(train_cates.max(initial=0), np.max(cates, initial=0))) + 1
    pair = np.bincount(train_values * n_cates + train_cates,
                       minlength=n_values * n_cates).reshape(n_values, n_cates)  # (V, C)
    per_value = pair.sum(axis=1)  # (V,)
    per_cate = pair.sum(axis=0)  # (C,)
    p_given = (pair[values, cates] + 1.0) / (per_value[values] + n_cates)
    p_cate = (per_cate[cates] + 1.0) / (per_cate.sum() + n_cates)
    return p_given / p_cate


def lift_family(name: str, lift: np.ndarray, sid: np.ndarray) -> Family:
    """Samples' lifts (one per sample) -> a family in :data:`LIFT_EDGES` buckets."""
    lo, mid, hi = LIFT_EDGES
    labels = [f"lift < {lo:g}", f"{lo:g}-{mid:g}", f"{mid:g}-{hi:g}", f">= {hi:g}"]
    return Family(name, np.searchsorted(np.array(LIFT_EDGES), lift, side="right")[sid], labels)


def lift_families(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                  first: np.ndarray, sid: np.ndarray) -> list[Family]:
    """``profile`` and ``season`` (see the module docstring), where the store has the fields;
    every count comes from the training split."""
    if CANDIDATE_CATEGORY not in test:
        return []
    positive = np.asarray(train[LABEL]) > 0.5
    train_cates = np.asarray(train[CANDIDATE_CATEGORY])[positive]
    cates = np.asarray(test[CANDIDATE_CATEGORY])[first]
    out = []
    profile = next((f for f in PROFILE_FIELDS if f in test and f in train), None)
    for family, fld in (("profile", profile), ("season", SEASON_FIELD)):
        if fld is None or fld not in test or fld not in train:
            continue
        lift = category_lift(np.asarray(train[fld])[positive], train_cates,
                             np.asarray(test[fld])[first], cates)
        out.append(lift_family(family, lift, sid))
    return out


# --------------------------------------------------------------------------- finding stores
def find_stores(identities: Iterable[str], extra: Sequence[Path] = ()) -> dict[str, PreparedData]:
    """Identity hash -> the prepared store with that identity, searched in ``extra`` (store
    directories, or directories holding stores) and the cache's ``prepared/``."""
    wanted = set(identities)
    found: dict[str, PreparedData] = {}
    candidates: list[Path] = []
    for root in (*map(Path, extra), paths.prepared_root()):
        if (root / "meta.json").is_file():
            candidates.append(root)
        elif root.is_dir():
            candidates.extend(p for p in sorted(root.iterdir())
                              if p.is_dir() and not p.name.startswith("."))
    for path in candidates:
        if not wanted - set(found):
            break
        try:
            data = open_store(path)
        except DataError:
            continue
        key = identity_key(data.identity)
        if key in wanted and key not in found:
            found[key] = data
    return found


# --------------------------------------------------------------------------- the table
def auc_undefined(n_samples: int, positive_rate: float) -> str:
    """Why a stratum's AUC means nothing ("" when it is defined): fewer than two samples (one
    sample's AUC only ranks its own negatives), or one class."""
    if n_samples < 2:
        return f"{n_samples} sample"
    return "one class" if positive_rate in (0.0, 1.0) else ""


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUC of a stratum's rows; NaN where :func:`auc_undefined` gives a reason."""
    n_samples = int((labels > 0.5).sum())  # a sample: one positive and its negatives
    if not len(labels) or auc_undefined(n_samples, float(labels.mean())):
        return math.nan
    return stats.auc_score(scores, labels)


def _bucket_aucs(cut: TestStrata, scores: np.ndarray) -> dict[tuple[str, int], float]:
    out = {}
    for fam in cut.families:
        for code in range(len(fam.labels)):
            rows = fam.codes == code
            out[(fam.name, code)] = _auc(cut.labels[rows], scores[rows])
    return out


def _runs_by_model(rs: ResultSet, dataset: str, identity: str, usable: set[tuple[str, str]]
                   ) -> dict[str, list[tuple[int, str]]]:
    fin = rs.finished[(rs.finished["dataset"] == dataset) & (rs.finished["identity"] == identity)]
    fin = fin[finite_auc(fin)]  # a non-finite test AUC is left out everywhere
    out: dict[str, list[tuple[int, str]]] = {}
    for r in fin.sort_values(["model", "seed"]).itertuples(index=False):
        if (dataset, r.model) in usable:
            out.setdefault(r.model, []).append((int(r.seed), str(r.path)))
    return out


def strata_table(rs: ResultSet, references: Mapping[str, str | None],
                 usable: set[tuple[str, str]], *, alpha: float = 0.05,
                 stores: Sequence[Path] = ()) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows of :data:`STRATA_COLUMNS` and, per dataset, a header line (or why it is missing).

    ``references``: dataset -> the report's reference model; ``usable``: the (dataset, model)
    pairs the leaderboard averaged (status ok). A dataset whose store is not found is left out
    and explained in the returned notes.
    """
    rows: list[dict] = []
    notes: dict[str, str] = {}
    fin = rs.finished
    for ds in rs.datasets():
        models = {m for d, m in usable if d == ds}
        if not models:
            continue
        ref = references.get(ds)
        ident_of = fin[fin["dataset"] == ds].groupby("model")["identity"].first()
        idents = [ident_of[ref]] if ref in ident_of else sorted(set(ident_of[list(models)]))
        store = find_stores(idents[:1], stores).get(idents[0]) if idents else None
        if store is None:
            key = idents[0][:8] if idents else "?"
            notes[ds] = (f"no prepared store with dataset identity {key} found: run "
                         "`ctrbench prepare` for it or pass --store DIR")
            continue
        try:
            cut = cut_test_split(store)
        except DataError as exc:
            notes[ds] = f"strata not computed: {exc}"
            continue
        found = _dataset_rows(rs, ds, cut, _runs_by_model(rs, ds, idents[0], usable), ref, alpha)
        if not any(r["model"] != ORACLE_ROW for r in found):
            notes[ds] = f"no run's test scores match the test split of store {store.path.name}"
            continue
        rows.extend(found)
        notes[ds] = (f"Reference: {ref or 'none'}; store {store.path.name}; "
                     f"{cut.n_samples:,} test samples")
    frame = pd.DataFrame(rows, columns=list(STRATA_COLUMNS))
    return frame.astype({"n_samples": "Int64", "n_rows": "Int64", "n_seeds": "Int64"}), notes


def _dataset_rows(rs: ResultSet, ds: str, cut: TestStrata,
                  runs: Mapping[str, list[tuple[int, str]]], ref: str | None, alpha: float
                  ) -> list[dict]:
    per_model: dict[str, dict[int, dict[tuple[str, int], float]]] = {}
    skipped: dict[str, int] = {}
    for model, seeds in runs.items():
        for seed, path in seeds:
            arrays = rs.scores(path)
            if arrays is None or not np.array_equal(arrays["labels"], cut.labels):
                skipped[model] = skipped.get(model, 0) + 1
                continue
            per_model.setdefault(model, {})[seed] = _bucket_aucs(
                cut, np.asarray(arrays["scores"], dtype=np.float64))
    oracle = _bucket_aucs(cut, cut.oracle) if cut.oracle is not None else {}
    rows = []
    for fam in cut.families:
        for code, bucket in enumerate(fam.labels):
            in_bucket = fam.codes == code
            n_rows = int(in_bucket.sum())
            if n_rows == 0:
                continue
            n_samples = int((in_bucket & (cut.labels > 0.5)).sum())
            base = {"dataset": ds, "stratum": fam.name, "bucket": bucket,
                    "n_samples": n_samples, "n_rows": n_rows,
                    "sample_share": n_samples / max(cut.n_samples, 1),
                    "positive_rate": float(cut.labels[in_bucket].mean()),
                    "oracle_auc": oracle.get((fam.name, code), math.nan), "reference": ref or ""}
            if why := auc_undefined(n_samples, base["positive_rate"]):
                base["note"] = f"{UNDEFINED_NOTE}: {why}"
            rows.extend(_bucket_rows(base, (fam.name, code), per_model, skipped, ref, alpha))
    return rows


def _bucket_rows(base: dict, key: tuple[str, int],
                 per_model: Mapping[str, Mapping[int, Mapping[tuple[str, int], float]]],
                 skipped: Mapping[str, int], ref: str | None, alpha: float) -> list[dict]:
    out = []
    if np.isfinite(base["oracle_auc"]):
        out.append({**base, "model": ORACLE_ROW, "n_seeds": 1, "auc_mean": base["oracle_auc"],
                    "auc_std": math.nan, "seed_aucs": "", "delta_auc": math.nan,
                    "ttest_p": math.nan, "ttest_p_holm": math.nan, "significant": "",
                    "note": "the generator's exact click probability"})
    ref_aucs = {s: v[key] for s, v in per_model.get(ref, {}).items()} if ref else {}
    models = sorted(per_model)
    tests = {}
    for model in models:
        aucs = {s: v[key] for s, v in per_model[model].items()}
        values = np.array(list(aucs.values()))
        row = {**base, "model": model, "n_seeds": len(aucs),
               "auc_mean": float(np.mean(values)) if values.size else math.nan,
               "auc_std": float(np.std(values, ddof=1)) if values.size > 1 else math.nan,
               "seed_aucs": ";".join(f"{s}:{v:.8g}" for s, v in aucs.items()),
               "delta_auc": math.nan, "ttest_p": math.nan, "ttest_p_holm": math.nan,
               "significant": "reference" if model == ref else "", "note": base.get("note", "")}
        if row["note"].startswith(UNDEFINED_NOTE):  # no seed AUCs, mean, delta or test
            row["seed_aucs"] = ""
            out.append(row)
            continue
        if skipped.get(model):
            row["note"] = f"{skipped[model]} run(s) without matching test scores left out"
        common = sorted(set(aucs) & set(ref_aucs))
        if model != ref and common:
            row["delta_auc"] = float(np.mean([aucs[s] - ref_aucs[s] for s in common]))
            row["ttest_p"] = stats.paired_ttest([aucs[s] for s in common],
                                                [ref_aucs[s] for s in common])
            tests[model] = row["ttest_p"]
            if len(common) < max(len(aucs), len(ref_aucs)):
                row["note"] = "; ".join(filter(None, [row["note"],
                                                      f"paired on {len(common)} common seed(s)"]))
        out.append(row)
    adjusted = dict(zip(tests, stats.holm(list(tests.values())))) if tests else {}
    for row in out:
        if row["model"] in adjusted:
            p = float(adjusted[row["model"]])
            row["ttest_p_holm"] = p
            row["significant"] = "" if not np.isfinite(p) else ("yes" if p < alpha else "no")
    return out


# --------------------------------------------------------------------------- rendering
LEGEND = (
    "Test AUC within strata of the test set (mean ± sample std over seeds). A sample (a "
    "positive and its negatives, which share the user, history and context) is never split: "
    "its stratum is read from its positive. n = samples in the stratum (share of all test "
    "samples). category: the positive's category absent from the history (\"new demand\", "
    "MIAN Fig. 3a) or present; gap: days since the user's previous review (Fig. 3b); history: "
    "the model-visible history length; activity: the user's positive training rows (buckets at "
    "the training users' quartiles); profile / season: the lift P(category | the user's "
    "occupation, or age, or gender) / P(category), and the same for the review month, of the "
    "positive's category, counted on the training positives. * = paired t-test over seeds "
    "against the reference in that "
    "stratum, Holm-adjusted across the stratum's models, p < {alpha} (covers seed variance "
    "only, not test-set sampling); (ref) = the report's reference; oracle = the generator's "
    "exact probability (synthetic data). Columns of strata.csv: results/README.md."
)


def _undefined(r: pd.Series) -> bool:
    return bool(auc_undefined(int(r["n_samples"]), float(r["positive_rate"])))


def _cell(r: pd.Series) -> str:
    if _undefined(r):
        return UNDEFINED_CELL
    if pd.isna(r["auc_mean"]):
        return "–"
    if r["model"] == ORACLE_ROW:
        return f"{r['auc_mean']:.4f}"
    std = "–" if pd.isna(r["auc_std"]) else f"{r['auc_std']:.4f}"
    mark = {"reference": " (ref)", "yes": " *"}.get(r["significant"], "")
    return f"{r['auc_mean']:.4f} ± {std}{mark}"


def wide(part: pd.DataFrame) -> pd.DataFrame:
    """One dataset's family as a grid: a row per model (oracle, reference first), a column per
    bucket headed with its sample count and share."""
    buckets = list(dict.fromkeys(part["bucket"]))
    sizes = part.drop_duplicates("bucket").set_index("bucket")
    heads = {b: f"{b} (n={int(sizes.loc[b, 'n_samples']):,}, "
                f"{sizes.loc[b, 'sample_share']:.0%})" for b in buckets}
    missing = {b: UNDEFINED_CELL if _undefined(sizes.loc[b]) else "–" for b in buckets}
    ref = str(part["reference"].iloc[0])
    models = sorted(part["model"].unique(),
                    key=lambda m: (m != ORACLE_ROW, m != ref, m))
    cells = {(r["model"], r["bucket"]): _cell(r) for _, r in part.iterrows()}
    return pd.DataFrame([{"model": m, **{heads[b]: cells.get((m, b), missing[b]) for b in buckets}}
                         for m in models])


def render(frame: pd.DataFrame, notes: Mapping[str, str], alpha: float) -> tuple[str, str]:
    """(Markdown, terminal text): per dataset its header note, then a grid per family."""
    legend = LEGEND.format(alpha=alpha)
    if not frame.empty and frame.apply(_undefined, axis=1).any():
        legend += UNDEFINED_LEGEND
    md, txt = [legend + "\n"], []
    for ds in sorted(notes):
        part = frame[frame["dataset"] == ds]
        md.append(f"## {ds}\n\n{notes[ds]}\n")
        txt.append(f"[{ds}] {notes[ds]}")
        for family in dict.fromkeys(part["stratum"]):
            grid = wide(part[part["stratum"] == family])
            md.append(f"### {family}\n\n" + tabulate(markdown_safe(grid), headers="keys",
                                                     tablefmt="github",
                                                     showindex=False, disable_numparse=True)
                      + "\n")
            txt.append(f"({family})\n" + tabulate(grid, headers="keys", tablefmt="simple",
                                                  showindex=False, disable_numparse=True))
    return "\n".join(md), "\n".join(txt) + "\n"
