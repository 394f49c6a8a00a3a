"""``ctrbench report`` (leaderboards, paper tables, timing, plots) and ``ctrbench check``."""

from __future__ import annotations

import traceback
from pathlib import Path

import click

from ctrbench.errors import CtrbenchError
from ctrbench.paths import default_results_root

RESULTS_HELP = "Results root holding runs/ (default: $CTRBENCH_RESULTS, else ./results)."


def _paper_map(items: tuple[str, ...]) -> dict[str, str]:
    """``--paper-map DATASET=PAPER`` items; PAPER must be one of the paper's datasets."""
    from ctrbench.report.data import PAPER_DATASETS

    out = {}
    for item in items:
        name, sep, paper = item.partition("=")
        if not sep or not name or not paper:
            raise click.BadParameter(f"{item!r}: expected DATASET=PAPER_DATASET "
                                     "(e.g. books-small=books)", param_hint="--paper-map")
        if paper.strip() not in PAPER_DATASETS:
            raise click.BadParameter(f"{item!r}: unknown paper dataset {paper.strip()!r}; "
                                     f"the paper's are {', '.join(PAPER_DATASETS)}",
                                     param_hint="--paper-map")
        out[name.strip()] = paper.strip()
    return out


def _resamples(_ctx: click.Context, _param: click.Parameter, value: str) -> int | None:
    """``--bootstrap``: "auto" -> None, else a non-negative integer."""
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise click.BadParameter(f"{value!r}: expected 'auto' or an integer >= 0",
                                 param_hint="--bootstrap")
    return n


@click.command(name="report")
@click.option("--dataset", "datasets", multiple=True,
              help="Only these datasets (repeatable). Default: every dataset with records.")
@click.option("--reference", default=None, metavar="MODEL",
              help="Declare the comparisons: every model against MODEL. Default: mian against "
                   "each baseline when both are present (Table 2), else the trained model with "
                   "the best mean validation AUC. Never pop (the popularity floor).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=RESULTS_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where to write the tables and plots (default: <results>/report).")
@click.option("--bootstrap", "n_boot", default="auto", show_default=True, metavar="N|auto",
              callback=_resamples,
              help="Bootstrap resamples for the AUC-difference CI; 0 = skip. auto: 1000, "
                   "fewer (>= 200) when records x test rows is large (about a minute).")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap resamples (the same seed gives the same CI).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.05, show_default=True, help="Significance level.")
@click.option("--paper-map", multiple=True, metavar="DATASET=PAPER",
              help="Map a dataset to the paper's (books, electronics, commercial); names "
                   "containing one of these (books-dien) map automatically.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write PNG figures.")
@click.option("--store", "stores", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Prepared store (or a directory of stores) holding the runs' test data, for "
                   "the strata table (repeatable). The cache's prepared/ is always searched.")
def report(datasets: tuple[str, ...], reference: str | None, results_dir: Path | None,
           out_dir: Path | None, n_boot: int | None, bootstrap_seed: int, alpha: float,
           paper_map: tuple[str, ...], plots: bool, stores: tuple[Path, ...]) -> None:
    """Leaderboards with significance, ablation/variant/timing/paper tables and plots.

    Tables go to stdout; each is also written as Markdown and CSV under --out (columns are
    documented in results/README.md), figures as PNG under <out>/plots. Failed runs and
    records that mix dataset identities are listed and never averaged. The strata table
    (test AUC by new category, inactivity gap, history length and user activity) is written
    for every dataset whose prepared store is found (cache or --store).

    \b
    Examples:
      ctrbench report
      ctrbench report --dataset books --reference din --out report/
      ctrbench report --results runs-gpu/ --bootstrap 200 --no-plots
    """
    from ctrbench.report.build import build_report

    root = results_dir if results_dir is not None else default_results_root()
    result = build_report(root, out_dir, datasets=list(datasets) or None, reference=reference,
                          alpha=alpha, n_boot=n_boot, boot_seed=bootstrap_seed,
                          paper_map=_paper_map(paper_map), make_plots=plots, stores=stores)
    for table in result.tables:
        if table.text:
            click.echo(f"== {table.title}\n{table.text}")
    for note in result.notes:
        click.echo(note, err=True)
    out = out_dir if out_dir is not None else root / "report"
    click.echo(f"wrote {len(result.files)} file(s) under {out}", err=True)


