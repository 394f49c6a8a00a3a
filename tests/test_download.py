"""Downloads through pooch against a real local HTTP server, offline mirrors, local files, CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctrbench import paths
from ctrbench.cards import load_dataset_card
from ctrbench.cli import main
from ctrbench.data import checksum_ledger
from ctrbench.data import download as dl
from ctrbench.data.checksum_ledger import raw_sha256
from ctrbench.data.download import fetch_report, fetch_sources
from ctrbench.errors import ChecksumError, DataError

GOOD = b"user\titem\n" + b"".join(f"u{i}\ti{i % 7}\n".encode() for i in range(500))
BAD = GOOD[:-40] + b"corrupted tail\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_card(datasets: Path, name: str, sources: str, reader: str = "amazon") -> None:
    (datasets / f"{name}.toml").write_text(
        f'name = "{name}"\nreader = "{reader}"\nprotocol = "din"\n\n{sources}'
    )


def source(file: str, **keys) -> str:
    lines = ["[[sources]]", 'role = "reviews"', f'file = "{file}"']
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def raw_files(name: str) -> list[str]:
    """Files in the raw cache of ``name`` (temporary leftovers included), ledger excluded."""
    folder = paths.raw_dir(name)
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != dl.LEDGER_NAME)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- downloads
def test_good_download_then_cached(home, http_server):
    http_server.files["r.tsv"] = GOOD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD),
                                   size=len(GOOD)))
    card = load_dataset_card("toy")
    report = fetch_report(card)
    assert [(f.role, f.status, f.sha256, f.size) for f in report] == [
        ("reviews", "downloaded", sha(GOOD), len(GOOD))]
    path = fetch_sources(card)["reviews"]  # second call: from the cache
    assert path == paths.raw_dir("toy") / "r.tsv"
    assert path.read_bytes() == GOOD
    assert http_server.requests["r.tsv"] == 1
    assert fetch_report(card)[0].status == "cached"
    ledger = json.loads((paths.raw_dir("toy") / dl.LEDGER_NAME).read_text())
    assert ledger["r.tsv"]["sha256"] == sha(GOOD) and ledger["r.tsv"]["md5"] == md5(GOOD)


def test_extending_card_shares_the_raw_cache(home, http_server):
    http_server.files["r.tsv"] = GOOD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    (home / "toy-dien.toml").write_text('extends = "toy"\nprotocol = "dien"\n')
    first = fetch_sources(load_dataset_card("toy-dien"))["reviews"]
    assert first == paths.raw_dir("toy") / "r.tsv"
    assert fetch_report(load_dataset_card("toy"))[0].status == "cached"
    assert http_server.requests["r.tsv"] == 1


def test_corrupt_download_is_rejected_and_removed(home, http_server):
    http_server.files["r.tsv"] = BAD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    card = load_dataset_card("toy")
    with pytest.raises(ChecksumError) as err:
        fetch_sources(card)
    message = str(err.value)
    assert "r.tsv" in message and sha(GOOD) in message and sha(BAD) in message
    assert raw_files("toy") == []  # no final file, no temporary leftover
    http_server.files["r.tsv"] = GOOD  # the server is repaired: a later fetch works
    assert fetch_sources(card)["reviews"].read_bytes() == GOOD
    assert http_server.requests["r.tsv"] == 2


def test_md5_only_card_is_verified(home, http_server):
    http_server.files["r.tsv"] = BAD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), md5=md5(GOOD)))
    with pytest.raises(ChecksumError) as err:
        fetch_sources(load_dataset_card("toy"))
    assert f"expected md5 {md5(GOOD)}" in str(err.value)
    assert f"actual md5 {md5(BAD)}" in str(err.value)


def test_mirror_used_after_failing_url(home, http_server):
    http_server.files["mirror/r.tsv"] = GOOD
    write_card(home, "toy", source("r.tsv", url=http_server.url("missing/r.tsv"),
                                   mirrors=[http_server.url("mirror/r.tsv")], sha256=sha(GOOD)))
    report = fetch_report(load_dataset_card("toy"))
    assert report[0].status == "downloaded"
    assert report[0].origin == http_server.url("mirror/r.tsv")
    assert http_server.requests["missing/r.tsv"] == 1
    assert http_server.requests["mirror/r.tsv"] == 1


def test_unreachable_url_is_a_data_error(home):
    url = f"http://127.0.0.1:{closed_port()}/r.tsv"
    write_card(home, "toy", source("r.tsv", url=url, sha256=sha(GOOD)))
    with pytest.raises(DataError) as err:
        fetch_sources(load_dataset_card("toy"))
    assert not isinstance(err.value, ChecksumError)
    assert url in str(err.value) and "--from" in str(err.value)
    assert raw_files("toy") == []


def test_http_error_is_a_data_error(home, http_server):
    write_card(home, "toy", source("r.tsv", url=http_server.url("nope"), sha256=sha(GOOD)))
    with pytest.raises(DataError, match="404"):
        fetch_sources(load_dataset_card("toy"))


def test_cached_file_corrupted_on_disk_is_fetched_again(home, http_server):
    http_server.files["r.tsv"] = GOOD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    card = load_dataset_card("toy")
    path = fetch_sources(card)["reviews"]
    path.write_bytes(BAD)  # bit rot / a truncated copy
    assert fetch_report(card)[0].status == "downloaded"
    assert path.read_bytes() == GOOD
    assert http_server.requests["r.tsv"] == 2


def test_size_mismatch_is_rejected(home, http_server):
    http_server.files["r.tsv"] = GOOD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), size=len(GOOD) + 1))
    with pytest.raises(ChecksumError, match="size mismatch"):
        fetch_sources(load_dataset_card("toy"))
    assert raw_files("toy") == []


def test_lenient_mode_keeps_a_mismatching_file(home, http_server):
    http_server.files["r.tsv"] = BAD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    path = fetch_sources(load_dataset_card("toy"), strict_hash=False)["reviews"]
    assert path.read_bytes() == BAD


# --------------------------------------------------------------------------- unpinned files
def test_unpinned_file_records_sha256_and_checks_lines(home, http_server):
    body = gzip.compress(GOOD)
    http_server.files["meta.gz"] = body
    write_card(home, "toy", source("meta.gz", url=http_server.url("meta.gz"), lines=501))
    card = load_dataset_card("toy")
    report = fetch_report(card)
    assert report[0].sha256 == sha(body) and not report[0].pinned
    entry = json.loads((paths.raw_dir("toy") / dl.LEDGER_NAME).read_text())["meta.gz"]
    assert entry["recorded_sha256"] == sha(body) and entry["lines"] == 501
    # the server now sends other content: once the cache is gone, the new file is refused
    (paths.raw_dir("toy") / "meta.gz").unlink()
    http_server.files["meta.gz"] = gzip.compress(GOOD + b"x\n")
    with pytest.raises(ChecksumError, match="changed since its sha256 was first recorded"):
        fetch_sources(card)
    assert raw_files("toy") == []


def test_unpinned_file_with_wrong_line_count(home, http_server):
    http_server.files["meta.gz"] = gzip.compress(GOOD)
    write_card(home, "toy", source("meta.gz", url=http_server.url("meta.gz"), lines=400))
    with pytest.raises(ChecksumError, match="expected 400 lines, actual 501 lines"):
        fetch_sources(load_dataset_card("toy"))
    assert raw_files("toy") == []


def test_raw_sha256_hashes_each_file_once(home, http_server, monkeypatch):
    http_server.files["r.tsv"] = GOOD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    files = fetch_sources(load_dataset_card("toy"))
    calls = []
    real_hash = checksum_ledger.hash_file
    monkeypatch.setattr(checksum_ledger, "hash_file", lambda p: calls.append(p) or real_hash(p))
    assert raw_sha256(files) == {"reviews": sha(GOOD)}
    assert raw_sha256(files) == {"reviews": sha(GOOD)}
    assert calls == []  # the download already recorded the digests
    files["reviews"].write_bytes(BAD)  # a changed file is hashed again
    assert raw_sha256(files) == {"reviews": sha(BAD)}
    assert len(calls) == 1


# --------------------------------------------------------------------------- offline mirror
def test_from_dir_good_corrupt_and_missing(home, tmp_path, http_server):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "r.tsv").write_bytes(GOOD)
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    card = load_dataset_card("toy")
    report = fetch_report(card, from_dir=mirror)
    assert report[0].status == "copied" and report[0].path.read_bytes() == GOOD
    assert http_server.requests["r.tsv"] == 0

    write_card(home, "toy2", source("r.tsv", sha256=sha(GOOD)))
    (mirror / "r.tsv").write_bytes(BAD)
    with pytest.raises(ChecksumError) as err:
        fetch_sources(load_dataset_card("toy2"), from_dir=mirror)
    assert sha(GOOD) in str(err.value) and sha(BAD) in str(err.value)
    assert raw_files("toy2") == []

    (mirror / "r.tsv").unlink()
    with pytest.raises(DataError, match=r"r\.tsv is not there"):
        fetch_sources(load_dataset_card("toy2"), from_dir=mirror)
    with pytest.raises(DataError, match="no such file or directory"):
        fetch_sources(card, from_dir=tmp_path / "nowhere")


def test_from_dir_unpinned_file_with_wrong_line_count_is_removed(home, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "meta.gz").write_bytes(gzip.compress(GOOD))
    write_card(home, "toy", source("meta.gz", lines=7))
    with pytest.raises(ChecksumError, match="expected 7 lines, actual 501 lines"):
        fetch_sources(load_dataset_card("toy"), from_dir=mirror)
    assert raw_files("toy") == []


def test_no_url_and_no_mirror_dir_asks_for_from(home):
    write_card(home, "toy", source("r.tsv", sha256=sha(GOOD)))
    with pytest.raises(DataError) as err:
        fetch_sources(load_dataset_card("toy"))
    assert "no download URL" in str(err.value) and "--from" in str(err.value)


# --------------------------------------------------------------------------- local files
def test_local_file_used_in_place_and_verified(home):
    (home / "data").mkdir()
    (home / "data" / "log.csv").write_bytes(GOOD)
    write_card(home, "mine", source("data/log.csv", sha256=sha(GOOD)), reader="table")
    report = fetch_report(load_dataset_card("mine"))
    assert report[0].status == "local" and report[0].path == home / "data" / "log.csv"
    assert raw_files("mine") == []  # nothing copied into the cache
    (home / "data" / "log.csv").write_bytes(BAD)
    with pytest.raises(ChecksumError):
        fetch_sources(load_dataset_card("mine"))


def test_card_without_sources_gives_nothing(home):
    write_card(home, "gen", "", reader="synthetic")
    assert fetch_sources(load_dataset_card("gen")) == {}


# --------------------------------------------------------------------------- CLI
def test_cli_download_table(home, http_server):
    http_server.files["r.tsv"] = GOOD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    result = CliRunner().invoke(main, ["download", "toy"])
    assert result.exit_code == 0, result.output
    assert "reviews" in result.stdout and "r.tsv" in result.stdout
    assert sha(GOOD) in result.stdout and "downloaded" in result.stdout
    again = CliRunner().invoke(main, ["download", "toy"])
    assert again.exit_code == 0 and "cached" in again.stdout


def test_cli_unknown_name_suggests(home, http_server):
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    result = CliRunner().invoke(main, ["download", "tyo"])
    assert result.exit_code == 1
    assert "Did you mean: toy" in result.output
    assert "Traceback" not in result.output


def test_cli_checksum_mismatch_is_clean(home, http_server):
    http_server.files["r.tsv"] = BAD
    write_card(home, "toy", source("r.tsv", url=http_server.url("r.tsv"), sha256=sha(GOOD)))
    result = CliRunner().invoke(main, ["download", "toy"])
    assert result.exit_code == 1
    assert "r.tsv" in result.output
    assert sha(GOOD) in result.output and sha(BAD) in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception


# --------------------------------------------------------------------------- the real cards
REAL_CARDS = ("electronics", "books", "electronics-dien", "books-dien", "digital-music",
              "movielens-100k", "movielens-1m", "magazines-2018", "magazines-2023")
# the shared data folder lies beside the checkout (../shared), in CI as on a developer machine
SHARED_AMAZON = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"


@pytest.mark.parametrize("name", REAL_CARDS)
def test_real_card_is_consistent(name, monkeypatch, tmp_path):
    import pandas as pd

    from ctrbench.cards import DATASET_CARD_KEYS, load_raw_card
    from ctrbench.data.build import FieldChoice, ProtocolParams
    from ctrbench.data.describe import COUNT_KEYS, SPLIT_KEYS
    from ctrbench.data.sources.amazon import READER_PARAM_KEYS

    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path))  # no user cards shadow the built-ins
    card = load_dataset_card(name)  # validates top-level and source keys
    assert set(load_raw_card("datasets", name)) <= set(DATASET_CARD_KEYS)
    assert card.license and card.citation and card.description
    ProtocolParams.from_card(card)
    users = (pd.DataFrame(columns=["user", "gender", "age", "occupation", "zip"])
             if card.reader == "movielens" else None)
    FieldChoice.from_card(card, users)
    if card.reader == "amazon":
        assert set(card.reader_params) <= set(READER_PARAM_KEYS)
        rule = "last_of_first" if card.protocol == "dien" else "last_of_last"
        assert card.reader_params["category_rule"] == rule
        # whole-day timestamps before the 2023 release
        assert ("hour" in card.fields["context"]) == card.name.endswith("2023")
    # every expectation is a statistic `ctrbench stats` measures
    measured = set(COUNT_KEYS) | {f"{k}_{s}" for k in SPLIT_KEYS for s in ("train", "valid",
                                                                            "test")}
    assert set(card.expected) <= measured
    for src in card.sources:  # pinned, or the notes say why not
        assert src.sha256 or src.md5 or "checksum" in card.notes
        assert src.url or "--from" in card.notes


def test_real_row_counts_follow_the_protocols():
    electronics = load_dataset_card("electronics").expected
    # DIN's own train set (our train + valid) and test set, as DIN and BARS report them
    assert electronics["rows_train"] + electronics["rows_valid"] == 2_608_764
    assert electronics["rows_test"] == 384_806
    for name in ("electronics", "books"):
        e = load_dataset_card(name).expected
        assert e["rows_test"] == e["rows_valid"] == 2 * e["users"]
        assert e["rows_train"] == 2 * (e["interactions"] - 3 * e["users"])
        dien = load_dataset_card(f"{name}-dien")
        assert dien.protocol == "dien" and dien.sources == load_dataset_card(name).sources
        d = dien.expected
        assert d["rows_train"] + d["rows_valid"] + d["rows_test"] == 2 * d["users"]
        assert d["rows_train"] == 2 * round(0.8 * d["users"])


@pytest.mark.skipif(not SHARED_AMAZON.is_dir(), reason="needs the shared Amazon slices")
def test_digital_music_from_the_shared_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path))
    result = CliRunner().invoke(main, ["download", "digital-music", "--from", str(SHARED_AMAZON)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("copied, sha256 verified") == 2
