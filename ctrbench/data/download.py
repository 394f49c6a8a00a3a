"""Raw files of a dataset card: download (pooch), offline mirror copy, or local use, all verified.

Each card source is resolved in this order:

1. a *local* source (no ``url``/``mirrors``, ``file`` is an absolute path or a path relative to
   the card's directory that exists) is used in place;
2. a file already in the raw cache (:func:`raw_cache_dir`: ``paths.raw_dir(card.name)``, or that
   of the card it extends when the sources are the same) whose checksum verifies;
3. ``from_dir`` (an offline mirror holding the files by their ``file`` names) is copied in;
4. ``url``, then each of ``mirrors``, is downloaded through pooch.

Verification: sha256 when the card pins one, else md5; the size when given. A file is hashed once:
its digests are remembered in ``checksums.json`` beside it (keyed by name, size and mtime), so a
multi-GB file is not hashed again by the next ``download`` or ``prepare``. When a card pins no hash
(Books meta publishes none) the sha256 is computed on first download, logged and recorded there
(later fetches must match it), and the card's ``lines`` count is checked instead.
Nothing unverified is ever left under the final name: pooch downloads to a temporary file and
moves it only after its hash check; mirror copies go through a temporary name too.

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
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrbench import paths, progress
from ctrbench.cards import DatasetCard, SourceSpec, load_dataset_card
from ctrbench.data.raw_local import (
    archive_stem,
    clean_leftovers,
    copy_members,
    count_lines,
    dir_sha256,
    find_in_mirror,
    from_hint,
    holds_members,
    mirror_dir,
    mirror_listing,
    mismatch_hint,
    raw_lock,
    verify_members,
)
from ctrbench.errors import ChecksumError, CtrbenchError, DataError

log = logging.getLogger(__name__)

LEDGER_NAME = "checksums.json"
LOCAL_LEDGER_NAME = "local-checksums.json"  # for user files outside the raw cache
CHUNK = 1 << 20  # bytes per read when hashing or copying
HTTP_TIMEOUT_S = 60.0


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


# --------------------------------------------------------------------------- hashing
@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str
    size: int


def hash_file(path: Path) -> Digests:
    """sha256 and md5 of ``path`` in one streaming pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return Digests(sha.hexdigest(), md5.hexdigest(), size)


# --------------------------------------------------------------------------- the ledger
def _ledger_location(path: Path) -> tuple[Path, str]:
    """(ledger file, key) for ``path``: beside it in the raw cache, else one ledger for locals."""
    raw_root = (paths.cache_root() / "raw").resolve()
    resolved = path.resolve()
    if resolved.parent.parent == raw_root:  # raw/<card>/<file>
        return resolved.parent / LEDGER_NAME, resolved.name
    return raw_root / LOCAL_LEDGER_NAME, str(resolved)


