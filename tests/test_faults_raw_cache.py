"""Raw-cache faults (issue 12 follow-up: faults 1, 7, 8, 15): ``--from`` is always looked at,
a different copy never silently loses to the cached one, an unreadable copy never becomes the
reference, only ctrbench's own temporary names are cleaned, and a bad local path says why."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctrbench import paths
from ctrbench.cards import load_dataset_card
from ctrbench.cli import main
from ctrbench.data.checksum_ledger import LEDGER_NAME
from ctrbench.data.download import fetch_report
from ctrbench.errors import ChecksumError, DataError

FIX = Path(__file__).parent / "fixtures"
ML = FIX / "movielens" / "ml-100k"
REVIEWS = gzip.decompress((FIX / "amazon" / "reviews.json.gz").read_bytes())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cards(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    root = tmp_path / "cards"
    (root / "datasets").mkdir(parents=True)
    monkeypatch.setenv("CTRBENCH_CARDS", str(root))
    monkeypatch.chdir(tmp_path)
    return root / "datasets"


def card(datasets: Path, name: str, file: str, extra: str = "", reader: str = "amazon") -> None:
    (datasets / f"{name}.toml").write_text(f"""\
name = "{name}"
reader = "{reader}"
protocol = "din"
[[sources]]
role = "reviews"
file = "{file}"
{extra}
[protocol_params]
max_len = 4
[fields]
user = ["user_id"]
context = ["month"]
""")


def mirror(tmp_path: Path, where: str, files: dict[str, bytes]) -> Path:
    folder = tmp_path / where
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def ledger(name: str) -> dict:
    return json.loads((paths.raw_dir(name) / LEDGER_NAME).read_text())


A = gzip.compress(REVIEWS)
B = gzip.compress(REVIEWS[: REVIEWS.index(b"\n", len(REVIEWS) // 2) + 1])  # fewer reviews


# --------------------------------------------------------------------------- fault 1
def test_a_different_unpinned_copy_given_with_from_is_refused_then_replaced(cards, tmp_path):
    card(cards, "mag", "r.json.gz")
    a = mirror(tmp_path, "a", {"r.json.gz": A})
    b = mirror(tmp_path, "b", {"r.json.gz": B})
    assert invoke("download", "mag", "--from", str(a)).exit_code == 0
    cached = paths.raw_dir("mag") / "r.json.gz"
    result = invoke("download", "mag", "--from", str(b))
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "cached, " not in result.output  # no table row
    for text in (str(b / "r.json.gz"), str(cached), sha(A)[:12], sha(B)[:12], "--replace"):
        assert text in result.output
    assert cached.read_bytes() == A  # the reference is untouched
    result = invoke("download", "mag", "--from", str(b), "--replace")
    assert result.exit_code == 0, result.output
    assert cached.read_bytes() == B and ledger("mag")["r.json.gz"]["recorded_sha256"] == sha(B)
    assert [f.status for f in fetch_report(load_dataset_card("mag"), from_dir=b)] == ["cached"]


def test_prepare_from_another_copy_is_never_the_old_store(cards, tmp_path):
    card(cards, "mag", "r.json.gz")
    a = mirror(tmp_path, "a", {"r.json.gz": A})
    b = mirror(tmp_path, "b", {"r.json.gz": B})
    first = invoke("prepare", "mag", "--from", str(a))
    assert first.exit_code == 0, first.output
    result = invoke("prepare", "mag", "--from", str(b))
    assert result.exit_code == 1 and "reused" not in result.output, result.output
    assert "--replace" in result.output
    result = invoke("prepare", "mag", "--from", str(b), "--replace")
    assert result.exit_code == 0 and ": built" in result.output, result.output
    assert invoke("prepare", "mag", "--from", str(a)).exit_code == 1  # B is the reference now


def test_a_copy_matching_the_pin_replaces_an_accepted_one(cards, tmp_path):
    card(cards, "dm", "r.json.gz", f'sha256 = "{sha(A)}"')
    bad = mirror(tmp_path, "bad", {"r.json.gz": B})
    good = mirror(tmp_path, "good", {"r.json.gz": A})
    assert invoke("download", "dm", "--from", str(bad), "--no-strict-hash").exit_code == 0
    fetched = fetch_report(load_dataset_card("dm"), from_dir=good)
    assert [(f.status, f.check, f.sha256) for f in fetched] == [
        ("copied", "sha256 verified", sha(A))]
    assert (paths.raw_dir("dm") / "r.json.gz").read_bytes() == A
    result = invoke("download", "dm", "--from", str(good))
    assert result.exit_code == 0 and "cached, sha256 verified" in result.output, result.output
    # and a bad copy given later is refused, not swapped for the verified cached one
    with pytest.raises(ChecksumError, match=str(bad)):
        fetch_report(load_dataset_card("dm"), from_dir=bad)
    assert (paths.raw_dir("dm") / "r.json.gz").read_bytes() == A


def ml_card(datasets: Path, extra: str = "") -> None:
    (datasets / "ml.toml").write_text(f"""\
