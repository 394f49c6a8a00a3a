"""``prepare``: dataset card -> verified raw files -> canonical tables -> samples -> store.

A store lives at ``paths.prepared_root()/<card-name>-<key>`` where ``key`` hashes everything that
produced it: the resolved card (sources with their pinned checksums, reader, protocol and its
parameters, fields), the builder's :data:`~ctrbench.data.build.DATA_CODE_VERSION` and the sha256
of the raw files actually used. A finished store with that key is reused (unless ``force``); any
changed parameter, raw file or builder version gives a new key, so stale data is never reused.
Stores are written under a temporary name and renamed when complete (``store.write_store``),
one process per card at a time (:func:`build_lock`); a temporary directory whose writer was
killed is removed by the next ``prepare`` (others once they are :data:`STALE_SECONDS` old). A
damaged store is refused with its file named (``store.open_store``); ``--force`` rebuilds it.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ctrbench import __version__, paths
from ctrbench.cards import DatasetCard, config_hash, load_dataset_card
from ctrbench.data.build import DATA_CODE_VERSION, build_samples, check_protocol
from ctrbench.data.canonical import ReadReport, cleaning_warnings
from ctrbench.data.sources import read_source
from ctrbench.data.store import (
    DamagedStoreError,
    PreparedData,
    abandoned,
    damaged,
    ensure_directory,
    open_store,
    recover_swap,
    write_store,
)
from ctrbench.errors import DataError
from ctrbench.progress import message

STALE_SECONDS = 3600.0
_BUILD_LOCKS: dict[str, object] = {}  # lock path -> FileLock


@dataclass
class PrepareResult:
    """What ``prepare`` did: the store, whether it was reused, and how long it took."""

    data: PreparedData
    reused: bool
    seconds: float


def _card(name_or_card: str | DatasetCard) -> DatasetCard:
    return load_dataset_card(name_or_card) if isinstance(name_or_card, str) else name_or_card


def card_hash(card: DatasetCard) -> str:
    return config_hash(card.resolved())


def store_key(card: DatasetCard, raw_sha: dict[str, str]) -> str:
    """The store's key: resolved card + builder version + raw files' sha256."""
    return config_hash({"card": card.resolved(), "code_version": DATA_CODE_VERSION,
                        "raw_sha256": dict(sorted(raw_sha.items()))})


def store_path(card: DatasetCard, raw_sha: dict[str, str]) -> Path:
    return paths.prepared_root() / f"{card.name}-{store_key(card, raw_sha)}"


def _open_finished(path: Path, *, damaged_ok: bool = True) -> PreparedData | None:
    """The finished store at ``path``, else None (none there, or an incompatible format: it is
    rebuilt). A damaged store raises :class:`DamagedStoreError` unless ``damaged_ok``."""
    if not (path / "meta.json").is_file():
        return None
    try:
        return open_store(path)
    except DamagedStoreError:
        if damaged_ok:
            return None
        raise
    except DataError:  # written by an incompatible version: rebuild
        return None


def clean_stale_temp(name: str, older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove temporary store directories of card ``name`` left by interrupted runs: at once
    when their writer is known dead (:func:`store.abandoned`), else once ``older_than`` old."""
    root = paths.prepared_root()
    removed = []
    if not root.is_dir():
        return removed
    now = time.time()
    own = re.compile(rf"\.{re.escape(name)}-[0-9a-f]{{16}}\.tmp-.*")  # not card <name>-dien's
    for tmp in root.glob(f".{name}-*.tmp-*"):
        if not own.fullmatch(tmp.name):
            continue
        try:
            if abandoned(tmp) or now - tmp.stat().st_mtime >= older_than:
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
        except FileNotFoundError:  # another process removed it first
            continue
    return removed