def _read_ledger(ledger: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(ledger.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable checksum ledger %s: %s", ledger, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_ledger_entry(path: Path, entry: Mapping[str, Any]) -> None:
    """Record ``entry`` for ``path`` (temp file + rename). A failure only costs a re-hash."""
    ledger, key = _ledger_location(path)
    try:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        data = _read_ledger(ledger)
        data[key] = dict(entry)
        tmp = ledger.with_name(f".{ledger.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, ledger)
    except OSError as exc:
        log.warning("cannot record checksums in %s: %s", ledger, exc)


def _ledger_entry(path: Path) -> dict[str, Any] | None:
    ledger, key = _ledger_location(path)
    entry = _read_ledger(ledger).get(key)
    return entry if isinstance(entry, dict) else None


def _fresh_entry(path: Path) -> dict[str, Any] | None:
    """The ledger entry of ``path`` if the file is unchanged since it was hashed."""
    entry = _ledger_entry(path)
    if entry is None:
        return None
    stat = path.stat()
    if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return entry


def _remember(path: Path, digests: Digests, **extra: Any) -> dict[str, Any]:
    """Record the digests of ``path`` as it is now.

    Kept from the previous entry: ``recorded_sha256`` (the first-seen hash of a file the card
    pins none for, which later versions must match) and, for unchanged content, ``lines``.
    """
    previous = _ledger_entry(path) or {}
    stat = path.stat()
    entry: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                             "sha256": digests.sha256, "md5": digests.md5}
    for key in ("recorded_sha256", "accepted_sha256"):
        if key in previous:
            entry[key] = previous[key]
    if "lines" in previous and previous.get("sha256") == digests.sha256:
        entry["lines"] = previous["lines"]
    entry.update(extra)
    _write_ledger_entry(path, entry)
    return entry


def file_digests(path: Path) -> dict[str, Any]:
    """Ledger entry (sha256, md5, size, ...) of ``path``, hashing only if it changed."""
    entry = _fresh_entry(path)
    if entry is None:
        entry = _remember(path, hash_file(path))
    return entry


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of an extracted archive folder (see ``raw_local.dir_sha256``)."""
    path = Path(path)
    if path.is_dir():
        return dir_sha256(path, lambda p: str(file_digests(p)["sha256"]))
    return str(file_digests(path)["sha256"])


def raw_sha256(files: Mapping[str, Path]) -> dict[str, str]:
    """Role -> sha256 of each verified raw file (cached, so big files are hashed once)."""
    return {role: path_sha256(Path(p)) for role, p in files.items()}


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
                hint=f"the card pins no checksum; delete {path.parent / LEDGER_NAME} to accept "
                     "the new file",
            )
    if src.size and int(entry["size"]) != src.size:
        raise ChecksumError(f"size mismatch for {where}: expected {src.size:,} bytes, "
                            f"actual {int(entry['size']):,} bytes")


def _check_lines(src: SourceSpec, path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """For a file the card pins no hash for: count its lines once and compare with the card.

    Returns the ledger entry (with ``lines`` once counted).
    """
    if not src.lines or _expected_hash(src) is not None:
        return entry
    lines = entry.get("lines")
    if lines is None:
        progress.message(f"counting lines of {src.file} (the card pins no checksum) ...")
        lines = count_lines(path)
        entry = _remember(path, Digests(entry["sha256"], entry["md5"], entry["size"]),
                          lines=lines)
    if int(lines) != src.lines:
        raise ChecksumError(f"line count mismatch for {src.file}: expected {src.lines:,} lines, "
                            f"actual {int(lines):,} lines")
    return entry


ACCEPTED = "unverified: accepted with --no-strict-hash"


def _verify(src: SourceSpec, path: Path, entry: dict[str, Any], *, origin: str,
            strict_hash: bool, pin_first_seen: bool = True) -> tuple[dict[str, Any], str]:
    """Check ``entry`` against the card; pin the sha256 of an unpinned file on first sight.

    Returns the ledger entry and what was verified. A file whose sha256 the user accepted
    (``strict_hash=False``, now or before) passes as unverified. ``pin_first_seen=False`` for
    the user's own files used in place: they may change (the prepared-data key follows their
    sha256), so only what the card pins is enforced.
    """
    try:
        _check(src, path, entry, origin)
        entry = _check_lines(src, path, entry)
    except ChecksumError as exc:
        if entry.get("accepted_sha256") == entry["sha256"]:
            return entry, ACCEPTED
        if strict_hash:
            raise
        log.warning("%s (kept: strict_hash=False)", exc)
        progress.message(f"warning: {exc} (kept, unverified: --no-strict-hash)")
        entry = dict(entry, accepted_sha256=entry["sha256"], recorded_sha256=entry["sha256"])
        _write_ledger_entry(path, entry)
        return entry, ACCEPTED
    if pin_first_seen and _expected_hash(src) is None and not entry.get("recorded_sha256"):
        entry = dict(entry, recorded_sha256=entry["sha256"])
        _write_ledger_entry(path, entry)
        log.info("%s: card pins no checksum; recorded sha256 %s", src.file, entry["sha256"])
        progress.message(f"{src.file}: no checksum in the card; recorded sha256 "
                         f"{entry['sha256']} in {_ledger_location(path)[0]}")
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


def _local_path(card: DatasetCard, src: SourceSpec) -> Path | None:
    """The in-place path of a source without URL: absolute, or relative to the card's dir.

    A folder counts for an archive source (role ``archive``, or ``members`` listed): the
    MovieLens reader reads extracted folders.
    """
    if src.url or src.mirrors:
        return None
    candidate = Path(src.file).expanduser()
    if not candidate.is_absolute():
        base = Path(card.path).parent if card.path else Path.cwd()
        candidate = base / candidate
    if candidate.is_dir() and (src.members or src.role == "archive"):
        return candidate
    return candidate if candidate.is_file() else None


def _copy_from_mirror(origin: Path, target: Path) -> tuple[Path, Digests]:
    """Copy ``origin`` to ``target`` through a temporary name, hashing as it goes.

    Returns the temporary path and its digests; the caller verifies and renames it.
    """
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
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


class _PoochProgress:
    """The progress-bar interface pooch's HTTPDownloader drives, on ctrbench.progress."""

    def __init__(self, desc: str) -> None:
        self._bar = progress.Progress(desc, None, "B", interval=0.5)

    @property
    def total(self) -> int | None:
        return self._bar.total

    @total.setter
    def total(self, value: int) -> None:
        self._bar.total = value or None

    def update(self, n: int) -> None:
        self._bar.update(n)

    def reset(self) -> None:
        self._bar.done = 0

    def close(self) -> None:
        self._bar.close()


class _HashingDownloader:
    """pooch's HTTP downloader that also hashes the temporary file it wrote (before pooch's own
    check), so that a mismatch can name the actual hash and a success needs no second pass."""

    def __init__(self, desc: str) -> None:
        import pooch

        self._inner = pooch.HTTPDownloader(progressbar=_PoochProgress(desc), chunk_size=CHUNK,
                                           timeout=HTTP_TIMEOUT_S)
        self.digests: Digests | None = None

    def __call__(self, url: str, output_file: str, pooch_obj: Any, check_only: bool = False):
        result = self._inner(url, output_file, pooch_obj, check_only=check_only)
        if not check_only:
            self.digests = hash_file(Path(output_file))
        return result


def _download(src: SourceSpec, url: str, target: Path, strict_hash: bool) -> Digests:
    """Fetch ``url`` to ``target`` through pooch (temp file, hash check, rename)."""
    import pooch
    import requests

    expected = _expected_hash(src) if strict_hash else None
    known_hash = f"{expected[0]}:{expected[1]}" if expected else None
    downloader = _HashingDownloader(f"downloading {src.file}")
    pooch_log = pooch.get_logger()
    level = pooch_log.level
    pooch_log.setLevel(logging.WARNING)  # we report progress ourselves
    try:
        pooch.retrieve(url, known_hash=known_hash, fname=target.name, path=target.parent,
                       downloader=downloader)
    except ValueError as exc:
        if downloader.digests is None or expected is None:
            raise DataError(f"downloading {url} failed: {exc}") from None
        alg, want = expected
        got = getattr(downloader.digests, alg)
        raise ChecksumError(
            f"checksum mismatch for {src.file} (from {url}): expected {alg} {want}, "
            f"actual {alg} {got}",
            hint="the download was deleted; try again later, another mirror, or --from DIR",
        ) from None
    except requests.exceptions.RequestException as exc:
        raise DataError(f"cannot download {url}: {_short_reason(exc)}") from None
    except OSError as exc:
        raise DataError(f"cannot write {target}: {exc}") from None
    finally:
        pooch_log.setLevel(level)
    if downloader.digests is None:  # pooch found the file already in place
        return hash_file(target)
    return downloader.digests


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+|\d{3} \w[\w ]*Error[^\n]*", text)
    return match.group(0).strip() if match else text[:200]


def _fetch_remote(card: DatasetCard, src: SourceSpec, target: Path, *,
                  strict_hash: bool) -> FetchedSource:
    urls = [u for u in (src.url, *src.mirrors) if u]
    if not urls:
        raise DataError(
            f"{card.name}: {src.file} has no download URL and is not in {target.parent}",
            hint=from_hint(src),
        )
    failures: list[str] = []
    checksum_failures: list[ChecksumError] = []
    for url in urls:
        progress.message(f"downloading {src.file} from {url}")
        try:
            digests = _download(src, url, target, strict_hash)
            entry = _remember(target, digests)
            entry, check = _verify(src, target, entry, origin=url, strict_hash=strict_hash)
        except ChecksumError as exc:
            target.unlink(missing_ok=True)
            checksum_failures.append(exc)
            failures.append(f"{url}: checksum mismatch")
            continue
        except DataError as exc:
            failures.append(str(exc))
            continue
        return FetchedSource(src.role, src.file, target, int(entry["size"]), str(entry["sha256"]),
                             "downloaded", _expected_hash(src) is not None, url, check)
    if checksum_failures and len(checksum_failures) == len(urls):
        raise checksum_failures[0]
    raise DataError(
        f"{card.name}: could not download {src.file}: " + "; ".join(failures),
        hint="check the network, or download it elsewhere and " + from_hint(src),
    )


def _fetch_from_mirror(src: SourceSpec, origin: Path, target: Path, *,
                       strict_hash: bool) -> FetchedSource:
    """Copy a source from the offline mirror file ``origin``; the pinned hash and size are
    checked before the final name, the rest (first-seen hash, line count) right after it."""
    tmp, digests = _copy_from_mirror(origin, target)
    try:
        _check(src, tmp, {"sha256": digests.sha256, "md5": digests.md5, "size": digests.size},
               str(origin))
    except ChecksumError:
        if strict_hash:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, target)
    try:
        entry, check = _verify(src, target, _remember(target, digests), origin=str(origin),
                               strict_hash=strict_hash)
    except ChecksumError:
        target.unlink(missing_ok=True)
        raise
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