@click.command(name="check")
@click.option("--baseline", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Reference CSV (e.g. results/reference/ci-synthetic.csv).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=RESULTS_HELP)
@click.option("--dataset", "datasets", multiple=True,
              help="Only these datasets (repeatable). Default: every dataset of the baseline "
                   "(with --update: every dataset with records, the baseline rewritten whole).")
@click.option("--update", is_flag=True,
              help="Rewrite the baseline from the current runs (on purpose), then exit 0. "
                   "With --dataset, only those datasets' rows are replaced; the others are "
                   "kept.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.001, show_default=True,
              help="Smallest AUC change that counts.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.05, show_default=True, help="Significance level of the one-sided test.")
def check(baseline: Path, results_dir: Path | None, datasets: tuple[str, ...], update: bool,
          tolerance: float, alpha: float) -> None:
    """Regression gate: compare current runs with a committed reference leaderboard.

    Only runs whose model config (params, train settings, epochs included) and dataset
    identity equal the reference row's are compared; otherwise the model is incomparable and
    the differing keys are named. A model is worse when its mean test AUC drops by more than
    --tolerance AND a one-sided test over seeds (paired t-test on the same seeds, else Welch)
    finds the drop significant; better is the mirror image. For each model the gate prints
    the smallest drop it detects with 80% power at the reference's seed std and n.

    \b
    Exit codes:
      0  no regression (better / unchanged / new models only); also after --update
      1  at least one model regressed (worse)
      2  the gate could not run: bad option, missing or malformed baseline (e.g. a
         non-finite AUC, a duplicated row), unwritable baseline (--update), or a crash
         (never 1)
      3  incomparable (and no regression): missing runs (fewer finished seeds than the
         baseline), a non-finite test AUC, other config, dataset or protocol

    \b
    Examples:
      ctrbench check --baseline results/reference/ci-synthetic.csv --results .cache/ci-results
      ctrbench check --baseline results/reference/ci-synthetic.csv --results .cache/ci-results \\
        --update
    """
    root = results_dir if results_dir is not None else default_results_root()
    try:
        code = _check(baseline, root, list(datasets) or None, update, tolerance, alpha)
    except click.exceptions.Exit:
        raise
    except (click.ClickException, CtrbenchError) as exc:
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(2) from None
    except Exception:  # a bug: keep its traceback, but never exit 1 (= "regression")
        click.echo(traceback.format_exc(), err=True)
        click.echo("Error: ctrbench check crashed (a bug; see the traceback above): exit 2",
                   err=True)
        raise click.exceptions.Exit(2) from None
    raise click.exceptions.Exit(code)


def _check(baseline: Path, root: Path, datasets: list[str] | None, update: bool,
           tolerance: float, alpha: float) -> int:
    from tabulate import tabulate

    from ctrbench.report.build import num, pvalue
    from ctrbench.report.check import (
        check_results,
        exit_code,
        kept_rows,
        power_lines,
        read_reference,
        update_reference,
    )

    if update:
        frame = update_reference(baseline, root, datasets=datasets)
        kept = kept_rows(baseline, datasets)
        click.echo(f"wrote {baseline}: {len(frame)} row(s) from {root}"
                   + (f"; kept its {kept} row(s) of other datasets" if kept else ""))
        for line in power_lines(frame, tolerance=tolerance, alpha=alpha):
            click.echo(f"power: {line}")
        return 0
    reference = read_reference(baseline)
    outcome = check_results(reference, root, tolerance=tolerance, alpha=alpha,
                            datasets=datasets)
    rows = outcome.rows
    shown = [[r.dataset, r.model, r.verdict.upper() if r.verdict == "worse" else r.verdict,
              f"{num(r.ref_auc)} ({r.ref_seeds})", f"{num(r.cur_auc)} ({r.cur_seeds})",
              num(r.delta, signed=True), r.test or "–", pvalue(r.p_worse), num(r.detectable),
              r.note] for r in rows]
    click.echo(tabulate(shown, headers=["dataset", "model", "verdict", "ref AUC (n)",
                                        "AUC (n)", "Δ", "test", "p worse", "detectable drop",
                                        "note"], disable_numparse=True))
    for r in rows:
        if r.power_line:
            click.echo(f"power: {r.power_line}")
    for path, error in outcome.unreadable:
        click.echo(f"unreadable record (not judged): {path}: {error}")
    code = exit_code(rows)
    summary = {0: "ok: no regression", 1: "REGRESSION", 3: "incomparable results"}[code]
    click.echo(summary, err=True)
    return code