def find_prepared(name_or_card: str | DatasetCard) -> PreparedData | None:
    """The newest finished store built from this card by this builder version, if any.

    Matches on the card hash and the builder version without touching the raw files; when the
    raw files are not pinned by checksum, ``prepare_dataset`` is the exact lookup.
    """
    card = _card(name_or_card)
    root = paths.prepared_root()
    if not root.is_dir():
        return None
    wanted = card_hash(card)
    found = []
    for path in root.glob(f"{card.name}-*"):
        data = _open_finished(path)
        if (data is not None and data.meta.get("card_hash") == wanted
                and data.meta.get("code_version") == DATA_CODE_VERSION):
            found.append((path.stat().st_mtime, str(path), data))
    return max(found)[2] if found else None


EXPECTED_KEYS = {"users": ("counts", "users"), "items": ("counts", "items"),
                 "categories": ("counts", "categories"),
                 "interactions": ("counts", "interactions"), "rows_train": ("rows", "train"),
                 "rows_valid": ("rows", "valid"), "rows_test": ("rows", "test")}


def check_expected(card: DatasetCard, meta: dict) -> list[str]:
    """Differences between the card's ``[expected]`` statistics and the built data."""
    problems = []
    for key, (group, name) in EXPECTED_KEYS.items():
        want = card.expected.get(key)
        got = meta.get(group, {}).get(name)
        if want is not None and got is not None and int(want) != int(got):
            problems.append(f"{key}: expected {int(want):,}, got {int(got):,}")
    return problems


@contextmanager
def build_lock(name: str) -> Iterator[None]:
    """Hold ``<cache>/locks/prepare-<name>.lock`` (an OS lock, gone with its process): one
    process at a time looks for, builds or replaces the stores of card ``name``; another waits
    (saying so), then reuses what the first built."""
    from filelock import FileLock

    from ctrbench.data.raw_local import acquire_announced

    folder = paths.cache_root() / "locks"
    ensure_directory(folder, "lock folder")
    key = str(folder / f"prepare-{name}.lock")
    lock = _BUILD_LOCKS.setdefault(key, FileLock(key))  # re-entrant within this process
    acquire_announced(lock, paths.prepared_root(), key)
    try:
        yield
    finally:
        lock.release()


def _require_own_identity(data: PreparedData, card: DatasetCard) -> None:
    """Refuse a store whose meta.json was edited to name another dataset, card or key (keys an
    older store lacks are not asked for)."""
    expected = {"dataset": card.name, "card_hash": card_hash(card), "store_key": data.path.name}
    for key, want in expected.items():
        if key in data.meta and data.meta[key] != want:
            raise damaged(data.path, {}, "meta.json",
                          f"{key} is {data.meta.get(key)!r}, expected {want!r}")


def _reusable(path: Path, strict: bool, card: DatasetCard) -> PreparedData | None:
    """The finished store at ``path`` if it may be reused (a damaged one raises, as does one
    whose meta.json no longer names ``card``: its identity would go into every run record)."""
    existing = _open_finished(path, damaged_ok=False)
    if existing is not None:
        _require_own_identity(existing, card)
    if existing is not None and "cleaning" not in existing.meta:
        # built before repeated (user, item) events were dropped: rebuild under the
        # same key; data without repeats (e.g. synthetic) comes out byte-identical
        message(f"{path.name} was built before repeated events were dropped; rebuilding it")
        return None
    if existing is not None and strict:
        revalidate_strict(existing)
    return existing