def _fetch_one(card: DatasetCard, src: SourceSpec, from_dir: Path | None,
               strict_hash: bool) -> FetchedSource:
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
    extracted = target.with_name(archive_stem(src))
    if target.is_file():
        try:
            entry, check = _verify(src, target, file_digests(target), origin="",
                                   strict_hash=strict_hash)
            return FetchedSource(src.role, src.file, target, int(entry["size"]),
                                 str(entry["sha256"]), "cached", pinned and check != ACCEPTED,
                                 "", check)
        except ChecksumError as exc:
            log.warning("cached %s fails verification (%s); fetching it again", target, exc)
            progress.message(f"cached {src.file} fails verification; fetching it again")
            target.unlink()
    elif src.members and holds_members(extracted, src):
        try:
            return _folder_source(src, extracted, "cached")
        except ChecksumError as exc:  # edited since it was copied: copy it again
            log.warning("cached %s fails verification (%s); fetching it again", extracted, exc)
            progress.message(f"cached {extracted.name}/ fails verification; fetching it again")
            shutil.rmtree(extracted, ignore_errors=True)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the raw cache {target.parent}: {exc}") from None
    if from_dir is not None:
        origin = find_in_mirror(src, from_dir)
        if origin is None:
            raise DataError(f"--from {from_dir}: {Path(src.file).name} is not there (nor one "
                            "level down)", hint=f"found: {mirror_listing(from_dir)}; "
                                                + from_hint(src))
        if origin.is_dir():
            verify_members(src, origin)  # before copying: nothing unverified is cached
            progress.message(f"copying the extracted {archive_stem(src)} from {origin}")
            return _folder_source(src, copy_members(src, origin, extracted), "copied",
                                  str(origin))
        return _fetch_from_mirror(src, origin, target, strict_hash=strict_hash)
    return _fetch_remote(card, src, target, strict_hash=strict_hash)


