"""Where things live: cache root, results root, and the card directories."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ctrbench.errors import CtrbenchError

_PACKAGE = Path(__file__).resolve().parent


def cache_root() -> Path:
    """``$CTRBENCH_HOME``, else the platform's user cache dir (via pooch/platformdirs)."""
    env = os.environ.get("CTRBENCH_HOME")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("ctrbench"))


def raw_dir(dataset: str) -> Path:
    return cache_root() / "raw" / dataset


def prepared_root() -> Path:
    return cache_root() / "prepared"


def default_results_root() -> Path:
    return Path(os.environ.get("CTRBENCH_RESULTS", "results"))


def _builtin_card_dir(kind: str) -> Path:
    """Cards inside an installed wheel (``ctrbench/_cards/<kind>``), else the source checkout's."""
    shipped = _PACKAGE / "_cards" / kind
    if shipped.is_dir():
        return shipped
    return _PACKAGE.parent / kind


def card_dirs(kind: str) -> list[Path]:
    """Directories searched for ``kind`` cards ("models" or "datasets"), highest priority first.

    ``$CTRBENCH_CARDS`` (os.pathsep-separated roots, each holding models/ and datasets/), then
    ``./<kind>`` in the working directory (user and tuned cards), then the built-in cards.
    """
    dirs: list[Path] = []
    for root in filter(None, os.environ.get("CTRBENCH_CARDS", "").split(os.pathsep)):
        dirs.append(Path(root) / kind)
    dirs.append(Path.cwd() / kind)
    dirs.append(_builtin_card_dir(kind))
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        resolved = d.resolve()
        if resolved not in seen and d.is_dir():
            seen.add(resolved)
            unique.append(d)
    return unique


# --------------------------------------------------------------------------- name guards
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+=-]{0,199}")


def safe_name(kind: str, name: object) -> str:
    """``name`` if it can be one path component (letters, digits, ``@._+=-``; no ``/``, no
    leading dot, at most 200 characters), else a :class:`CtrbenchError` naming it.

    Names of datasets and models come from cards, command lines and run records (which anyone
    can edit); every path built from one goes through this guard.
    """
    if not is_safe_name(name):
        raise CtrbenchError(f"{kind} name {name!r} cannot be used in a file name",
                            hint="names are letters, digits and @ . _ + = - (no '/', no "
                                 "leading dot); fix or remove the card or record that holds it")
    return name


def is_safe_name(name: object) -> bool:
    """Whether ``name`` passes :func:`safe_name` (without raising)."""
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None


def inside(root: Path, *parts: str) -> Path:
    """``root / parts...``, refused unless it resolves inside ``root`` (symlinks followed)."""
    root = Path(root)
    path = root.joinpath(*parts)
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise CtrbenchError(f"refusing to write {path}: it resolves to {resolved}, outside "
                            f"{resolved_root}")
    return path


def ensure_writable_dir(directory: Path, what: str) -> Path:
    """Create ``directory`` and prove it writable (a probe file is created and removed).

    Raises a :class:`CtrbenchError` naming the directory and the OS error (read-only file
    system, permission denied, no space left) before any work is done.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ctrbench-write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CtrbenchError(f"cannot write {what} in {directory}: {exc.strerror or exc}",
                            hint="free some space, make it writable, or choose another "
                                 "directory (--results DIR / --out DIR)") from None
    return directory
