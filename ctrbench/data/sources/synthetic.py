"""The ``synthetic`` reader: generate raw Amazon-format files, then read them like real ones.

The card's ``reader_params`` (see :class:`ctrbench.data.synthetic.WorldParams`, plus
``scale`` and ``category_rule``) define a world. Its raw files are generated once into
``<cache>/raw/<card name>/<params hash>/`` (a temporary directory renamed when complete) and then
parsed by the real Amazon reader, so preparing synthetic data exercises the same code as
preparing Electronics or Books. The users table (occupation, age, gender) and the exact oracle
are attached to the canonical tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ctrbench.cards import DatasetCard
from ctrbench.data.canonical import CanonicalTables, ReadReport
from ctrbench.data.sources import READERS
from ctrbench.data.sources.amazon import read_amazon
from ctrbench.data.synthetic import (
    META_FILE,
    PARAMS_FILE,
    REVIEWS_FILE,
    USERS_FILE,
    SyntheticOracle,
    WorldParams,
    generate,
    world_params,
)
from ctrbench.errors import DataError
from ctrbench.paths import raw_dir
from ctrbench.progress import progress

DEFAULT_CATEGORY_RULE = "last_of_last"  # the generator puts the true category last of last


def world_dir(card_name: str, params: WorldParams) -> Path:
    """Where a card's generated raw files live (keyed by the parameters' hash)."""
    return raw_dir(card_name) / params.key()


def ensure_generated(directory: Path, params: WorldParams) -> Path:
    """Generate the raw files into ``directory`` unless a finished copy is already there."""
    if (directory / PARAMS_FILE).is_file():
        return directory
    if directory.exists():  # cannot happen with the atomic rename; a hand-made directory
        raise DataError(f"{directory} exists but is not a finished synthetic world",
                        hint="delete it; it will be generated again")
    with progress("generating synthetic data", total=None, unit="lines") as bar:
        seen = {"reviews": 0, "meta": 0}

        def report(stage: str, done: int, total: int) -> None:
            bar.update(done - seen[stage], postfix=stage)
            seen[stage] = done

        try:
            generate(params, directory, on_progress=report)
        except (OSError, DataError):
            if not (directory / PARAMS_FILE).is_file():  # unless another process finished first
                raise
    return directory


def read_users(path: Path) -> pd.DataFrame:
    """The generated users CSV as a canonical users table (``user`` + demographics)."""
    try:
        users = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read the synthetic users table {path}: {exc}") from None
    if "reviewerID" not in users.columns:
        raise DataError(f"{path}: no reviewerID column")
    return users.rename(columns={"reviewerID": "user"})


def read_world(directory: Path, *, category_rule: str = DEFAULT_CATEGORY_RULE,
               strict: bool = False) -> CanonicalTables:
    """Parse a generated directory: reviews + meta via the Amazon reader, users, oracle."""
    tables = read_amazon(directory / REVIEWS_FILE, directory / META_FILE,
                         category_rule=category_rule, strict=strict)
    tables.users = read_users(directory / USERS_FILE)
    tables.reports.append(ReadReport(file=USERS_FILE, lines=len(tables.users)))
    tables.oracle = SyntheticOracle(directory)
    return tables


@READERS.register("synthetic")
def read(card: DatasetCard, files: Mapping[str, Path], *, strict: bool = False
         ) -> CanonicalTables:
    """The registered reader: generate (if needed) then read. ``files`` is not used."""
    from ctrbench.data.raw_local import raw_lock

    where = f"dataset card {card.name!r} [reader_params]"
    params = world_params(card.reader_params, where)
    with raw_lock(raw_dir(card.name)):  # re-entrant: prepare already holds it
        directory = ensure_generated(world_dir(card.name, params), params)
    rule = card.reader_params.get("category_rule", DEFAULT_CATEGORY_RULE)
    return read_world(directory, category_rule=rule, strict=strict)
