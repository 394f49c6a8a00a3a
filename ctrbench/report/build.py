"""``ctrbench report``: leaderboards, paper tables, timing and plots from run records.

:func:`build_report` is the one library call: it loads the records (:mod:`ctrbench.report.data`),
builds the tables (:mod:`ctrbench.report.tables`), writes each as Markdown and CSV under the
output directory (atomically) and draws the figures (:mod:`ctrbench.report.plots`). It returns the
tables, rendered, so that the CLI can print them; the library itself never prints.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ctrbench.errors import CtrbenchError
from ctrbench.paths import ensure_writable_dir, inside, safe_name
from ctrbench.progress import message
from ctrbench.record import atomic_write_text, exclusive, remove_stale_temporaries
from ctrbench.registry import did_you_mean
from ctrbench.report import health, plots, strata, versus_pop
from ctrbench.report import tables as rt
from ctrbench.report.compare import is_floor
from ctrbench.report.data import CardBook, ResultSet, load_results, markdown_safe
from ctrbench.report.tuned import TUNED_LEGEND, ordering_footer, tuned_display, tuned_tables

DASH = "–"
MANIFEST = (".ctrbench-report", "files.json")  # what the last report in a folder wrote
DEFAULT_GIM_PARTS = ("item", "context", "behavior", "user", "ibim", "iuim", "icim")


# --------------------------------------------------------------------------- formatting
def num(x: float | None, digits: int = 4, signed: bool = False) -> str:
    if x is None or pd.isna(x) or not np.isfinite(float(x)):
        return DASH
    return f"{float(x):+.{digits}f}" if signed else f"{float(x):.{digits}f}"


def mean_std(mean: float, std: float, digits: int = 4) -> str:
    if pd.isna(mean):
        return DASH
    return f"{num(mean, digits)} ± {num(std, digits)}"


def interval(low: float, high: float, digits: int = 4, signed: bool = False) -> str:
    if pd.isna(low) or pd.isna(high):
        return DASH
    return f"[{num(low, digits, signed)}, {num(high, digits, signed)}]"


def pvalue(p: float) -> str:
    if p is None or pd.isna(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def mark(significant: str) -> str:
    return {"yes": " *", "no": " n.s.", "": ""}.get(significant, "")


def seeds_cell(n: int, failed: int) -> str:
    return f"{n} (+{failed} failed)" if failed else str(n)


# --------------------------------------------------------------------------- display frames
def _vs_ref(r) -> str:
    """``RelaImpr +1.58% / ΔAUC +0.0050 (n 5) *`` for a declared comparison."""
    if r.significant == "reference":
        return "(reference)"
    if pd.isna(r.delta_auc):
        return DASH
    return (f"RelaImpr {num(r.relaimpr, 2, signed=True)}% / ΔAUC {num(r.delta_auc, signed=True)}"
            f" (n {int(r.n_common)})" + (mark(r.significant) or " (no test)"))


def _delong(r) -> str:
    if pd.isna(r.delong_seeds):
        return DASH
    return f"+{int(r.delong_better)} −{int(r.delong_worse)} of {int(r.delong_seeds)}"


def leaderboard_display(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "model": r.model, "seeds": seeds_cell(r.n_seeds, r.n_failed),
        "AUC": mean_std(r.auc_mean, r.auc_std),
        "AUC 95% CI seeds": interval(r.auc_ci_low, r.auc_ci_high),
        "AUC 95% CI seeds×users": interval(r.auc_boot_low, r.auc_boot_high),
        "gAUC": mean_std(r.gauc_mean, r.gauc_std),
        "logloss": mean_std(r.logloss_mean, r.logloss_std), "vs ref": _vs_ref(r),
        "t-test p": pvalue(r.ttest_p_holm), "Wilcoxon p": pvalue(r.wilcoxon_p_holm),
        "DeLong": _delong(r),
        "ΔAUC 95% CI seeds×users": interval(r.boot_delta_low, r.boot_delta_high, signed=True),
        "note": r.note,
    } for r in frame.itertuples(index=False)])


def delta_display(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "model": r.model, "seeds": r.n_seeds, "AUC": mean_std(r.auc_mean, r.auc_std),
        "ΔAUC (n)": (num(r.delta_auc, signed=True)
                     + ("" if pd.isna(r.n_common) else f" ({int(r.n_common)})")
                     + mark(r.significant)),
        "RelaImpr": DASH if pd.isna(r.relaimpr) else f"{r.relaimpr:+.2f}%",
        "logloss": mean_std(r.logloss_mean, r.logloss_std),
        "Δlogloss": num(r.delta_logloss, signed=True), "t-test p": pvalue(r.ttest_p_holm),
        "note": r.note,
    } for r in frame.itertuples(index=False)])


def timing_display(frame: pd.DataFrame) -> pd.DataFrame:
    def rate(x: float) -> str:
        return DASH if pd.isna(x) else f"{x:,.0f}"

    return pd.DataFrame([{
        "model": r.model, "seeds": r.n_seeds, "train s/epoch": num(r.train_s_per_epoch, 1),
        "eval s/epoch": num(r.eval_s_per_epoch, 1),
        "train samples/s": rate(r.train_samples_per_s),
        "eval samples/s": rate(r.eval_samples_per_s), "peak MB": num(r.peak_memory_mb, 0),
        "params": DASH if pd.isna(r.n_parameters) else f"{int(r.n_parameters):,}",
        "best / run epochs": f"{num(r.best_epoch_mean, 1)} / {num(r.epochs_run_mean, 1)}",
        "time vs DIN": DASH if pd.isna(r.time_vs_din) else f"{r.time_vs_din:.2f}x",
        "note": r.note,
    } for r in frame.itertuples(index=False)])


def paper_display(frame: pd.DataFrame) -> pd.DataFrame:
    def pct(x: float) -> str:
        return DASH if pd.isna(x) else f"{x:+.2f}%"

    return pd.DataFrame([{
        "model": r.model, "seeds": r.n_seeds, "AUC": num(r.auc_mean),
        "paper AUC": num(r.paper_auc), "ΔAUC": num(r.delta_auc, signed=True),
        "logloss": num(r.logloss_mean), "paper logloss": num(r.paper_logloss),
        "Δlogloss": num(r.delta_logloss, signed=True),
        "vs base (paper's definition)": (DASH if pd.isna(r.paper_base) else
                                         f"{pct(r.rel_impr_pct)} (paper {pct(r.paper_rel_impr_pct)}"
                                         f" vs {r.paper_base})"),
    } for r in frame.itertuples(index=False)])


def ordering_sentence(r: pd.Series) -> str:
    pairs = int(r["concordant_pairs"]) + int(r["discordant_pairs"])
    verdict = {"yes": "the paper's ordering holds", "no": "the paper's ordering does not hold",
               "": "too few models to compare orderings"}[r["ordering_holds"]]
    return (f"Kendall's tau = {num(r['kendall_tau'], 3)} (p = {pvalue(r['kendall_p'])}); "
            f"{int(r['concordant_pairs'])} of {pairs} model pairs in the paper's AUC order: "
            f"{verdict}.")


#: [expected] counts that the paper's data fix (categories and row counts are derived or unverified)
PAPER_DATA_COUNTS = ("users", "items", "interactions")


def not_the_papers_data(rs: ResultSet, dataset: str, stores: Sequence[Path] = ()) -> str:
    """Why ``dataset``'s runs were not trained on the paper's data ('' when no store says so):
    the prepared store's users, items or interactions differ from its card's [expected]."""
    idents = sorted(set(rs.finished.loc[rs.finished["dataset"] == dataset, "identity"]))
    for store in strata.find_stores(idents, stores).values():
        differ = [m for m in store.meta.get("expected_mismatches", [])
                  if m.split(":")[0] in PAPER_DATA_COUNTS]
        if differ:
            return (f"not the paper's data ({'; '.join(differ)} in store {store.path.name}): "
                    "the paper's numbers are for the full dataset and do not apply to these runs")
    return ""


# --------------------------------------------------------------------------- rendering
@dataclass
class Table:
    """One report table: the CSV frame and its rendered Markdown / terminal text."""

    name: str
    title: str
    frame: pd.DataFrame
    markdown: str
    text: str


def _grid(shown: pd.DataFrame, fmt: str) -> str:
    """A table of preformatted strings (no number re-parsing: "0.6000" stays as written);
    in Markdown (github) a ``|`` inside a cell is escaped, so it never adds a column."""
    shown = markdown_safe(shown) if fmt == "github" else shown
    return tabulate(shown, headers="keys", tablefmt=fmt, showindex=False,
                    disable_numparse=True) + "\n"


def _sections(frame: pd.DataFrame, display: Callable[[pd.DataFrame], pd.DataFrame],
              header: Callable[[str], str] | None = None,
              footer: Callable[[str], str] | None = None) -> tuple[str, str]:
    """Per-dataset sections rendered as Markdown (github tables) and terminal text."""
    md, txt = [], []
    if frame.empty:
        return "_No rows._\n", "(no rows)\n"
    for ds, part in frame.groupby("dataset", sort=True):
        shown = display(part.reset_index(drop=True))
        head = header(ds) if header else ""
        foot = footer(ds) if footer else ""
        md.append(f"## {ds}\n\n" + (f"{head}\n\n" if head else "")
                  + _grid(shown, "github").rstrip("\n")
                  + (f"\n\n{foot}" if foot else "") + "\n")
        txt.append(f"[{ds}]" + (f" {head}" if head else "") + "\n"
                   + _grid(shown, "simple").rstrip("\n")
                   + (f"\n{foot}" if foot else "") + "\n")
    return "\n".join(md), "\n".join(txt)


LEADERBOARD_LEGEND = (
    "Test metrics over seeds: mean ± sample std. Each dataset's header names the declared "
    "reference and what chose it (never test data), the declared comparisons (the Holm family) "
    "and the protocol. What each interval covers: \"AUC 95% CI seeds\" = training randomness "
    "only (t-interval of the mean over seeds, computed on the logit scale so it stays inside "
    "(0, 1); the test set is held fixed); \"AUC 95% CI seeds×users\" and \"ΔAUC 95% CI "
    "seeds×users\" = training randomness AND test-set sampling (two-level percentile bootstrap: "
    "seeds resampled, then test users resampled with all their rows; one user resample shared "
    "by every model, so ΔAUC is paired). vs ref: row model against the reference on their "
    "common seeds (n): RelaImpr = ((AUC − 0.5) / (AUC_ref − 0.5) − 1) × 100% and ΔAUC = AUC − "
    "AUC_ref; * = paired t-test over the common seeds significant after Holm correction "
    "(p < {alpha}), n.s. = not significant, – = not a declared comparison or not computable. "
    "Wilcoxon cannot reach p < 0.05 below 6 seeds. DeLong: +k −j of n = seeds whose DeLong test "
    "on the shared test set finds the row model significantly better (k) or worse (j) "
    "(p < {alpha}). Fewer than 3 seeds: intervals unreliable (noted). Rows whose records mix "
    "dataset identities or configurations are refused, never averaged; failed and unreadable "
    "runs are listed in failed.md."
)


@dataclass
class Report:
    """Everything ``build_report`` produced."""

    tables: list[Table]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out and why (for stderr)


def build_report(
    results_root: Path, out_dir: Path | None = None, *, datasets: Sequence[str] | None = None,
    reference: str | None = None, alpha: float = 0.05, n_boot: int | None = None,
    boot_seed: int = 0,
    paper_map: Mapping[str, str] | None = None, make_plots: bool = True,
    cards: CardBook | None = None, stores: Sequence[Path] = (),
) -> Report:
    """Build every table and plot from the records under ``results_root`` and write them.

    ``n_boot``: bootstrap resamples per dataset (None = automatic, 0 = no bootstrap).
    ``stores``: prepared stores (or directories of them) to look for the runs' test data in,
    besides the cache's, for the strata table.
    """
    rs = load_results(Path(results_root), datasets)
    if rs.runs.empty:
        raise CtrbenchError(f"no run records (seed-*.json) under {Path(results_root) / 'runs'}",
                            hint="run `ctrbench run ...` first, or pass --results DIR")
    if rs.finished.empty:
        shown = rt.failed_table(rs).drop(columns=["path"])
        raise CtrbenchError(
            f"no finished run under {Path(results_root) / 'runs'}: nothing to report, nothing "
            f"written; {len(rs.runs)} record(s) not finished:\n" + _grid(shown, "simple"),
            hint="fix what the errors name and run them again (`ctrbench run ...` redoes a "
                 "failed run without --force)")
    _check_reference(rs, reference)
    cards = cards or CardBook()
    out = Path(out_dir) if out_dir is not None else Path(results_root) / "report"
    message(f"report: {len(rs.finished)} finished run(s), {len(rs.not_finished)} other(s)")

    board, why = rt.leaderboard(rs, cards, reference=reference, alpha=alpha, n_boot=n_boot,
                                boot_seed=boot_seed)
    board = versus_pop.add_pop_columns(board, rs, alpha)
    flagged = health.flagged_table(rs)

    def board_header(ds: str) -> str:
        notes = [versus_pop.header_note(board, ds), health.header_note(flagged, ds)]
        return f"{why[ds]}; " + "; ".join(n for n in notes if n) + "."

    md, txt = _sections(board, lambda f: versus_pop.with_pop_column(leaderboard_display(f), f),
                        header=board_header)
    legend = " ".join((LEADERBOARD_LEGEND.format(alpha=alpha),
                       versus_pop.LEGEND.format(alpha=alpha), health.LEGEND))
    tables = [Table("leaderboard", "Leaderboard (Table 2)", board, f"{legend}\n\n{md}", txt)]

    for kind, title in (("ablations", "Ablations vs mian (Table 3)"),
                        ("variants", "Transformer variants vs mian (Table 4)")):
        frame = rt.delta_table(rs, cards, kind, alpha=alpha)
        md, txt = _sections(frame, delta_display)
        tables.append(Table(kind, title, frame, md, txt))

    timing = rt.timing_table(rs)
    md, txt = _sections(timing, timing_display)
    tables.append(Table("timing", "Timing (§4.5)", timing, md, txt))

    paper, ordering = rt.paper_tables(rs, cards, paper_map)
    caveats = {ds: c for ds in set(ordering["dataset"])
               if (c := not_the_papers_data(rs, ds, stores))}
    for ds, caveat in sorted(caveats.items()):
        message(f"warning: paper comparison of {ds}: {caveat}")
    sentences = {r["dataset"]: f"Paper dataset: {r['paper_dataset']}. " + ordering_sentence(r)
                 + (f" Warning: {caveats[r['dataset']]}." if r["dataset"] in caveats else "")
                 for _, r in ordering.iterrows()}
    md, txt = _sections(paper, paper_display, footer=lambda ds: sentences.get(ds, ""))
    tables.append(Table("paper", "Paper comparison", paper, md, txt))
    tables.append(Table("paper_ordering", "Paper ordering", ordering, "", ""))

    ok = board["status"] == "ok"
    strata_frame, notes = strata.strata_table(
        rs, {ds: (str(g["reference"].iloc[0]) or None) for ds, g in board.groupby("dataset")},
        set(zip(board.loc[ok, "dataset"], board.loc[ok, "model"])), alpha=alpha, stores=stores)
    missing = [f"strata of {ds} not written: {n}" for ds, n in notes.items()
               if ds not in set(strata_frame["dataset"])]
    if not strata_frame.empty:
        md, txt = strata.render(strata_frame, notes, alpha)
        tables.append(Table("strata", "Test AUC by stratum", strata_frame, md, txt))

    pairs, orderings = tuned_tables(rs)
    if not pairs.empty:  # only when tuned cards were run beside their defaults
        md, txt = _sections(pairs, tuned_display,
                            footer=lambda ds: ordering_footer(orderings, ds))
        tables.append(Table("tuned", "Defaults vs tuned", pairs, f"{TUNED_LEGEND}\n\n{md}", txt))
        tables.append(Table("tuned_ordering", "Orderings, defaults vs tuned", orderings, "", ""))

    shown = health.flagged_display(flagged)
    md = (f"{health.INTRO}\n\n" + _grid(shown, "github") if not flagged.empty
          else "_No flagged runs._\n")
    txt = _grid(shown, "simple") if not flagged.empty else "(none)\n"
    tables.append(Table("flagged", "Runs flagged by training health (counted)", flagged, md, txt))

    failed = rt.failed_table(rs)
    shown = failed.drop(columns=["path"])
    md = _grid(shown, "github") if not failed.empty else "_No failed or unreadable runs._\n"
    txt = _grid(shown, "simple") if not failed.empty else "(none)\n"
    tables.append(Table("failed", "Runs not finished (never averaged)", failed, md, txt))

    unmapped = sorted(set(paper_map or {}) - set(rs.datasets()))
    missing += [f"--paper-map {ds}=...: no records for dataset {ds!r} (ignored)"
                for ds in unmapped]
    report = Report(tables, notes=missing)
    ensure_writable_dir(out, "the report")
    # figures are drawn first, into a hidden folder, and moved beside the tables only when
    # every table is written: a report that fails half-way writes no new file
    staged = out / f".plots.tmp-{uuid.uuid4().hex[:8]}"
    # one report at a time writes into `out` (another `report --out` the same folder waits):
    # the folder never mixes the files of two reports
    with exclusive(out / "report"):  # out/.report.lock, removed on release
        _remove_stale(out, staged)
        try:
            drawn = _plots(rs, board, staged, strata_frame) if make_plots else []
            _write_files(report, tables, drawn, out)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        removed = _remove_previous(out, report.files)
    if rs.changed:
        report.notes.append(f"{len(rs.changed)} record(s) were replaced while this report read "
                            "them (a run writing?): their test scores were left out; run "
                            "`ctrbench report` again when the runs are done")
    if removed:
        report.notes.append(f"removed {len(removed)} file(s) of the previous report in {out} "
                            f"that this one does not write: {', '.join(removed[:5])}"
                            + (" ..." if len(removed) > 5 else ""))
    return report


def _write_files(report: Report, tables: Sequence[Table], drawn: Sequence[Path],
                 out: Path) -> None:
    """Every table as CSV (and Markdown), then the staged figures moved under ``plots/``;
    each path written is added to ``report.files``."""
    for t in tables:
        report.files.append(out / f"{t.name}.csv")
        atomic_write_text(report.files[-1], rt.csv_text(t.frame))
        if t.markdown:
            report.files.append(out / f"{t.name}.md")
            atomic_write_text(report.files[-1], f"# {t.title}\n\n{t.markdown}")
    if drawn:
        (out / "plots").mkdir(exist_ok=True)
    for path in drawn:
        report.files.append(inside(out / "plots", path.name))
        os.replace(path, report.files[-1])


def _remove_stale(out: Path, staged: Path) -> None:
    """What a report killed mid-write left in ``out`` (temporary files, staged figures; never
    under a final name); call it holding the folder's lock, under which figures are staged."""
    remove_stale_temporaries(out, keep=staged)
    remove_stale_temporaries(out.joinpath(MANIFEST[0]))


