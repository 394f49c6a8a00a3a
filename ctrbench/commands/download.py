"""``ctrbench download NAME [--from DIR]``: fetch and verify a dataset's raw files."""

from __future__ import annotations

from pathlib import Path

import click
from tabulate import tabulate


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _status(status: str, pinned: bool) -> str:
    if pinned:
        return f"{status}, verified"
    if status == "local":
        return "local (no checksum in the card)"
    return f"{status} (card pins no checksum; sha256 recorded)"


@click.command(name="download")
@click.argument("name")
@click.option("--from", "from_dir", type=click.Path(path_type=Path), default=None,
              help="Offline mirror: a directory holding the raw files by name (copied and "
                   "verified instead of downloading).")
@click.option("--no-strict-hash", "lenient", is_flag=True, default=False,
              help="Warn about a checksum mismatch instead of failing (the file is kept and its "
                   "sha256 recorded). Use only for a mirror you trust.")
def download(name: str, from_dir: Path | None, lenient: bool) -> None:
    """Download a dataset's raw files into the cache and verify their checksums.

    Files already cached and verified are not fetched again. Prints one row per raw file:
    role, file, size, sha256 and how it was obtained (cached, downloaded, copied, local).

    \b
    Examples:
      ctrbench download movielens-100k
      ctrbench download digital-music --from /data/amazon2014
    """
    from ctrbench.cards import load_dataset_card
    from ctrbench.data.download import fetch_report

    card = load_dataset_card(name)
    if not card.sources:
        click.echo(f"{name}: no raw files to download (the {card.reader!r} reader generates "
                   "its data locally)")
        return
    fetched = fetch_report(card, from_dir=from_dir, strict_hash=not lenient)
    rows = [[f.role, f.file, _human_size(f.size), f.sha256, _status(f.status, f.pinned)]
            for f in fetched]
    click.echo(tabulate(rows, headers=["role", "file", "size", "sha256", "status"]))
    for folder in sorted({str(f.path.parent) for f in fetched if f.status != "local"}):
        click.echo(f"\nraw files in {folder}")