name = "ml"
reader = "movielens"
protocol = "din"
[[sources]]
role = "archive"
file = "ml-100k.zip"
members = ["ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.user"]
member_lines = {{"u.data" = 28, "u.item" = 8, "u.user" = 6}}
{extra}
[protocol_params]
max_len = 5
[fields]
user = ["user_id", "gender"]
context = ["month"]
""")


def edited_folder(tmp_path: Path) -> Path:
    """The fixture's folder with one rating changed (the same line counts)."""
    folder = tmp_path / "edited" / "ml-100k"
    shutil.copytree(ML, folder)
    lines = (folder / "u.data").read_text().splitlines(keepends=True)
    fields = lines[0].split("\t")
    fields[2] = "1" if fields[2] != "1" else "2"
    lines[0] = "\t".join(fields)
    (folder / "u.data").write_text("".join(lines))
    return folder


def test_a_different_extracted_folder_is_compared_by_content(cards, tmp_path):
    ml_card(cards)
    cached = paths.raw_dir("ml") / "ml-100k" / "u.data"
    assert fetch_report(load_dataset_card("ml"), from_dir=ML)[0].status.startswith("copied")
    other = edited_folder(tmp_path)
    with pytest.raises(DataError) as err:
        fetch_report(load_dataset_card("ml"), from_dir=other)
    assert str(other) in str(err.value) and "--replace" in str(err.value)
    assert cached.read_bytes() == (ML / "u.data").read_bytes()
    fetched = fetch_report(load_dataset_card("ml"), from_dir=other, replace=True)
    assert fetched[0].status == "copied (extracted folder)"
    assert cached.read_bytes() == (other / "u.data").read_bytes()
    assert fetch_report(load_dataset_card("ml"), from_dir=other)[0].status.startswith("cached")


def test_an_extracted_folder_is_compared_with_a_cached_archive(cards, tmp_path):
    ml_card(cards)
    zipped = tmp_path / "zips"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "ml-100k.zip", "w") as zf:
        for p in sorted(ML.iterdir()):
            zf.write(p, f"ml-100k/{p.name}")
    assert fetch_report(load_dataset_card("ml"), from_dir=zipped)[0].status == "copied"
    same = fetch_report(load_dataset_card("ml"), from_dir=ML)
    assert same[0].status == "cached" and same[0].path.name == "ml-100k.zip"
    with pytest.raises(DataError, match="--replace"):
        fetch_report(load_dataset_card("ml"), from_dir=edited_folder(tmp_path))


