"""``ctrbench prepare NAME [--from DIR [--replace]] [--no-strict-hash] [--strict] [--force]``:
build a store."""

from __future__ import annotations

from pathlib import Path

import click
from tabulate import tabulate


def _report_lines(reports: list[dict]) -> list[str]:
    lines = []
    for r in reports:
        name = f"{r['file']} ({r['format']})" if r.get("format") else r["file"]
        if not r.get("bad"):
            lines.append(f"  {name}: {r['lines']:,} lines, none malformed")
            continue
        where = ", ".join(f"{n} ({why})" for n, why in r.get("first_bad", []))
        lines.append(f"  {name}: {r['lines']:,} lines, {r['bad']:,} malformed and skipped "
                     f"(first at lines {where})")
    return lines


@click.command(name="prepare")
@click.argument("name")
@click.option("--from", "from_dir", type=click.Path(path_type=Path), default=None,
              help="Offline mirror: a directory holding the raw files by name.")
@click.option("--replace", is_flag=True, default=False,
              help="Fetch the raw files again (from --from DIR when given) and replace the "
                   "cached copies (as `ctrbench download --replace`).")
@click.option("--no-strict-hash", "lenient", is_flag=True, default=False,
              help="Keep a raw file that fails its checksum (as `ctrbench download "
                   "--no-strict-hash`): reported as unverified, its sha256 recorded as accepted.")
@click.option("--strict", is_flag=True, default=False,
              help="Fail on the first malformed raw line instead of skipping and counting it "
                   "(an existing store built with skipped lines fails the same way).")
@click.option("--force", is_flag=True, default=False,
              help="Rebuild even if a finished store with the same key exists.")
def prepare(name: str, from_dir: Path | None, replace: bool, lenient: bool, strict: bool,
            force: bool) -> None:
    """Read a dataset's raw files, build its protocol and write the prepared store.

    The store is keyed by a hash of the resolved card, the raw files' sha256 and the builder
    version: an existing store with the same key is reused, a changed parameter builds a new one.
    Prints the store path, rows and positive rate per split, malformed-line counts, elapsed time.

    \b
    Examples:
      ctrbench prepare synthetic
      ctrbench prepare digital-music --from /data/amazon2014
      ctrbench prepare electronics --force
    """
    from ctrbench.data.prepare import prepare as run_prepare
    from ctrbench.data.store import SPLITS

    result = run_prepare(name, force=force, strict=strict, from_dir=from_dir,
                         strict_hash=not lenient, replace=replace)
    meta = result.data.meta
    status = "reused existing store" if result.reused else "built"
    click.echo(f"{name} ({meta.get('protocol')}): {status}")
    click.echo(f"store: {result.data.path}")
    rows = [[s, f"{meta['splits'][s]['rows']:,}", f"{meta['splits'][s]['positive_rate']:.3f}"]
            for s in SPLITS]
    click.echo(tabulate(rows, headers=["split", "rows", "positive rate"],
                        colalign=("left", "right", "right"), disable_numparse=True))
    counts = meta.get("counts", {})
    if counts:
        click.echo(", ".join(f"{k} {counts[k]:,}" for k in
                             ("users", "items", "categories", "interactions") if k in counts))
    cleaning = meta.get("cleaning", {})
    if cleaning.get("repeated_user_item_dropped"):
        click.echo(f"{cleaning['repeated_user_item_dropped']:,} repeated (user, item) events "
                   "dropped (first occurrence kept)")
    for problem in meta.get("expected_mismatches", []) if result.reused else []:
        click.echo(f"warning: differs from the card's [expected]: {problem}")  # a build said them
    click.echo("raw files:")
    for line in _report_lines(meta.get("read_reports", [])) or ["  (generated, none read)"]:
        click.echo(line)
    built_in = meta.get("prepare_seconds")
    suffix = f" (built in {built_in:.1f} s)" if result.reused and built_in is not None else ""
    click.echo(f"elapsed: {result.seconds:.1f} s{suffix}")
