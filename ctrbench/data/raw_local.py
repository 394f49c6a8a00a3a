"""Raw files the user already has: mirror look-up, extracted archives, the raw-cache lock.

- :func:`find_in_mirror`: where ``--from DIR`` holds a card source: ``DIR/<file>``, or one
  level down (``DIR/*/<file>``); for an archive with ``members`` (MovieLens) also its extracted
  folder: ``DIR`` itself, ``DIR/<stem>/`` or ``DIR/*/`` when it holds every member's file.
- Extracted folders are copied member by member into ``raw/<card>/<stem>/`` through a temporary
  folder renamed when complete; :func:`verify_members` checks the line count of each member the
  card publishes one for (``member_lines``) and names those it cannot check ("unverified").
- :func:`dir_sha256`: the identity of a folder (sha256 over its members' names and sha256).
- :func:`raw_lock`: an exclusive lock (``filelock``; released by the OS when the process dies,
  even by ``kill -9``; a wait for another process is announced) held while raw files are
  fetched, generated or read. Whoever holds it
  knows no other ctrbench process is writing there, so :func:`clean_leftovers` may remove
  every temporary name a killed process left: ctrbench's own (``.<name>.tmp-<hex>``, files and
  folders; pooch downloads inside such a folder) and those of older versions (``.*.part``, and
  pooch's ``tmpXXXXXXXX`` without a dot); never a name the card uses (``tmp_reviews.json.gz``).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import shutil
import stat
import uuid
import zlib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ctrbench.cards import DatasetCard, SourceSpec
from ctrbench.errors import ChecksumError, DataError
from ctrbench.progress import message

LOCK_NAME = ".lock"  # raw/.<card>.lock, beside the card's folder
LEFTOVER_PATTERNS = (".*.tmp-*", ".*.part")  # ctrbench's temporary names (leading dot)
POOCH_LEFTOVER = re.compile(r"tmp[a-z0-9_]{6,}")  # tempfile's name, from older versions
_LOCKS: dict[str, object] = {}  # path -> FileLock (re-entrant within this process)


# --------------------------------------------------------------------------- archives
def archive_stem(src: SourceSpec) -> str:
    """``ml-100k`` for ``ml-100k.zip``: the folder name of the extracted archive."""
    name = Path(src.file).name
    for suffix in (".zip", ".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def member_names(src: SourceSpec) -> list[str]:
    """Base names of the archive's members (``u.data`` for ``ml-100k/u.data``)."""
    return [Path(m).name for m in src.members]


def holds_members(folder: Path, src: SourceSpec) -> bool:
    names = member_names(src)
    return bool(names) and folder.is_dir() and all((folder / n).is_file() for n in names)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def find_in_mirror(src: SourceSpec, mirror: Path) -> Path | None:
    """The file (or extracted folder) for ``src`` in ``mirror``, looking one level down."""
    name = Path(src.file).name
    for candidate in (mirror / name, *(d / name for d in _subdirs(mirror))):
        if candidate.is_file():
            return candidate
    if src.members:
        stem = archive_stem(src)
        folders = [mirror, mirror / stem, *(d / stem for d in _subdirs(mirror)),
                   *_subdirs(mirror)]
        for folder in folders:
            if holds_members(folder, src):
                return folder
    return None


def mirror_listing(mirror: Path, limit: int = 12) -> str:
    """What ``mirror`` holds, one level down, for an error message."""
    found = []
    for p in sorted(mirror.iterdir()) if mirror.is_dir() else []:
        found.append(p.name + ("/" if p.is_dir() else ""))
        if p.is_dir():
            found += [f"{p.name}/{q.name}" for q in sorted(p.iterdir())[:4]]
    return ", ".join(found[:limit]) + (" ..." if len(found) > limit else "") or "(nothing)"