def _remove_previous(out: Path, written: Sequence[Path]) -> list[str]:
    """Remove the files the previous report in ``out`` wrote (listed in its manifest) that
    this one did not rewrite, so the folder never mixes two reports (a figure of a dataset or
    model the new tables do not have); then list this report's files. Only files a report
    listed are ever removed."""
    manifest = out.joinpath(*MANIFEST)
    try:
        previous = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        previous = []
    mine = sorted(p.relative_to(out).as_posix() for p in written)
    removed = []
    for rel in previous if isinstance(previous, list) else []:
        if not isinstance(rel, str) or rel in mine:
            continue
        try:
            path = inside(out, rel)
        except CtrbenchError:
            continue
        if path.is_file():
            path.unlink()
            removed.append(rel)
    manifest.parent.mkdir(exist_ok=True)
    atomic_write_text(manifest, json.dumps({"files": mine}, indent=1) + "\n")
    return removed


def _check_reference(rs: ResultSet, reference: str | None) -> None:
    """``--reference``: a model with finished runs, never the popularity floor."""
    if not reference:
        return
    models = set(rs.finished["model"])
    if reference not in models:
        raise did_you_mean("reference model", reference, sorted(models))
    archs = rs.finished.loc[rs.finished["model"] == reference, "arch"]
    if is_floor(reference, archs):
        trained = sorted(m for m in models
                         if not is_floor(m, rs.finished.loc[rs.finished["model"] == m, "arch"]))
        raise CtrbenchError(
            f"--reference {reference}: {reference} is the item-popularity floor (nothing "
            "trained), never the reference",
            hint="choose a trained model" + (f": {', '.join(trained)}" if trained else ""))


