"""The raw cache's checksum ledger: each file's sha256, md5 and size, hashed once.

``checksums.json`` beside the files of ``raw/<card>/`` (``local-checksums.json`` under ``raw/``
for the user's own files used in place) keeps, per file name, the digests with the size and
mtime they were computed at, so a multi-GB file is hashed again only when it changed; and, for
a file its card pins no hash for, ``recorded_sha256`` (the first copy seen: later ones must
match it) and ``accepted_sha256`` (kept unverified with ``--no-strict-hash``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrbench import paths
from ctrbench.data.raw_local import dir_sha256

log = logging.getLogger(__name__)

LEDGER_NAME = "checksums.json"
LOCAL_LEDGER_NAME = "local-checksums.json"  # for user files outside the raw cache
CHUNK = 1 << 20  # bytes per read when hashing or copying


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
def ledger_location(path: Path) -> tuple[Path, str]:
    """(ledger file, key) for ``path``: beside it in the raw cache, else one ledger for locals."""
    raw_root = (paths.cache_root() / "raw").resolve()
    resolved = path.resolve()
    if resolved.parent.parent == raw_root:  # raw/<card>/<file>
        return resolved.parent / LEDGER_NAME, resolved.name
    return raw_root / LOCAL_LEDGER_NAME, str(resolved)


def read_ledger(ledger: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(ledger.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable checksum ledger %s: %s", ledger, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_ledger_entry(path: Path, entry: Mapping[str, Any]) -> None:
    """Record ``entry`` for ``path`` (temp file + rename). A failure only costs a re-hash."""
    ledger, key = ledger_location(path)
    try:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        data = read_ledger(ledger)
        data[key] = dict(entry)
        tmp = ledger.with_name(f".{ledger.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, ledger)
    except OSError as exc:
        log.warning("cannot record checksums in %s: %s", ledger, exc)


def ledger_entry(path: Path) -> dict[str, Any] | None:
    ledger, key = ledger_location(path)
    entry = read_ledger(ledger).get(key)
    return entry if isinstance(entry, dict) else None


def fresh_entry(path: Path) -> dict[str, Any] | None:
    """The ledger entry of ``path`` if the file is unchanged since it was hashed."""
    entry = ledger_entry(path)
    if entry is None:
        return None
    stat = path.stat()
    if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return entry


def remember(path: Path, digests: Digests, **extra: Any) -> dict[str, Any]:
    """Record the digests of ``path`` as it is now.

    Kept from the previous entry: ``recorded_sha256`` (the first-seen hash of a file the card
    pins none for, which later versions must match) and, for unchanged content, ``lines``.
    """
    previous = ledger_entry(path) or {}
    stat = path.stat()
    entry: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                             "sha256": digests.sha256, "md5": digests.md5}
    for key in ("recorded_sha256", "accepted_sha256"):
        if key in previous:
            entry[key] = previous[key]
    if "lines" in previous and previous.get("sha256") == digests.sha256:
        entry["lines"] = previous["lines"]
    entry.update(extra)
    write_ledger_entry(path, entry)
    return entry


def file_digests(path: Path) -> dict[str, Any]:
    """Ledger entry (sha256, md5, size, ...) of ``path``, hashing only if it changed."""
    entry = fresh_entry(path)
    if entry is None:
        entry = remember(path, hash_file(path))
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
