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


def _status(status: str, check: str) -> str:
    """How the file was obtained, then what was verified ("verified" only when it was)."""
    return f"{status}, {check}" if check else status


@click.command(name="download")
@click.argument("name")
@click.option("--from", "from_dir", type=click.Path(path_type=Path), default=None,
              help="Offline mirror: a directory holding the raw files by name, directly or one "
                   "level down (copied and verified instead of downloading). An archive with "
                   "listed members (MovieLens) may be given as its extracted folder.")
@click.option("--no-strict-hash", "lenient", is_flag=True, default=False,
              help="Keep a file that fails its checksum: it is reported as unverified, its "
                   "sha256 is recorded as accepted, and later commands keep using it. Use only "
                   "for a file you trust.")
@click.option("--replace", is_flag=True, default=False,
              help="Fetch the files again (from --from DIR when given) and replace the cached "
                   "copies; for a card that pins no checksum the new copy's sha256 becomes the "
                   "reference later copies must match.")
def download(name: str, from_dir: Path | None, lenient: bool, replace: bool) -> None:
    """Download a dataset's raw files into the cache and verify their checksums.

    Files already cached and verified are not fetched again. Prints one row per raw file:
    role, file, size, sha256, how it was obtained (cached, downloaded, copied, local) and what
    was verified (sha256/md5, line counts, or "unverified" and why).

    \b
    Examples:
      ctrbench download movielens-100k
      ctrbench download movielens-100k --from ~/Downloads   # holds ml-100k/ or ml-100k.zip
      ctrbench download digital-music --from /data/amazon2014
    """
    from ctrbench.cards import load_dataset_card
    from ctrbench.data.download import fetch_report

    card = load_dataset_card(name)
    if not card.sources:
        click.echo(f"{name}: no raw files to download (the {card.reader!r} reader generates "
                   "its data locally)")
        return
    fetched = fetch_report(card, from_dir=from_dir, strict_hash=not lenient, replace=replace)
    rows = [[f.role, f.file, _human_size(f.size), f.sha256, _status(f.status, f.check)]
            for f in fetched]
    click.echo(tabulate(rows, headers=["role", "file", "size", "sha256", "status"]))
    for folder in sorted({str(f.path.parent) for f in fetched
                          if not f.status.startswith("local")}):
        click.echo(f"\nraw files in {folder}")
