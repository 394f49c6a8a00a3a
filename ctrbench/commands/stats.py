"""``ctrbench stats NAME`` (dataset statistics) and ``ctrbench generate NAME`` (synthetic raw)."""

from __future__ import annotations

import json
from pathlib import Path

import click

AUDIT_FAILED_EXIT = 3


def _result(row) -> str:
    """The audit table's verdict for one row."""
    if not row.passed:
        return "LEAK"
    return "ok" if row.judged else "too small"


def _audit_table(rows, tablefmt: str) -> str:
    from tabulate import tabulate

    def share(value: float) -> str:
        return "-" if value != value else f"{value:.4f}"

    body = [[r.check, r.split, share(r.positives) if r.check.startswith("candidate")
             else f"{int(r.positives):,}", share(r.negatives), f"{r.rows:,}",
             _result(r), r.detail] for r in rows]
    return tabulate(body, headers=["check", "split", "positives (share / rows differing)",
                                   "negatives", "rows", "result", "detail"],
                    tablefmt=tablefmt, disable_numparse=True)


@click.command(name="stats")
@click.argument("name")
@click.option("--from", "from_dir", type=click.Path(path_type=Path), default=None,
              help="Offline mirror: a directory holding the raw files by name.")
@click.option("--format", "tablefmt", default="simple", show_default=True,
              type=click.Choice(["simple", "github", "plain"]), help="Table style.")
@click.option("--audit", is_flag=True, default=False,
              help="Also run the leakage audit (positives vs negatives on every derived "
                   f"feature that could carry the label); exit {AUDIT_FAILED_EXIT} on a leak.")
def stats(name: str, from_dir: Path | None, tablefmt: str, audit: bool) -> None:
    """Print a dataset's statistics and warnings (preparing it first when needed).

    Sizes, rows and positive rate per split, history lengths, the share of candidates absent
    from the history (MIAN Fig. 3a), of users inactive > 30 days (Fig. 3b), and on synthetic
    data the oracle's AUC; the card's [expected] values are shown in brackets. Then warnings
    where the data cannot support the models (one category, tied timestamps, very short
    histories, repeated events dropped, odd times). With --audit, the leakage audit: exit
    status 0 when no check finds a leak (checks on too few samples to judge are said so),
    3 when one finds a leak.

    \b
    Examples:
      ctrbench stats synthetic
      ctrbench stats synthetic --audit
      ctrbench stats electronics --from /data/amazon2014 --format github
    """
    from ctrbench.cards import load_dataset_card
    from ctrbench.data.describe import describe, format_stats
    from ctrbench.data.prepare import prepare_dataset
    from ctrbench.data.sanity import sanity_warnings

    card = load_dataset_card(name)
    data = prepare_dataset(card, from_dir=from_dir)
    click.echo(format_stats(describe(data, card), tablefmt=tablefmt))
    cleaning = data.meta.get("cleaning")
    if cleaning is not None:
        click.echo(f"\ncleaning: {cleaning.get('repeated_user_item_dropped', 0):,} repeated "
                   f"(user, item) events dropped (first occurrence kept), "
                   f"{cleaning.get('negative_time', 0):,} before 1970, "
                   f"{cleaning.get('future_time', 0):,} in the future")
    warnings = sanity_warnings(data)
    if warnings:
        click.echo("")
    for line in warnings:
        click.echo(f"warning: {line}")
    if not audit:
        return
    from ctrbench.data.audit import audit_store

    rows = audit_store(data)
    click.echo("\nleakage audit (see ctrbench/data/audit.py for each check)")
    click.echo(_audit_table(rows, tablefmt))
    failed = sorted({r.check for r in rows if not r.passed})
    if failed:
        click.echo(f"audit: LEAK found by {', '.join(failed)}", err=True)
        raise SystemExit(AUDIT_FAILED_EXIT)
    unjudged = sum(not r.judged for r in rows)
    click.echo("audit: no leak found" + (
        f", but {unjudged} of {len(rows)} checks were too small to judge (result "
        '"too small" above: too few samples to flag even a total leak)' if unjudged else ""))


@click.command(name="generate")
@click.argument("name", default="synthetic")
@click.option("--scale", type=click.Choice(["default", "electronics", "books"]), default=None,
              help="Size preset (default: the card's). electronics = 1.69M reviews, 498k meta "
                   "lines; books = 8.9M reviews, 2.37M meta lines.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Generator seed, >= 0 (default: the card's).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="New directory to write the raw files into (must not exist).")
def generate(name: str, scale: str | None, seed: int | None, out_dir: Path) -> None:
    """Write a synthetic dataset's raw files (Amazon 2014 formats, users CSV, oracle).

    NAME is a dataset card whose reader is `synthetic` (default: synthetic); its reader_params
    define the world, --scale and --seed override them. Used to benchmark preparation from raw.

    \b
    Examples:
      ctrbench generate synthetic --out /tmp/synth
      ctrbench generate synthetic --scale electronics --out /data/synthetic-electronics
    """
    from ctrbench.cards import load_dataset_card
    from ctrbench.data.store import ensure_directory
    from ctrbench.data.synthetic import PARAMS_FILE, world_params
    from ctrbench.data.synthetic import generate as generate_world
    from ctrbench.data.synthetic.writer import refuse_existing
    from ctrbench.errors import CardError
    from ctrbench.progress import progress

    refuse_existing(out_dir)  # before any progress line
    card = load_dataset_card(name)
    if card.reader != "synthetic":
        raise CardError(f"dataset {name!r} is read from downloaded files (reader "
                        f"{card.reader!r}); only synthetic datasets can be generated")
    params = dict(card.reader_params)
    if scale is not None:  # a preset replaces the card's size knobs, other knobs stay
        params = {k: v for k, v in params.items() if k in ("seed", "category_rule",
                                                           "generator_version")}
        params["scale"] = scale
    if seed is not None:
        params["seed"] = seed
    world = world_params(params, f"dataset card {name!r} [reader_params]")
    ensure_directory(out_dir.parent, "folder")  # a file in its way is said before any progress
    with progress(f"generating {name}", total=None, unit="lines") as bar:
        done = {"reviews": 0, "meta": 0}

        def report(stage: str, count: int, total: int) -> None:
            bar.update(count - done[stage], postfix=stage)
            done[stage] = count

        generate_world(world, out_dir, on_progress=report)
    written = json.loads((out_dir / PARAMS_FILE).read_text())
    click.echo(f"wrote {written['reviews']:,} reviews of {written['users']:,} users and "
               f"{written['meta']:,} meta lines to {out_dir}")
