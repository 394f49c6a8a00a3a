"""Raw files of a dataset card: download (pooch), offline mirror copy, or local use, all verified.

Each card source is resolved in this order:

1. a *local* source (no ``url``/``mirrors``, ``file`` is an absolute path or a path relative to
   the card's directory that exists) is used in place;
2. ``from_dir`` (an offline mirror holding the files by their ``file`` names), when given, is
   always looked at: a copy identical to the cached one leaves the cache as it is; another copy
   replaces it if it verifies against the card's checksum, while for a card that pins none it
   must match the sha256 recorded when the first copy was seen (``replace=True``, ``--replace``,
   makes it the new reference); extracted folders are compared member by member;
3. without ``from_dir``, a file already in the raw cache (:func:`raw_cache_dir`:
   ``paths.raw_dir(card.name)``, or that of the card it extends when the sources are the same)
   whose checksum verifies (``replace=True`` fetches it again);
4. ``url``, then each of ``mirrors``, is downloaded through pooch.

Verification: sha256 when the card pins one, else md5; the size when given. A file is hashed once:
its digests are remembered in ``checksums.json`` beside it (keyed by name, size and mtime), so a
multi-GB file is not hashed again by the next ``download`` or ``prepare``. When a card pins no hash
(Books meta publishes none) the sha256 is computed on first download, logged and recorded there
(later fetches must match it), and the card's ``lines`` count is checked instead; a gzip or zip
file that cannot be read to its end (truncated, corrupt) is refused rather than recorded.
Nothing unverified is ever left under the final name: downloads (pooch, inside a temporary
folder ``.<file>.tmp-<hex>/``) and mirror copies (``.<file>.tmp-<hex>``) are verified under a
temporary name and renamed only then, so a refused copy never touches the cached one.

Files the user already has (:mod:`ctrbench.data.raw_local`): ``--from`` is searched one level
down, and an archive with ``members`` (MovieLens) may be given extracted (a folder holding the
members), copied to ``raw/<card>/<stem>/`` and checked by the members' published line counts
(``member_lines``), or used in place when the card's ``file`` names the folder.
``strict_hash=False`` (``--no-strict-hash``) keeps a file that fails verification and records
its sha256 as *accepted* in the ledger: it is reported as unverified and never deleted or
fetched again while its content is unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrbench import paths, progress
from ctrbench.cards import DatasetCard, SourceSpec, load_dataset_card
from ctrbench.data.checksum_ledger import (
    CHUNK,
    LEDGER_NAME,
    Digests,
    file_digests,
    ledger_entry,
    ledger_location,
    path_sha256,
    remember,
    write_ledger_entry,
)
from ctrbench.data.pooch_transport import download_file
from ctrbench.data.raw_local import (
    archive_members_sha256,
    archive_stem,
    clean_leftovers,
    copy_members,
    count_lines,
    describe_path,
    differing_members,
    find_in_mirror,
    from_hint,
    holds_members,
    members_sha256,
    mirror_dir,
    mirror_listing,
    mismatch_hint,
    raw_lock,
    verify_members,
)
from ctrbench.errors import ChecksumError, CtrbenchError, DataError

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class FetchedSource:
    """One verified raw file and how it was obtained."""

    role: str
    file: str
    path: Path
    size: int
    sha256: str
    status: str  # "cached" | "downloaded" | "copied" | "local"
    pinned: bool  # whether the card pins a checksum that was verified
    origin: str = ""  # the URL or mirror path it came from (empty when cached or local)
    check: str = ""  # what was verified, e.g. "verified", "unverified: accepted with ..."


# --------------------------------------------------------------------------- verification
def _expected_hash(src: SourceSpec) -> tuple[str, str] | None:
    """(algorithm, hex) the card pins for ``src``: sha256 preferred, else md5; None if neither."""
    if src.sha256:
        return "sha256", src.sha256.lower()
    if src.md5:
        return "md5", src.md5.lower()
    return None


def _check(src: SourceSpec, path: Path, entry: Mapping[str, Any], origin: str) -> None:
    """Raise ChecksumError if ``entry`` (the file's digests) contradicts the card or the ledger."""
    where = f"{src.file}" + (f" (from {origin})" if origin else "")
    expected = _expected_hash(src)
    if expected is not None:
        alg, want = expected
        got = str(entry[alg])
        if got != want:
            raise ChecksumError(
                f"checksum mismatch for {where}: expected {alg} {want}, actual {alg} {got}",
                hint=mismatch_hint(src),
            )
        if src.sha256 and src.md5 and str(entry["md5"]) != src.md5.lower():
            raise ChecksumError(f"checksum mismatch for {where}: expected md5 {src.md5}, "
                                f"actual md5 {entry['md5']} (sha256 matched: fix the card)")
    else:
        recorded = entry.get("recorded_sha256")
        if recorded and recorded != entry["sha256"]:
            raise ChecksumError(
                f"{where} changed since its sha256 was first recorded: expected sha256 "
                f"{recorded}, actual sha256 {entry['sha256']}",
                hint="the card pins no checksum; if the new file is the right one, run the "
                     "command again with --replace to make it the reference",
            )
    if src.size and int(entry["size"]) != src.size:
        raise ChecksumError(f"size mismatch for {where}: expected {src.size:,} bytes, "
                            f"actual {int(entry['size']):,} bytes")


def _read_through(src: SourceSpec, path: Path, where: str) -> dict[str, Any]:
    """For a file the card pins no hash for: read it to its end, the only check it gets.

    Counts the lines of a text or ``.gz`` file (the card's ``lines``, when given, must match)
    and tests a ``.zip``; returns ``{"lines": n}`` when counted. Raises ChecksumError for a
    truncated or corrupt file. ``path`` may be a temporary name: formats follow ``src.file``.
    """
    name = Path(src.file).name
    extra: dict[str, Any] = {}
    if name.endswith(".zip"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ChecksumError(f"{where} is truncated or not a valid zip file ({exc})") from None
        if bad is not None:
            raise ChecksumError(f"{where} is corrupt: its member {bad} fails its CRC check")
    elif src.lines or name.endswith(".gz"):
        progress.message(f"reading {name} through (the card pins no checksum) ...")
        try:
            extra["lines"] = count_lines(path, where, gz=name.endswith(".gz"))
        except ChecksumError as exc:
            raise ChecksumError(str(exc), hint="an interrupted transfer? give a complete "
                                               "copy; nothing was recorded") from None
    _check_line_count(src, extra.get("lines"))
    return extra


def _check_line_count(src: SourceSpec, lines: Any) -> None:
    if src.lines and lines is not None and int(lines) != src.lines:
        raise ChecksumError(f"line count mismatch for {src.file}: expected {src.lines:,} lines, "
                            f"actual {int(lines):,} lines")


ACCEPTED = "unverified: accepted with --no-strict-hash"


def _verify(src: SourceSpec, path: Path, entry: dict[str, Any], *, origin: str,
            strict_hash: bool, pin_first_seen: bool = True) -> tuple[dict[str, Any], str]:
    """Check ``entry`` against the card; pin the sha256 of an unpinned file on first sight.

    Returns the ledger entry and what was verified. A file whose sha256 the user accepted
    (``strict_hash=False``, now or before) passes as unverified. ``pin_first_seen=False`` for
    the user's own files used in place: they may change (the prepared-data key follows their
    sha256), so only what the card pins is enforced.
    """
    pinned = _expected_hash(src) is not None
    first_seen = pin_first_seen and not pinned and not entry.get("recorded_sha256")
    accepted = entry.get("accepted_sha256") == entry["sha256"]  # the user kept it as it is
    try:
        _check(src, path, entry, origin)
        if not (pinned or accepted) and (first_seen or src.lines) and entry.get("lines") is None:
            extra = _read_through(src, path, f"{src.file} ({path})")
            if extra:
                entry = remember(path, Digests(entry["sha256"], entry["md5"], entry["size"]),
                                  **extra)
        if not pinned:
            _check_line_count(src, entry.get("lines"))
    except ChecksumError as exc:
        if accepted:
            return entry, ACCEPTED
        if strict_hash:
            raise
        progress.message(f"warning: {exc.args[0]} (kept, unverified: --no-strict-hash)")
        entry = dict(entry, accepted_sha256=entry["sha256"], recorded_sha256=entry["sha256"])
        write_ledger_entry(path, entry)
        return entry, ACCEPTED
    if accepted and not pinned:  # its line count was not read again: still unverified
        return entry, ACCEPTED
    if first_seen:
        entry = dict(entry, recorded_sha256=entry["sha256"])
        write_ledger_entry(path, entry)
        log.info("%s: card pins no checksum; recorded sha256 %s", src.file, entry["sha256"])
        progress.message(f"{src.file}: no checksum in the card; recorded sha256 "
                         f"{entry['sha256']} in {ledger_location(path)[0]}")
    return entry, _check_text(src)


def _check_text(src: SourceSpec) -> str:
    expected = _expected_hash(src)
    if expected is not None:
        return f"{expected[0]} verified"
    if src.lines:
        return "line count verified (the card pins no checksum; sha256 recorded)"
    return "unverified: the card pins no checksum (sha256 recorded)"


# --------------------------------------------------------------------------- obtaining files
def raw_cache_dir(card: DatasetCard) -> Path:
    """Where ``card``'s downloads live: the raw dir of the furthest card it extends that has
    the same sources (``electronics-dien`` shares ``electronics``'s files), else its own."""
    owner = card.name
    for ancestor in card.extends_chain:
        try:
            if load_dataset_card(ancestor).sources != card.sources:
                break
        except CtrbenchError:  # an ancestor that no longer loads: keep the files apart
            break
        owner = ancestor
    return paths.raw_dir(owner)


def _local_candidate(card: DatasetCard, src: SourceSpec) -> Path:
    """Where a source without URL would be in place: absolute, or relative to the card's dir."""
    candidate = Path(src.file).expanduser()
    if not candidate.is_absolute():
        base = Path(card.path).parent if card.path else Path.cwd()
        candidate = base / candidate
    return candidate


def _local_path(card: DatasetCard, src: SourceSpec) -> Path | None:
    """The in-place path of a source without URL: absolute, or relative to the card's dir.

    A folder counts for an archive source (role ``archive``, or ``members`` listed): the
    MovieLens reader reads extracted folders.
    """
    if src.url or src.mirrors:
        return None
    candidate = _local_candidate(card, src)
    if candidate.is_dir() and (src.members or src.role == "archive"):
        return candidate
    return candidate if candidate.is_file() else None


def _temp_name(target: Path) -> Path:
    """A temporary name beside ``target`` that only ctrbench uses (see ``clean_leftovers``)."""
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")


def _copy_from_mirror(origin: Path, target: Path) -> tuple[Path, Digests]:
    """Copy ``origin`` to a temporary name beside ``target``, hashing as it goes.

    Returns the temporary path and its digests; the caller verifies and renames it.
    """
    tmp = _temp_name(target)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    try:
        with origin.open("rb") as fin, tmp.open("wb") as fout, progress.progress(
                f"copying {origin.name}", total=origin.stat().st_size, unit="B",
                interval=0.5) as bar:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot copy {origin} to {target.parent}: {exc}") from None
    except BaseException:  # Ctrl-C: leave no partial copy behind
        tmp.unlink(missing_ok=True)
        raise
    return tmp, Digests(sha.hexdigest(), md5.hexdigest(), size)


def _check_reference(src: SourceSpec, target: Path, sha256: str, origin: str,
                     again: str) -> None:
    """Refuse a new copy of a file the card pins no hash for whose sha256 is not the one
    recorded when its first copy was seen (the ledger keeps it even if the file was deleted)."""
    reference = (ledger_entry(target) or {}).get("recorded_sha256")
    if not reference or reference == sha256:
        return
    first = (f"the cached copy {target}" if target.is_file() else
             f"the copy first cached as {target} (deleted since; its sha256 is kept in "
             f"{ledger_location(target)[0]})")
    raise ChecksumError(
        f"{src.file}: the copy from {origin} (sha256 {sha256[:12]}...) differs from {first} "
        f"(sha256 {reference[:12]}...): it changed since its sha256 was first recorded; the "
        "card pins no checksum, so later copies must match the first",
        hint=f"if the new copy is the right one, make it the reference: `{again}` (or add "
             "--replace to this command); otherwise give the first copy")


def _install(card: DatasetCard, src: SourceSpec, tmp: Path, digests: Digests, target: Path,
             *, origin: str, strict_hash: bool, replace: bool, again: str
             ) -> tuple[dict[str, Any], str]:
    """Verify the fetched temporary copy ``tmp`` and only then rename it to ``target``.

    Returns the ledger entry written for ``target`` and what was verified. A copy that fails
    (strict) is removed and ``target`` is left as it was.
    """
    pinned = _expected_hash(src) is not None
    entry: dict[str, Any] = {"sha256": digests.sha256, "md5": digests.md5, "size": digests.size}
    try:
        try:
            if not pinned and not replace:
                _check_reference(src, target, digests.sha256, origin, again)
            _check(src, tmp, entry, origin)
            if not pinned:
                entry.update(_read_through(src, tmp, f"{src.file} (from {origin})"))
        except ChecksumError as exc:
            if strict_hash:
                raise
            progress.message(f"warning: {exc.args[0]} (kept, unverified: --no-strict-hash)")
            entry["accepted_sha256"] = digests.sha256
        previous = file_digests(target) if target.is_file() else None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if previous is not None and previous["sha256"] != digests.sha256:
        progress.message(f"{src.file}: replaced the cached copy (sha256 "
                         f"{str(previous['sha256'])[:12]}...) by the one from {origin}")
    stat = target.stat()
    entry.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    if not pinned or "accepted_sha256" in entry:
        old = (ledger_entry(target) or {}).get("recorded_sha256")
        entry["recorded_sha256"] = digests.sha256
        if not pinned and old != digests.sha256 and "accepted_sha256" not in entry:
            log.info("%s: card pins no checksum; recorded sha256 %s", src.file, digests.sha256)
            progress.message(f"{src.file}: no checksum in the card; recorded sha256 "
                             f"{digests.sha256} in {ledger_location(target)[0]}")
    write_ledger_entry(target, entry)
    return entry, ACCEPTED if "accepted_sha256" in entry else _check_text(src)


def _no_url_error(card: DatasetCard, src: SourceSpec, target: Path) -> DataError:
    """A source without URL that is neither in place nor cached: say where it was looked for."""
    candidate = _local_candidate(card, src)
    file = Path(src.file).expanduser()
    how = "absolute" if file.is_absolute() else (
        f"relative to the card {card.path}" if card.path else "relative to the current folder")
    fix = f"fix `file` in {card.path}, or " if card.path and file.parent != Path() else ""
    return DataError(
        f"{card.name}: {src.file} has no download URL and is not in {target.parent}; as a "
        f"local path ({how}) it is {os.path.normpath(candidate)}, which "
        f"{describe_path(candidate)}", hint=fix + from_hint(src))


def _fetch_remote(card: DatasetCard, src: SourceSpec, target: Path, *,
                  strict_hash: bool, replace: bool) -> FetchedSource:
    urls = [u for u in (src.url, *src.mirrors) if u]
    if not urls:
        raise _no_url_error(card, src, target)
    failures: list[str] = []
    checksum_failures: list[ChecksumError] = []
    for url in urls:
        progress.message(f"downloading {src.file} from {url}")
        folder = _temp_name(target)
        try:
            tmp, digests = download_file(src.file, url, folder,
                                         _expected_hash(src) if strict_hash else None)
            entry, check = _install(card, src, tmp, digests, target, origin=url,
                                    strict_hash=strict_hash, replace=replace,
                                    again=f"ctrbench download {card.name} --replace")
        except ChecksumError as exc:
            checksum_failures.append(exc)
            failures.append(f"{url}: checksum mismatch")
            continue
        except DataError as exc:
            failures.append(str(exc))
            continue
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return FetchedSource(src.role, src.file, target, int(entry["size"]), str(entry["sha256"]),
                             "downloaded", _expected_hash(src) is not None and check != ACCEPTED,
                             url, check)
    if checksum_failures and len(checksum_failures) == len(urls):
        raise checksum_failures[0]
    raise DataError(
        f"{card.name}: could not download {src.file}: " + "; ".join(failures),
        hint="check the network, or download it elsewhere and " + from_hint(src),
    )


def _fetch_from_mirror(card: DatasetCard, src: SourceSpec, origin: Path, target: Path, *,
                       from_dir: Path, strict_hash: bool, replace: bool) -> FetchedSource:
    """Copy a source from the offline mirror file ``origin``, verified before its final name."""
    tmp, digests = _copy_from_mirror(origin, target)
    entry, check = _install(card, src, tmp, digests, target, origin=str(origin),
                            strict_hash=strict_hash, replace=replace,
                            again=f"ctrbench download {card.name} --from {from_dir} --replace")
    return FetchedSource(src.role, src.file, target, int(entry["size"]), str(entry["sha256"]),
                         "copied", _expected_hash(src) is not None and check != ACCEPTED,
                         str(origin), check)


def _folder_source(src: SourceSpec, folder: Path, status: str, origin: str = ""
                   ) -> FetchedSource:
    """An extracted archive folder: members checked by line count; identity = folder sha256."""
    check = verify_members(src, folder)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return FetchedSource(src.role, src.file, folder, size, path_sha256(folder),
                         f"{status} (extracted folder)", False, origin, check)


def _cached_file(src: SourceSpec, target: Path, strict_hash: bool) -> FetchedSource | None:
    """The cached ``target`` if it verifies; else it is removed and None returned."""
    try:
        entry, check = _verify(src, target, file_digests(target), origin="",
                               strict_hash=strict_hash)
    except ChecksumError as exc:
        log.warning("cached %s fails verification (%s); fetching it again", target, exc)
        progress.message(f"cached {src.file} fails verification; fetching it again")
        target.unlink()
        return None
    return FetchedSource(src.role, src.file, target, int(entry["size"]), str(entry["sha256"]),
                         "cached", _expected_hash(src) is not None and check != ACCEPTED, "",
                         check)


def _file_sha256(path: Path) -> str:
    return str(file_digests(path)["sha256"])


def _folder_differs(src: SourceSpec, origin: Path, cached: Path, diff: list[str],
                    ours: Mapping[str, str] | None, theirs: Mapping[str, str],
                    again: str) -> ChecksumError:
    shas = ", ".join(f"{n} {theirs.get(n, 'missing')[:12]} vs {(ours or {}).get(n, '?')[:12]}"
                     for n in diff[:4])
    return ChecksumError(
        f"{origin}: the extracted {archive_stem(src)} differs from the cached {cached} "
        f"(sha256 given vs cached: {shas})",
        hint=f"if the given folder is the right one, make it the cached copy: `{again}` (or add "
             "--replace to this command); otherwise give the cached one's source")


def _fetch_folder(card: DatasetCard, src: SourceSpec, origin: Path, target: Path,
                  from_dir: Path, *, strict_hash: bool, replace: bool) -> FetchedSource:
    """An extracted archive folder given with ``--from``: compared member by member (sha256)
    with what the cache holds (the archive, or its extracted copy) before anything changes."""
    verify_members(src, origin)  # before copying: nothing unverified is cached
    extracted = target.with_name(archive_stem(src))
    theirs = members_sha256(src, origin, _file_sha256)
    again = f"ctrbench download {card.name} --from {from_dir} --replace"
    if not replace and target.is_file():
        ours = archive_members_sha256(src, target)
        diff = differing_members(ours, theirs)
        if diff:
            raise _folder_differs(src, origin, target, diff, ours, theirs, again)
        cached = _cached_file(src, target, strict_hash)
        if cached is not None:
            return cached
    if not replace and extracted.is_dir():
        ours = members_sha256(src, extracted, _file_sha256)
        diff = differing_members(ours, theirs)
        if not diff:
            return _folder_source(src, extracted, "cached")
        try:
            verify_members(src, extracted)
        except DataError:  # edited or incomplete since it was copied: replace it
            pass
        else:
            raise _folder_differs(src, origin, extracted, diff, ours, theirs, again)
    progress.message(f"copying the extracted {archive_stem(src)} from {origin}")
    fetched = _folder_source(src, copy_members(src, origin, extracted), "copied", str(origin))
    if target.is_file():  # replaced: the archive would be read before the folder
        progress.message(f"removed {target}: replaced by the extracted folder from {origin}")
        target.unlink()
    return fetched


def _fetch_one(card: DatasetCard, src: SourceSpec, from_dir: Path | None,
               strict_hash: bool, replace: bool = False) -> FetchedSource:
    pinned = _expected_hash(src) is not None
    local = _local_path(card, src)
    if local is not None and local.is_dir():
        return _folder_source(src, local, "local")
    if local is not None:
        entry, check = _verify(src, local, file_digests(local), origin="",
                               strict_hash=strict_hash, pin_first_seen=False)
        return FetchedSource(src.role, src.file, local, int(entry["size"]), str(entry["sha256"]),
                             "local", pinned and check != ACCEPTED, "", check)

    target = raw_cache_dir(card) / Path(src.file).name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the raw cache {target.parent}: {exc}") from None
    if from_dir is not None:  # always looked at, even when the cache holds a copy
        origin = find_in_mirror(src, from_dir)
        if origin is None:
            raise DataError(f"--from {from_dir}: {Path(src.file).name} is not there (nor one "
                            "level down)", hint=f"found: {mirror_listing(from_dir)}; "
                                                + from_hint(src))
        if origin.is_dir():
            return _fetch_folder(card, src, origin, target, from_dir, strict_hash=strict_hash,
                                 replace=replace)
        if (not replace and target.is_file()
                and origin.stat().st_size == target.stat().st_size
                and _file_sha256(origin) == _file_sha256(target)):
            cached = _cached_file(src, target, strict_hash)
            if cached is not None:
                return cached
        if not replace and strict_hash and not pinned and ledger_entry(target):
            _check_reference(src, target, _file_sha256(origin), str(origin),  # before copying
                             f"ctrbench download {card.name} --from {from_dir} --replace")
        return _fetch_from_mirror(card, src, origin, target, from_dir=from_dir,
                                  strict_hash=strict_hash, replace=replace)

    extracted = target.with_name(archive_stem(src))
    if not replace and target.is_file():
        cached = _cached_file(src, target, strict_hash)
        if cached is not None:
            return cached
    elif not replace and src.members and holds_members(extracted, src):
        try:
            return _folder_source(src, extracted, "cached")
        except ChecksumError as exc:  # edited since it was copied: copy it again
            log.warning("cached %s fails verification (%s); fetching it again", extracted, exc)
            progress.message(f"cached {extracted.name}/ fails verification; fetching it again")
            shutil.rmtree(extracted, ignore_errors=True)
    return _fetch_remote(card, src, target, strict_hash=strict_hash, replace=replace)


def _card_files(card: DatasetCard) -> frozenset[str]:
    """Names the card's sources use in its raw cache (never removed as leftovers)."""
    names = {LEDGER_NAME}
    for src in card.sources:
        names |= {Path(src.file).name, archive_stem(src)}
    return frozenset(names)


@contextmanager
def locked_raw(card: DatasetCard):
    """Hold the raw-cache lock of ``card`` (its own folder and the one it shares files from)
    and remove what killed processes left there."""
    folders = sorted({paths.raw_dir(card.name), raw_cache_dir(card)})
    with raw_lock(*folders):
        for folder in folders:
            for path in clean_leftovers(folder, keep=_card_files(card)):
                log.info("removed %s (left by an interrupted run)", path)
                progress.message(f"removed {path} (left by an interrupted run)")
        yield


def fetch_report(card: DatasetCard, *, from_dir: Path | None = None,
                 strict_hash: bool = True, replace: bool = False) -> list[FetchedSource]:
    """Verified raw files of ``card`` with how each was obtained (see the module docstring).

    ``replace=True`` fetches every file again (from ``from_dir`` when given) and, for a card
    that pins no checksum, makes the new copy's sha256 the reference.
    """
    if from_dir is not None:
        from_dir = mirror_dir(card, from_dir)
    if not card.sources:
        return []
    with locked_raw(card):
        return [_fetch_one(card, src, from_dir, strict_hash, replace) for src in card.sources]


def fetch_sources(card: DatasetCard, *, from_dir: Path | None = None,
                  strict_hash: bool = True, replace: bool = False) -> dict[str, Path]:
    """Verified local path per source role (``{}`` for cards without sources, e.g. synthetic).

    Downloads through pooch into ``raw_cache_dir(card)`` (``paths.raw_dir(card.name)``, shared
    with the card it extends when the sources are the same), or copies from the offline mirror
    ``from_dir``, verifying sha256 (else md5) and size; cached files that verify are not fetched
    again, but a ``from_dir`` copy that differs from the cached one is never ignored (see the
    module docstring). A source without URL whose ``file`` is a local path (absolute or relative
    to the card's directory) is used in place. ``strict_hash=False`` warns about a mismatch
    instead of failing; ``replace=True`` see :func:`fetch_report`.
    """
    return {f.role: f.path for f in fetch_report(card, from_dir=from_dir,
                                                 strict_hash=strict_hash, replace=replace)}
