"""Where things live: cache root, results root, and the card directories."""

from __future__ import annotations

import os
from pathlib import Path

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