def _plots(rs: ResultSet, board: pd.DataFrame, out: Path, strata_frame: pd.DataFrame
           ) -> list[Path]:
    """Learning curves and strata per dataset, GIM heatmaps for models whose records carry them.
    A model has the same colour, line style and marker in every figure."""
    files = []
    styles = plots.model_styles(board["model"])
    usable = set(zip(board.loc[board["status"] == "ok", "dataset"],
                     board.loc[board["status"] == "ok", "model"]))
    keep = [(d, m) in usable for d, m in zip(rs.curves["dataset"], rs.curves["model"])]
    curves = rs.curves[np.array(keep, dtype=bool)]  # a list, even empty, would pick columns
    for ds, part in curves.groupby("dataset", sort=True):
        path = inside(out, f"learning-{safe_name('dataset', ds)}.png")
        untrained = rs.finished.groupby(["dataset", "model"])["n_parameters"].max() == 0
        floors = [m for (d, m), flag in untrained.items() if flag and d == ds]
        plots.learning_curves(part, path, f"Learning curves on {ds} (mean over seeds)", styles,
                              floors)
        files.append(path)
    for ds, part in strata_frame.groupby("dataset", sort=True):
        part = part[part["model"] != strata.ORACLE_ROW]
        if part.empty:
            continue
        path = inside(out, f"strata-{safe_name('dataset', ds)}.png")
        plots.strata_plot(part, path, f"Test AUC by stratum on {ds}", styles)
        files.append(path)
    fin = rs.finished.sort_values(["dataset", "model", "seed"])
    for (ds, model), grp in fin.groupby(["dataset", "model"], sort=True):
        if (ds, model) not in usable:
            continue
        for rec in grp.itertuples(index=False):
            scores = rs.scores(rec.path)
            if scores is None or "explain__gim" not in scores:
                continue
            weights = np.asarray(scores["explain__gim"])  # (S, P)
            if weights.ndim != 2 or weights.size == 0:
                continue  # no sample to draw in this seed's file: try the next seed
            parts = rs.explain_parts.get(rec.path, {}).get("gim") or list(DEFAULT_GIM_PARTS)
            if len(parts) != weights.shape[1]:
                parts = [f"part {i}" for i in range(weights.shape[1])]
            path = inside(out, f"gim-{safe_name('dataset', ds)}-{safe_name('model', model)}.png")
            plots.gim_heatmap(weights, parts, path, f"GIM part weights: {model} on {ds} "
                              f"(seed {rec.seed}, {min(len(weights), 40)} of "
                              f"{len(weights)} sampled test cases)")
            files.append(path)
            break  # one seed's sample per model
    return files