def prepare(name_or_card: str | DatasetCard, *, force: bool = False, strict: bool = False,
            from_dir: Path | None = None, strict_hash: bool = True,
            replace: bool = False) -> PrepareResult:
    """Prepare (or reuse) the store of a dataset card; see the module docstring.

    Holds the card's :func:`build_lock` throughout; the raw files are fetched and read under
    the card's raw-cache lock (``download.locked_raw``), which also removes what a killed run
    left there. The card's protocol is checked before any raw file is read. ``strict_hash``
    and ``replace`` go to ``download.fetch_sources`` (``--no-strict-hash``, ``--replace``):
    the raw files are fetched and verified once.
    """
    from ctrbench.data.checksum_ledger import raw_sha256
    from ctrbench.data.download import fetch_sources, locked_raw

    start = time.perf_counter()
    card = _card(name_or_card)
    check_protocol(card)
    ensure_directory(paths.prepared_root(), "prepared-data folder")  # before, not after, a build
    with build_lock(card.name):
        with locked_raw(card):
            files = fetch_sources(card, from_dir=Path(from_dir) if from_dir is not None else None,
                                  strict_hash=strict_hash, replace=replace)
            raw_sha = raw_sha256(files)
            path = store_path(card, raw_sha)
            recover_swap(path)  # a forced swap killed between its renames: before the clean-up
            clean_stale_temp(card.name)
            existing = None if force else _reusable(path, strict, card)
            if existing is not None:
                return PrepareResult(existing, True, time.perf_counter() - start)
            replace = path.exists() or path.is_symlink()  # else a store found later is kept
            message(f"preparing {card.name}: reading "
                    f"{', '.join(sorted(files)) or 'generated data'}")
            tables = read_source(card, files, strict=strict)
        data = _build_store(card, tables, path, raw_sha, replace, start)
    return PrepareResult(data, False, time.perf_counter() - start)


def _build_store(card: DatasetCard, tables, path: Path, raw_sha: dict[str, str],
                 replace: bool, start: float) -> PreparedData:
    """Build the card's samples from ``tables`` and write them at ``path`` (warnings said;
    the read summaries only if the build fails: its callers say them once it is done)."""
    for line in cleaning_warnings(tables.cleaning):
        message(f"warning: {card.name}: {line}")
    try:
        built = build_samples(tables, card)
    except DataError:
        _say_reads(tables.reports)  # what was read may explain it
        raise
    meta = {**built.meta, "card_hash": card_hash(card), "store_key": path.name,
            "cleaning": dict(tables.cleaning),
            "raw_sha256": raw_sha, "ctrbench_version": __version__,
            "card": card.resolved(), "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime())}
    for split, columns in built.splits.items():
        if not len(columns["label"]):
            message(f"warning: {card.name}: the {split} split is empty, and runs need rows in "
                    "every split (too few users, or too few events per user?)")
    meta["expected_mismatches"] = check_expected(card, meta)
    for problem in meta["expected_mismatches"]:
        message(f"warning: {card.name}: differs from the card's [expected]: {problem}")
    meta["prepare_seconds"] = round(time.perf_counter() - start, 3)
    return write_store(path, built.schema, built.splits, meta, replace=replace)


def _say_reads(reports) -> None:
    """One line per raw file read: its lines and malformed lines."""
    for report in reports:
        message(report.summary())


def revalidate_strict(data: PreparedData) -> None:
    """``--strict`` on a reused store: fail as a strict read would have.

    The store's key covers the raw files' sha256 and the reader's code, so a strict read of the
    same files meets exactly the malformed lines its lenient build recorded: the first one is
    what ``--strict`` raises on. (Strictness is not in the key, so the default key is unchanged.)
    """
    for report in data.meta.get("read_reports", []):
        if report.get("bad"):
            line, reason = report["first_bad"][0]
            raise DataError(f"{report['file']}: line {line}: {reason}",
                            hint=f"--strict: the existing store {data.path.name} was built "
                                 f"skipping {report['bad']:,} malformed line(s) of this file; "
                                 "drop --strict to use it")


def prepare_dataset(name_or_card: str | DatasetCard, *, force: bool = False,
                    strict: bool = False, from_dir: Path | None = None) -> PreparedData:
    """The prepared store of a dataset card, built if needed (see :func:`prepare`); a build
    says what it read (``ctrbench prepare``, which calls :func:`prepare`, says it in its own
    summary)."""
    result = prepare(name_or_card, force=force, strict=strict, from_dir=from_dir)
    if not result.reused:
        _say_reads(ReadReport(**r) for r in result.data.meta.get("read_reports", []))
    return result.data
