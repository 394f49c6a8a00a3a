"""``ctrbench stats NAME`` (dataset statistics) and ``ctrbench generate NAME`` (synthetic raw)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="stats")
@click.argument("name")
@click.option("--from", "from_dir", type=click.Path(path_type=Path), default=None,
              help="Offline mirror: a directory holding the raw files by name.")
@click.option("--format", "tablefmt", default="simple", show_default=True,
              type=click.Choice(["simple", "github", "plain"]), help="Table style.")
def stats(name: str, from_dir: Path | None, tablefmt: str) -> None:
    """Print a dataset's statistics (preparing it first when needed).

    Sizes, rows and positive rate per split, history lengths, the share of candidates absent
    from the history (MIAN Fig. 3a), of users inactive > 30 days (Fig. 3b), and on synthetic
    data the oracle's AUC; the card's [expected] values are shown in brackets.

    \b
    Examples:
      ctrbench stats synthetic
      ctrbench stats electronics --from /data/amazon2014 --format github
    """
    from ctrbench.cards import load_dataset_card
    from ctrbench.data.describe import describe, format_stats
    from ctrbench.data.prepare import prepare_dataset

    card = load_dataset_card(name)
    data = prepare_dataset(card, from_dir=from_dir)
    click.echo(format_stats(describe(data, card), tablefmt=tablefmt))


@click.command(name="generate")
@click.argument("name", default="synthetic")
@click.option("--scale", type=click.Choice(["default", "electronics", "books"]), default=None,
              help="Size preset (default: the card's). electronics = 1.69M reviews, 498k meta "
                   "lines; books = 8.9M reviews, 2.37M meta lines.")
@click.option("--seed", type=int, default=None, help="Generator seed (default: the card's).")
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
    from ctrbench.data.synthetic import PARAMS_FILE, world_params
    from ctrbench.data.synthetic import generate as generate_world
    from ctrbench.errors import CardError
    from ctrbench.progress import progress

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
    with progress(f"generating {name}", total=None, unit="lines") as bar:
        done = {"reviews": 0, "meta": 0}

        def report(stage: str, count: int, total: int) -> None:
            bar.update(count - done[stage], postfix=stage)
            done[stage] = count

        generate_world(world, out_dir, on_progress=report)
    written = json.loads((out_dir / PARAMS_FILE).read_text())
    click.echo(f"wrote {written['reviews']:,} reviews of {written['users']:,} users and "
               f"{written['meta']:,} meta lines to {out_dir}")
