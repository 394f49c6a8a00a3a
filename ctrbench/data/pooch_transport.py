"""Downloads through pooch, hashed as they are written (ctrbench's progress bar, timeouts,
and errors that name the URL and the reason).

pooch keeps its part of the job (a temporary file, the hash check, the rename); the HTTP
transfer is ours: the body is stored as the server sent it (a ``.gz`` labelled
``Content-Encoding: gzip`` stays compressed, as ``curl -O`` keeps it), an HTML page sent for
a data file is refused (a login or error page with status 200), the progress counts the bytes
received, and a disk that refuses the write is a :class:`WriteError`, not a network failure.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from ctrbench import progress
from ctrbench.data.checksum_ledger import CHUNK, Digests, hash_file
from ctrbench.errors import DISK_ERRNOS, ChecksumError, DataError, WriteError

HTTP_TIMEOUT_S = 60.0
SCHEMES = ("http", "https")
HTML_TYPES = ("text/html", "application/xhtml+xml")
COMPRESSED = (".gz", ".tgz", ".gzip", ".zip", ".bz2", ".xz", ".zst", ".7z")


def _open_output(path: str) -> BinaryIO:
    return open(path, "wb")


def _keeps_encoding(file: str, headers: Any) -> bool:
    """Whether the body is stored encoded: a compressed file labelled with its own encoding."""
    encoding = headers.get("Content-Encoding", "").strip().lower()
    return encoding not in ("", "identity") and Path(file).name.lower().endswith(COMPRESSED)


def _refuse_html(file: str, url: str, headers: Any) -> None:
    kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind in HTML_TYPES and not Path(file).name.lower().endswith((".html", ".htm")):
        raise DataError(f"{url} answered with an HTML page ({kind}), not {Path(file).name}: "
                        "a login, error or moved-file page? nothing was kept")


class _HashingDownloader:
    """A downloader for ``pooch.retrieve``: streams the body as sent, hashes it as it is
    written (a mismatch can name the actual hash; a success needs no second pass)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.digests: Digests | None = None

    def __call__(self, url: str, output_file: str, pooch_obj: Any, check_only: bool = False):
        import requests

        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT_S,
                          headers={"Accept-Encoding": "identity"}) as response:
            response.raise_for_status()
            if check_only:
                return True
            _refuse_html(self.file, url, response.headers)
            self.digests = self._store(response, output_file)
        return None

    def _store(self, response: Any, output_file: str) -> Digests:
        keep = _keeps_encoding(self.file, response.headers)
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        length = int(response.headers.get("Content-Length") or 0)
        sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
        with _open_output(output_file) as fout, progress.progress(
                f"downloading {self.file}", total=length if keep or not encoded else None,
                unit="B", interval=0.5) as bar:
            for chunk in response.raw.stream(CHUNK, decode_content=not keep):
                fout.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        return Digests(sha.hexdigest(), md5.hexdigest(), size)


def download_file(file: str, url: str, folder: Path, expected: tuple[str, str] | None
                  ) -> tuple[Path, Digests]:
    """Fetch ``url`` through pooch into the temporary ``folder`` (pooch's own temporary file,
    hash check against ``expected`` = (algorithm, hex) when given, rename there) as the base
    name of the card's ``file``; returns the file and its digests."""
    import pooch
    import requests
    import urllib3

    _check_scheme(url)
    known_hash = f"{expected[0]}:{expected[1]}" if expected else None
    downloader = _HashingDownloader(file)
    pooch_log = pooch.get_logger()
    level = pooch_log.level
    pooch_log.setLevel(logging.WARNING)  # we report progress ourselves
    try:
        path = Path(pooch.retrieve(url, known_hash=known_hash, fname=Path(file).name,
                                   path=folder, downloader=downloader))
    except ValueError as exc:
        raise _mismatch(file, url, expected, downloader.digests, exc) from None
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise DataError(f"cannot download {url}: {_reason(url, exc)}") from None
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise WriteError(folder.parent, exc) from None
        raise DataError(f"cannot write {folder}: {exc}") from None
    finally:
        pooch_log.setLevel(level)
    return path, downloader.digests or hash_file(path)


def _check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme in SCHEMES:
        return
    fix = ("for a file on this machine, set `file` to its path and drop `url`, or pass "
           if scheme == "file" else "fetch it with another tool and pass ")
    raise DataError(f"{url}: only http:// and https:// URLs are downloaded"
                    + (f", not {scheme}://" if scheme else " (the URL has no scheme)")
                    + f"; {fix}--from DIR with a directory holding the file")


def _mismatch(file: str, url: str, expected: tuple[str, str] | None,
              digests: Digests | None, exc: ValueError) -> DataError:
    if digests is None or expected is None:
        return DataError(f"downloading {url} failed: {exc}")
    alg, want = expected
    return ChecksumError(
        f"checksum mismatch for {file} (from {url}): expected {alg} {want}, "
        f"actual {alg} {getattr(digests, alg)}",
        hint="the download was deleted; try again later, another mirror, or --from DIR")


def _reason(url: str, exc: BaseException) -> str:
    """Why ``url`` could not be fetched; a proxy from the environment is named (no password)."""
    import requests

    if not isinstance(exc, requests.exceptions.ProxyError):
        return _short_reason(exc)
    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url)) or "?"
    parts = urlsplit(proxy)
    if parts.password:
        proxy = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
        proxy = proxy.geturl()
    return (f"the proxy {proxy} (from the *_PROXY environment variables) cannot be reached: "
            f"{_short_reason(exc)}; fix it, or name the host in NO_PROXY")


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    cut = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
    if cut:
        got, more = int(cut.group(1)), int(cut.group(2))
        return (f"the connection was closed after {got:,} of {got + more:,} bytes (an "
                "interrupted transfer; nothing was kept, run the command again)")
    match = re.search(r"\[Errno -?\d+\] [^'\")]+|\d{3} \w[\w ]*Error[^\n]*", text)
    return match.group(0).strip() if match else text[:200]
