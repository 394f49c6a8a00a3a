"""Raw files the user already has (issue 16.1, 16.2; issue 12 D12, D11, D17, ``--from FILE``):
extracted MovieLens folders, ``--from`` one level down, ``--no-strict-hash`` that sticks, the
raw-cache lock that cleans what a killed run left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctrbench import paths
from ctrbench.cards import load_dataset_card
from ctrbench.cli import main
from ctrbench.data import prepare as prep
from ctrbench.data.download import fetch_report, fetch_sources
from ctrbench.errors import ChecksumError, DataError

FIX = Path(__file__).parent / "fixtures"
ML = FIX / "movielens" / "ml-100k"
MEMBERS = '["ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.user"]'


@pytest.fixture
def cards(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    root = tmp_path / "cards"
    (root / "datasets").mkdir(parents=True)
    monkeypatch.setenv("CTRBENCH_CARDS", str(root))
    monkeypatch.chdir(tmp_path)
    return root / "datasets"


def ml_card(datasets: Path, name: str = "ml", file: str = "ml-100k.zip", extra: str = "") -> None:
    (datasets / f"{name}.toml").write_text(f"""\
name = "{name}"
reader = "movielens"
protocol = "din"
[[sources]]
role = "archive"
file = "{file}"
md5 = "0e33842e24a9c977be4e0107933c0723"
members = {MEMBERS}
{extra}
[protocol_params]
max_len = 5
[fields]
user = ["user_id", "gender"]
context = ["month"]
""")


LINES = 'member_lines = {"u.data" = 28, "u.item" = 8, "u.user" = 6}'


def extracted(tmp_path: Path, where: str) -> Path:
    """The fixture's members copied to ``tmp_path/where/ml-100k``; returns ``tmp_path/where``."""
    shutil.copytree(ML, tmp_path / where / "ml-100k")
    return tmp_path / where


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# --------------------------------------------------------------------------- 16.1
def test_from_the_extracted_folder_itself(cards, tmp_path):
    ml_card(cards, extra=LINES)
    folder = extracted(tmp_path, "dl") / "ml-100k"  # holds u.data, u.item, u.user
    result = invoke("download", "ml", "--from", str(folder))
    assert result.exit_code == 0, result.output
    assert "copied (extracted folder)" in result.output
    assert "members' line counts verified (u.data, u.item, u.user)" in result.output
    cached = paths.raw_dir("ml") / "ml-100k"
    assert sorted(p.name for p in cached.iterdir()) == ["u.data", "u.item", "u.user"]
    # prepare now reads the cached folder without --from
    result = invoke("prepare", "ml")
    assert result.exit_code == 0, result.output
    assert [f.status for f in fetch_report(load_dataset_card("ml"))] == [
        "cached (extracted folder)"]


def test_from_the_parent_folder_looks_one_level_down(cards, tmp_path):
    ml_card(cards)  # no member_lines: nothing published to check against
    result = invoke("download", "ml", "--from", str(extracted(tmp_path, "downloads")))
    assert result.exit_code == 0, result.output
    assert "unverified: no published sizes" in result.output
    zipped = tmp_path / "zips"
    (zipped / "movielens").mkdir(parents=True)
    shutil.copy(FIX / "table" / "items.csv", zipped / "movielens" / "ml-100k.zip")
    # a file one level down is found too (and here fails its md5)
    shutil.rmtree(paths.raw_dir("ml"))
    result = invoke("download", "ml", "--from", str(zipped))
    assert result.exit_code == 1 and "checksum mismatch for ml-100k.zip" in result.output


def test_card_naming_the_extracted_folder_is_used_in_place(cards, tmp_path):
    extracted(cards.parent, "data")
    ml_card(cards, file="../data/ml-100k", extra=LINES)
    fetched = fetch_report(load_dataset_card("ml"))
    assert [(f.status, f.path.resolve()) for f in fetched] == [
        ("local (extracted folder)", cards.parent / "data" / "ml-100k")]
    assert "verified" in fetched[0].check
    assert invoke("prepare", "ml").exit_code == 0


def test_wrong_member_line_count_is_refused(cards, tmp_path):
    ml_card(cards, extra='member_lines = {"u.data" = 100000}')
    with pytest.raises(ChecksumError, match=r"u\.data .*expected 100,000 lines"):
        fetch_report(load_dataset_card("ml"), from_dir=extracted(tmp_path, "dl"))
    assert not (paths.raw_dir("ml") / "ml-100k").exists()  # nothing unverified is cached


def test_edited_cached_folder_is_copied_again(cards, tmp_path):
    ml_card(cards, extra=LINES)
    mirror = extracted(tmp_path, "dl")
    fetch_report(load_dataset_card("ml"), from_dir=mirror)
    cached = paths.raw_dir("ml") / "ml-100k" / "u.data"
    cached.write_text(cached.read_text() + "9\t9\t9\t9\n")  # one line more than published
    fetched = fetch_report(load_dataset_card("ml"), from_dir=mirror)
    assert fetched[0].status == "copied (extracted folder)"
    assert cached.read_text() == (ML / "u.data").read_text()


