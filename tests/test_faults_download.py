"""Faults found by breaking `download`, `generate` and `list` from the outside (a fault hunt).

Each test failed before its fix. Downloads go through pooch against real servers on 127.0.0.1:
the ``http_server`` fixture for well-behaved files, :class:`OddServer` for a server that sends
an HTML page with status 200, a ``.gz`` with ``Content-Encoding: gzip``, or closes the
connection mid-body.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctrbench import paths
from ctrbench.cards import load_dataset_card
from ctrbench.cli import main
from ctrbench.data import pooch_transport, raw_local
from ctrbench.data.download import fetch_report
from ctrbench.errors import CardError, DataError, WriteError

GOOD = b"".join(f'{{"reviewerID": "u{i % 9}", "asin": "i{i % 7}", "unixReviewTime": '
                f'{1300000000 + i}, "overall": 4.0}}\n'.encode() for i in range(200))
GOOD_GZ = gzip.compress(GOOD, mtime=0)
HTML = b"<!DOCTYPE html><html><body>Please sign in to download</body></html>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OddServer:
    """``routes[name] = (headers, body, sent)``: status 200 with those headers, and only the
    first ``sent`` bytes of ``body`` before the connection is closed (None: all of it)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[dict[str, str], bytes, int | None]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers, body, sent = routes[self.path.lstrip("/")]
                self.send_response(200)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[:sent])
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{name}"


@pytest.fixture
def odd_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = OddServer()
    server._thread.start()
    yield server
    server._httpd.shutdown()
    server._httpd.server_close()