@contextmanager
def locked_raw(card: DatasetCard):
    """Hold the raw-cache lock of ``card`` (its own folder and the one it shares files from)
    and remove what killed processes left there."""
    folders = sorted({paths.raw_dir(card.name), raw_cache_dir(card)})
    with raw_lock(*folders):
        for folder in folders:
            for path in clean_leftovers(folder):
                log.info("removed %s (left by an interrupted run)", path)
                progress.message(f"removed {path} (left by an interrupted run)")
        yield


def fetch_report(card: DatasetCard, *, from_dir: Path | None = None,
                 strict_hash: bool = True) -> list[FetchedSource]:
    """Verified raw files of ``card`` with how each was obtained (see the module docstring)."""
    if from_dir is not None:
        from_dir = mirror_dir(card, from_dir)
    if not card.sources:
        return []
    with locked_raw(card):
        return [_fetch_one(card, src, from_dir, strict_hash) for src in card.sources]


def fetch_sources(card: DatasetCard, *, from_dir: Path | None = None,
                  strict_hash: bool = True) -> dict[str, Path]:
    """Verified local path per source role (``{}`` for cards without sources, e.g. synthetic).

    Downloads through pooch into ``raw_cache_dir(card)`` (``paths.raw_dir(card.name)``, shared
    with the card it extends when the sources are the same), or copies from the offline mirror
    ``from_dir``, verifying sha256 (else md5) and size; cached files that verify are not fetched
    again. A source without URL whose ``file`` is a local path (absolute or relative to the card's
    directory) is used in place. ``strict_hash=False`` warns about a mismatch instead of failing.
    """
    return {f.role: f.path for f in fetch_report(card, from_dir=from_dir,
                                                 strict_hash=strict_hash)}