def test_self_made_zip_hint_names_the_real_options(cards, tmp_path):
    ml_card(cards)
    mine = tmp_path / "mine"
    mine.mkdir()
    with zipfile.ZipFile(mine / "ml-100k.zip", "w") as zf:
        for p in sorted(ML.iterdir()):
            zf.write(p, f"ml-100k/{p.name}")
    result = invoke("download", "ml", "--from", str(mine))
    assert result.exit_code == 1
    assert "pass the extracted folder" in result.output and "--no-strict-hash" in result.output
    assert "u.data, u.item, u.user" in result.output


def test_missing_file_lists_what_the_mirror_holds(cards, tmp_path):
    ml_card(cards)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not there") as err:
        fetch_report(load_dataset_card("ml"), from_dir=tmp_path / "empty")
    assert "sub/notes.txt" in str(err.value) and "extracted folder ml-100k/" in str(err.value)


# --------------------------------------------------------------------------- --from FILE
def test_from_a_plain_file(cards, tmp_path):
    ml_card(cards)
    folder = tmp_path / "z"
    folder.mkdir()
    (folder / "ml-100k.zip").write_bytes(b"not the archive")
    result = invoke("download", "ml", "--from", str(folder / "ml-100k.zip"), "--no-strict-hash")
    assert result.exit_code == 0, result.output  # a file named like the source: its folder
    other = tmp_path / "other.txt"
    other.write_text("x")
    result = invoke("download", "ml", "--from", str(other))
    assert result.exit_code == 1
    assert "is a file, not a directory" in result.output and "no such" not in result.output


# --------------------------------------------------------------------------- 16.2 / D12
def test_no_strict_hash_says_unverified_and_the_file_is_kept(cards, tmp_path):
    ml_card(cards)
    mirror = tmp_path / "m"
    mirror.mkdir()
    (mirror / "ml-100k.zip").write_bytes(b"a re-zipped archive")
    result = invoke("download", "ml", "--from", str(mirror), "--no-strict-hash")
    assert result.exit_code == 0, result.output
    assert "unverified: accepted with --no-strict-hash" in result.output
    assert "verified" not in result.output.replace("unverified", "")
    # the mismatch said once, without the hint to pass the option already given
    assert result.output.count("checksum mismatch") <= 1, result.output
    assert "to use this file anyway" not in result.output, result.output
    target = paths.raw_dir("ml") / "ml-100k.zip"
    ledger = json.loads((target.parent / "checksums.json").read_text())
    assert ledger["ml-100k.zip"]["accepted_sha256"] == ledger["ml-100k.zip"]["sha256"]
    # a later strict fetch (download or prepare) keeps it: no delete, no network
    fetched = fetch_report(load_dataset_card("ml"))
    assert [(f.status, f.check) for f in fetched] == [
        ("cached", "unverified: accepted with --no-strict-hash")]
    assert target.read_bytes() == b"a re-zipped archive"
    result = invoke("prepare", "ml")
    assert target.is_file() and "not a readable zip" in result.output
    # changed content is no longer the accepted file
    target.write_bytes(b"something else")
    with pytest.raises(DataError):
        fetch_sources(load_dataset_card("ml"))


# --------------------------------------------------------------------------- D11
AMAZON = f"""\
name = "am"
reader = "amazon"
[[sources]]
role = "reviews"
file = "{FIX / 'amazon' / 'reviews_malformed.json.gz'}"
[protocol_params]
max_len = 4
[fields]
user = ["user_id"]
context = ["month"]
"""


def test_strict_after_a_lenient_prepare_is_not_silently_reused(cards):
    (cards / "am.toml").write_text(AMAZON)
    assert invoke("prepare", "am").exit_code == 0
    result = invoke("prepare", "am", "--strict")
    assert result.exit_code == 1
    assert "line 3" in result.output and "reused" not in result.output
    assert invoke("prepare", "am").exit_code == 0  # lenient reuse still works


def test_strict_reuses_a_clean_store(cards):
    ml_card(cards, extra=LINES)
    (cards / "am.toml").write_text(AMAZON.replace("reviews_malformed", "reviews"))
    assert invoke("prepare", "am").exit_code == 0
    result = invoke("prepare", "am", "--strict")
    assert result.exit_code == 0 and "reused existing store" in result.output


# --------------------------------------------------------------------------- D17
def test_leftovers_in_the_raw_cache_are_removed_by_the_next_prepare(cards):
    raw = paths.raw_dir("synthetic")
    leftovers = [raw / ".0123abcd.tmp-deadbeef", raw / ".ml-100k.zip.1234.part",
                 raw / "tmpa1b2c3"]
    leftovers[0].mkdir(parents=True)
    (leftovers[0] / "reviews.json.gz").write_bytes(b"half")
    leftovers[1].write_bytes(b"half")
    leftovers[2].write_bytes(b"half")
    prep.prepare("synthetic")
    assert not any(p.exists() for p in leftovers)


def test_prepare_killed_with_sigkill_leaves_nothing_the_next_prepare_keeps(cards, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "ctrbench.cli", "prepare", "synthetic"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raw = paths.raw_dir("synthetic")
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not list(raw.glob(".*.tmp-*")):
            assert proc.poll() is None, "prepare finished before it could be killed"
            time.sleep(0.005)
        assert list(raw.glob(".*.tmp-*")), "no temporary folder appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(raw.glob(".*.tmp-*"))  # the killed run's half-written world
    prep.prepare("synthetic")
    assert not list(raw.glob(".*.tmp-*"))
    assert len([p for p in raw.iterdir() if p.is_dir()]) == 1  # the finished world