def write_card(datasets: Path, name: str, file: str, **keys) -> None:
    lines = [f'name = "{name}"', 'reader = "amazon"', 'protocol = "din"', "",
             "[[sources]]", 'role = "reviews"', f'file = "{file}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    (datasets / f"{name}.toml").write_text("\n".join(lines) + "\n")


def cached(name: str) -> list[str]:
    folder = paths.raw_dir(name)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------- what servers send
def test_an_html_page_sent_with_status_200_is_never_the_reference(home, odd_server):
    """A login page for an unpinned file was cached and its sha256 recorded as the reference
    (exit 0), so the real file was refused afterwards and the mirror never tried."""
    odd_server.routes["login/r.json"] = ({"Content-Type": "text/html; charset=utf-8"}, HTML,
                                         None)
    odd_server.routes["mirror/r.json"] = ({}, GOOD, None)
    write_card(home, "toy", "r.json", url=odd_server.url("login/r.json"),
               mirrors=[odd_server.url("mirror/r.json")])
    [fetched] = fetch_report(load_dataset_card("toy"))
    assert (fetched.sha256, fetched.origin) == (sha(GOOD), odd_server.url("mirror/r.json"))


def test_an_html_page_alone_is_named_as_such(home, odd_server):
    odd_server.routes["login/r.json.gz"] = ({"Content-Type": "text/html"}, HTML, None)
    write_card(home, "toy", "r.json.gz", url=odd_server.url("login/r.json.gz"))
    with pytest.raises(DataError, match=r"an HTML page .*not r\.json\.gz") as err:
        fetch_report(load_dataset_card("toy"))
    assert "login" in str(err.value) and cached("toy") == []


def test_a_gz_served_with_content_encoding_gzip_is_kept_compressed(home, odd_server):
    """`curl -O` keeps the bytes of a .gz a server labels `Content-Encoding: gzip`; the
    download stored them decompressed under the .gz name: a checksum mismatch, "try again"."""
    odd_server.routes["r.json.gz"] = ({"Content-Encoding": "gzip",
                                       "Content-Type": "application/x-gzip"}, GOOD_GZ, None)
    write_card(home, "toy", "r.json.gz", url=odd_server.url("r.json.gz"), sha256=sha(GOOD_GZ))
    [fetched] = fetch_report(load_dataset_card("toy"))
    assert fetched.path.read_bytes() == GOOD_GZ


def test_a_plain_file_compressed_in_transit_is_decompressed(home, odd_server):
    odd_server.routes["r.json"] = ({"Content-Encoding": "gzip"}, GOOD_GZ, None)
    write_card(home, "toy", "r.json", url=odd_server.url("r.json"), sha256=sha(GOOD))
    [fetched] = fetch_report(load_dataset_card("toy"))
    assert fetched.path.read_bytes() == GOOD


def test_a_connection_closed_mid_body_leaves_nothing_and_says_so(home, odd_server):
    odd_server.routes["r.json"] = ({}, GOOD, 1000)
    write_card(home, "toy", "r.json", url=odd_server.url("r.json"))
    with pytest.raises(DataError) as err:
        fetch_report(load_dataset_card("toy"))
    assert f"closed after 1,000 of {len(GOOD):,} bytes" in str(err.value)
    assert "IncompleteRead" not in str(err.value)
    assert cached("toy") == []  # no partial file, no recorded sha256
    odd_server.routes["r.json"] = ({}, GOOD, None)  # the retry works
    [fetched] = fetch_report(load_dataset_card("toy"))
    assert fetched.sha256 == sha(GOOD)


def test_progress_counts_the_bytes_received(home, http_server, capsys):
    """pooch counts 1 MiB per chunk: a 39-byte file showed "2688656.4% 1,048,576/39 B"."""
    http_server.files["r.json"] = HTML[:39]
    write_card(home, "toy", "r.json", url=http_server.url("r.json"), sha256=sha(HTML[:39]))
    fetch_report(load_dataset_card("toy"))
    err = capsys.readouterr().err
    assert "1,048,576" not in err and "39/39 B" in err


@pytest.mark.parametrize("url", ["file:///data/r.json", "ftp://127.0.0.1:1/r.json"])
def test_a_url_that_is_not_http_says_what_to_do(home, url):
    write_card(home, "toy", "r.json", url=url)
    with pytest.raises(DataError) as err:
        fetch_report(load_dataset_card("toy"))
    text = str(err.value)
    assert "No connection adapters" not in text and "only http:// and https://" in text
    assert "--from" in text


def test_an_unreachable_proxy_is_named_without_its_password(home, monkeypatch):
    """A dead HTTP_PROXY said only "[Errno 111] Connection refused", as if the host refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://me:secret@127.0.0.1:{port}")
    monkeypatch.delenv("http_proxy", raising=False)
    write_card(home, "toy", "r.json", url="http://data.example.org/r.json")
    with pytest.raises(DataError) as err:
        fetch_report(load_dataset_card("toy"))
    text = str(err.value)
    assert f"proxy http://me:***@127.0.0.1:{port}" in text and "NO_PROXY" in text
    assert "secret" not in text


# --------------------------------------------------------------------------- the local side
def test_a_full_disk_is_not_blamed_on_the_network(home, http_server, monkeypatch):
    """ENOSPC while writing said "could not download … check the network" and tried every
    mirror; it is a write error with its own hint, and no other URL is tried."""
    http_server.files["r.json"] = GOOD

    def full(path: str):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(pooch_transport, "_open_output", full)
    write_card(home, "toy", "r.json", url=http_server.url("r.json"),
               mirrors=[http_server.url("r.json") + "?again"])
    with pytest.raises(WriteError, match="No space left") as err:
        fetch_report(load_dataset_card("toy"))
    assert "free some space" in str(err.value) and "network" not in str(err.value)
    assert sum(http_server.requests.values()) == 1
    assert cached("toy") == []


def test_waiting_for_another_process_is_announced(home, http_server, monkeypatch):
    """A second `download` of the same card waited on the raw-cache lock without a word."""
    from filelock import FileLock

    http_server.files["r.json"] = GOOD
    write_card(home, "toy", "r.json", url=http_server.url("r.json"), sha256=sha(GOOD))
    card = load_dataset_card("toy")
    paths.raw_dir("toy").mkdir(parents=True)
    waiting = threading.Event()
    said: list[str] = []
    monkeypatch.setattr(raw_local, "message", lambda text: (said.append(text), waiting.set()))
    other = FileLock(str(paths.raw_dir("toy").resolve().parent / ".toy.lock"))
    other.acquire()  # another process (its own file descriptor) holds the lock
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(fetch_report(card)))
    worker.start()
    try:
        assert waiting.wait(10), "no message while waiting for the lock"
    finally:
        other.release()
        worker.join(10)
    assert "waiting for another ctrbench process" in said[0] and done


# --------------------------------------------------------------------------- generate and list
def test_generate_with_a_negative_seed_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["generate", "--seed", "-1", "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2, result.output  # a bad option value: a usage error
    assert "--seed" in result.output and "-1" in result.output
    assert not (tmp_path / "out").exists()


def test_generate_into_an_existing_folder_says_so_before_any_progress(tmp_path, monkeypatch):
    """It printed a "0 lines" progress line, then "already exists"."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "already exists" in result.output
    assert "generating" not in result.output and "lines" not in result.output


@pytest.mark.parametrize("seed", [-1, "abc", 1.5, True])
def test_a_card_seed_that_is_not_a_non_negative_integer_is_a_card_error(seed):
    from ctrbench.data.synthetic import world_params

    with pytest.raises(CardError, match="seed must be an integer >= 0"):
        world_params({"seed": seed})


def test_list_datasets_with_a_non_string_description(home):
    """`description = 5` in a user card: an AttributeError traceback; now named, rest listed."""
    (home / "odd.toml").write_text('name = "odd"\nreader = "amazon"\nprotocol = "din"\n'
                                   "description = 5\n")
    result = CliRunner().invoke(main, ["list", "datasets"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "odd.toml" in result.output and "description" in result.output
    assert "synthetic" in result.output


@pytest.mark.parametrize("group", ["", ",", " , "])
def test_list_models_with_an_empty_group_is_a_usage_error(group):
    """`--group ''` (an unset shell variable) listed every model; `--group ,` hinted at
    `--models`, an option `list` does not have."""
    result = CliRunner().invoke(main, ["list", "models", "--group", group])
    assert result.exit_code == 2, result.output
    assert "--group" in result.output and "--models" not in result.output