def count_lines(path: Path, name: str | None = None, gz: bool | None = None) -> int:
    """Lines in a text file (decompressed when ``gz``, default: its name ends in ``.gz``).

    A truncated or corrupt gzip file raises ChecksumError, a file that cannot be read DataError;
    both name it ``name`` (default: the file's name).
    """
    name = name or path.name
    gz = path.name.endswith(".gz") if gz is None else gz
    total, last = 0, b"\n"
    try:
        with (gzip.open if gz else open)(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += chunk.count(b"\n")
                last = chunk[-1:]
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ChecksumError(f"{name} is truncated or not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read to count its lines: {exc}") from None
    return total + (last != b"\n")


def describe_path(path: Path) -> str:
    """Why ``path`` is not a readable file: missing, a directory, a symbolic link loop, ..."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        try:
            return f"is a broken symbolic link (to {os.readlink(path)})"
        except OSError:
            parent = path.parent
            return "does not exist" + ("" if parent.is_dir() else
                                       f" (nor does its folder {parent})")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    return "is a file" if stat.S_ISREG(mode) else "is not a regular file"


def mismatch_hint(src: SourceSpec) -> str:
    """What a user can do about a file that is not the card's: name the real options."""
    options = []
    if src.members:
        options.append(f"if you extracted or re-zipped {Path(src.file).name} yourself, pass "
                       f"the extracted folder: `--from DIR` where DIR (or DIR/"
                       f"{archive_stem(src)}/) holds {', '.join(Path(m).name for m in src.members)}"
                       " (members are checked by their published line counts)")
    options.append("to use this file anyway: --no-strict-hash (it is kept, reported as "
                   "unverified and its sha256 recorded)")
    options.append("if it came from the card's URL it is corrupt or truncated: delete it and run "
                   "`ctrbench download` again")
    return "; ".join(options)


def from_hint(src: SourceSpec) -> str:
    name = Path(src.file).name
    text = f"pass --from DIR with a directory holding {name} (or a folder with it one level down)"
    if src.members:
        text += (f", or its extracted folder {archive_stem(src)}/ (holding "
                 f"{', '.join(Path(m).name for m in src.members)})")
    return text


def mirror_dir(card: DatasetCard, from_dir: Path) -> Path:
    """``--from`` as a directory; a file named like one of the card's sources stands for its
    folder, any other file is an error that says what is expected."""
    from_dir = Path(from_dir).expanduser()
    if from_dir.is_dir():
        return from_dir
    names = [Path(s.file).name for s in card.sources]
    if from_dir.is_file():
        if from_dir.name in names:
            message(f"--from {from_dir} is a file: using its folder {from_dir.parent}")
            return from_dir.parent
        raise DataError(f"--from {from_dir} is a file, not a directory",
                        hint=f"pass the directory that holds {', '.join(names)}")
    raise DataError(f"--from {from_dir}: no such file or directory",
                    hint=(f"pass a directory holding {', '.join(names)}" if names else
                          f"{card.name} has no raw files to take from a folder: drop --from"))


def verify_members(src: SourceSpec, folder: Path) -> str:
    """Check the published line counts of an extracted archive's members; describe the result.

    Raises ChecksumError on a member that is missing or has another line count.
    """
    names = member_names(src)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: the extracted {archive_stem(src)} lacks "
                        f"{', '.join(missing)}")
    published = dict(src.member_lines)
    checked = []
    for name, want in sorted(published.items()):
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder}: the extracted {archive_stem(src)} lacks {name}")
        got = count_lines(path)
        if got != want:
            raise ChecksumError(
                f"line count mismatch for {name} in {folder}: expected {want:,} lines "
                f"(published), actual {got:,} lines",
                hint=f"this is not the {archive_stem(src)} the card names, or it was edited; "
                     "extract the original archive again")
        checked.append(name)
    others = [n for n in names if n not in published]
    if not checked:
        return "unverified: no published sizes for the extracted members"
    text = f"members' line counts verified ({', '.join(checked)})"
    return text + (f"; unverified: {', '.join(others)}" if others else "")


def members_sha256(src: SourceSpec, folder: Path, file_sha256) -> dict[str, str]:
    """Member name -> sha256 (``file_sha256(path)``) of the members ``folder`` holds."""
    names = member_names(src) or sorted(p.name for p in folder.iterdir() if p.is_file())
    return {n: file_sha256(folder / n) for n in names if (folder / n).is_file()}


def archive_members_sha256(src: SourceSpec, archive: Path) -> dict[str, str] | None:
    """Member name -> sha256 of the members of a zip ``archive``; None if it cannot be read."""
    import zipfile

    out: dict[str, str] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            by_name = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
            for name in member_names(src):
                if name in by_name:
                    h = hashlib.sha256()
                    with zf.open(by_name[name]) as fh:
                        while chunk := fh.read(1 << 20):
                            h.update(chunk)
                    out[name] = h.hexdigest()
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile):
        return None
    return out


def copy_members(src: SourceSpec, origin: Path, target: Path) -> Path:
    """Copy the members of the extracted folder ``origin`` into ``target`` (temp + rename)."""
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    names = member_names(src) or [p.name for p in origin.iterdir() if p.is_file()]
    try:
        tmp.mkdir(parents=True)
        for name in names:
            shutil.copyfile(origin / name, tmp / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot copy {origin} to {target.parent}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def dir_sha256(folder: Path, file_sha256) -> str:
    """sha256 over ``name\\0sha256\\n`` of every file in ``folder`` (sorted; ledgers excluded).

    ``file_sha256(path)`` gives one file's sha256 (cached by the caller's ledger).
    """
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.endswith("checksums.json") or path.name.startswith("."):
            continue
        h.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- lock, leftovers
@contextmanager
def raw_lock(*folders: Path) -> Iterator[None]:
    """Hold the lock of each folder (file `raw/.<name>.lock` beside it; taken in sorted order,
    so two processes never wait on each other)."""
    from filelock import FileLock

    with ExitStack() as stack:
        for folder in sorted({Path(f).resolve() for f in folders}):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataError(f"cannot create the raw cache {folder}: {exc}") from None
            key = str(folder.parent / f".{folder.name}{LOCK_NAME}")
            acquire_announced(_LOCKS.setdefault(key, FileLock(key)), folder, key)
            stack.callback(_LOCKS[key].release)  # type: ignore[attr-defined]
        yield


def acquire_announced(lock, folder: Path, key: str) -> None:
    """Take ``lock``; say so first when another process holds it (a download may be long)."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        message(f"waiting for another ctrbench process using {folder} (lock {key}) ...")
        lock.acquire()


def clean_leftovers(folder: Path, keep: frozenset[str] = frozenset()) -> list[Path]:
    """Remove temporary files and folders a killed process left in ``folder``; never a name in
    ``keep`` (the card's files).

    Call only while holding :func:`raw_lock` of ``folder``.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    legacy = [p for p in folder.iterdir() if POOCH_LEFTOVER.fullmatch(p.name) and p.is_file()]
    for path in sorted({*legacy, *(p for pat in LEFTOVER_PATTERNS for p in folder.glob(pat))}):
        if path.name == LOCK_NAME or path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def differing_members(ours: Mapping[str, str] | None, theirs: Mapping[str, str]) -> list[str]:
    """Member names whose sha256 differ between two ``name -> sha256`` maps (all of
    ``theirs`` when ``ours`` could not be read)."""
    if ours is None:
        return sorted(theirs)
    return sorted(n for n in {*ours, *theirs} if ours.get(n) != theirs.get(n))