# --------------------------------------------------------------------------- fault 7
def test_a_truncated_copy_never_becomes_the_reference(cards, tmp_path):
    card(cards, "mag", "r.json.gz")
    bad = mirror(tmp_path, "bad", {"r.json.gz": A[: len(A) // 2]})  # an interrupted transfer
    good = mirror(tmp_path, "good", {"r.json.gz": A})
    result = invoke("download", "mag", "--from", str(bad))
    assert result.exit_code == 1 and "truncated" in result.output, result.output
    assert "Traceback" not in result.output
    assert not (paths.raw_dir("mag") / "r.json.gz").exists()
    assert "r.json.gz" not in (ledger("mag") if (paths.raw_dir("mag") / LEDGER_NAME).exists()
                               else {})
    result = invoke("download", "mag", "--from", str(good))
    assert result.exit_code == 0, result.output


def test_a_corrupt_gzip_is_refused_cleanly(cards, tmp_path):
    card(cards, "mag", "r.json.gz")
    body = bytearray(A)
    body[len(body) // 2: len(body) // 2 + 64] = b"\xff" * 64
    result = invoke("download", "mag", "--from", str(mirror(tmp_path, "bad",
                                                             {"r.json.gz": bytes(body)})))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert not (paths.raw_dir("mag") / "r.json.gz").exists()


def test_after_deleting_the_reference_the_hint_names_a_command_that_works(cards, tmp_path):
    card(cards, "mag", "r.json.gz")
    cut = mirror(tmp_path, "cut", {"r.json.gz": B})  # readable, but not the whole file
    good = mirror(tmp_path, "good", {"r.json.gz": A})
    assert invoke("download", "mag", "--from", str(cut)).exit_code == 0
    (paths.raw_dir("mag") / "r.json.gz").unlink()  # "delete it and download again"
    result = invoke("download", "mag", "--from", str(good))
    assert result.exit_code == 1
    command = f"ctrbench download mag --from {good} --replace"
    assert command in result.output, result.output
    result = invoke(*command.split()[1:])
    assert result.exit_code == 0, result.output
    assert (paths.raw_dir("mag") / "r.json.gz").read_bytes() == A


# --------------------------------------------------------------------------- fault 8
def test_a_cached_source_named_tmp_is_kept(cards, tmp_path):
    card(cards, "mine", "tmp_reviews.json.gz")
    (cards / "mine.toml").write_text((cards / "mine.toml").read_text().replace(
        '[protocol_params]', '[[sources]]\nrole = "meta"\nfile = "tmpmeta0123"\n\n'
                             '[protocol_params]'))
    src = mirror(tmp_path, "m", {"tmp_reviews.json.gz": A, "tmpmeta0123": b"{}\n"})
    assert invoke("download", "mine", "--from", str(src)).exit_code == 0
    raw = paths.raw_dir("mine")
    leftover = raw / ".tmp_reviews.json.gz.tmp-0123abcd"
    leftover.write_bytes(b"half")
    result = invoke("download", "mine")
    assert result.exit_code == 0, result.output
    removed = [line for line in result.output.splitlines() if line.startswith("removed")]
    assert removed == [f"removed {leftover} (left by an interrupted run)"], result.output
    assert (raw / "tmp_reviews.json.gz").is_file() and (raw / "tmpmeta0123").is_file()
    assert not leftover.exists()


# --------------------------------------------------------------------------- fault 15
@pytest.mark.parametrize("kind, says", [
    ("missing", "does not exist"),
    ("directory", "is a directory"),
    ("loop", "symbolic link loop"),
    ("dangling", "broken symbolic link"),
])
def test_a_bad_local_path_says_where_it_looked_and_why(cards, kind, says):
    data = cards.parent.parent / "data"
    data.mkdir()
    target = data / "inter.csv"
    if kind == "directory":
        target.mkdir()
    elif kind == "loop":
        os.symlink(target, target)
    elif kind == "dangling":
        os.symlink(data / "gone.csv", target)
    card(cards, "tcard", "../../data/inter.csv", reader="table")
    result = invoke("download", "tcard")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert str(target) in result.output and says in result.output, result.output
