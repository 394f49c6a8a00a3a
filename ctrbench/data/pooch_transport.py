"""Downloads through pooch, hashed as they are written (ctrbench's progress bar, timeouts,
and errors that name the URL and the reason)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ctrbench import progress
from ctrbench.data.checksum_ledger import CHUNK, Digests, hash_file
from ctrbench.errors import ChecksumError, DataError

HTTP_TIMEOUT_S = 60.0


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


def download_file(file: str, url: str, folder: Path, expected: tuple[str, str] | None
                  ) -> tuple[Path, Digests]:
    """Fetch ``url`` through pooch into the temporary ``folder`` (pooch's own temporary file,
    hash check against ``expected`` = (algorithm, hex) when given, rename there) as the base
    name of the card's ``file``; returns the file and its digests."""
    import pooch
    import requests

    name = Path(file).name
    known_hash = f"{expected[0]}:{expected[1]}" if expected else None
    downloader = _HashingDownloader(f"downloading {file}")
    pooch_log = pooch.get_logger()
    level = pooch_log.level
    pooch_log.setLevel(logging.WARNING)  # we report progress ourselves
    try:
        path = Path(pooch.retrieve(url, known_hash=known_hash, fname=name, path=folder,
                                   downloader=downloader))
    except ValueError as exc:
        if downloader.digests is None or expected is None:
            raise DataError(f"downloading {url} failed: {exc}") from None
        alg, want = expected
        got = getattr(downloader.digests, alg)
        raise ChecksumError(
            f"checksum mismatch for {file} (from {url}): expected {alg} {want}, "
            f"actual {alg} {got}",
            hint="the download was deleted; try again later, another mirror, or --from DIR",
        ) from None
    except requests.exceptions.RequestException as exc:
        raise DataError(f"cannot download {url}: {_short_reason(exc)}") from None
    except OSError as exc:
        raise DataError(f"cannot write {folder}: {exc}") from None
    finally:
        pooch_log.setLevel(level)
    return path, downloader.digests or hash_file(path)


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+|\d{3} \w[\w ]*Error[^\n]*", text)
    return match.group(0).strip() if match else text[:200]
