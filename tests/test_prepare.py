"""``prepare``: keyed reuse, rebuild on change, atomic stores, and the CLI command."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ctrbench import paths
from ctrbench.cli import main
from ctrbench.data import prepare as prep
from ctrbench.data.store import SPLITS

FIX = Path(__file__).parent / "fixtures" / "amazon"

CARD = """\
description = "the real-derived Amazon fixture"
reader = "amazon"
protocol = "din"

[[sources]]
role = "reviews"
file = "{reviews}"

[[sources]]
role = "meta"
file = "{meta}"

[reader_params]
category_rule = "last_of_last"

[protocol_params]
max_len = {max_len}
seed = 1

[fields]
user = ["user_id", "hist_len_bucket", "fav_cate"]
context = ["year", "month", "gap_bucket"]
{extra}
"""


def write_card(root: Path, name: str = "fixture", max_len: int = 4, extra: str = "",
               reviews: Path = FIX / "reviews.json.gz") -> None:
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    (root / "datasets" / f"{name}.toml").write_text(CARD.format(
        reviews=reviews, meta=FIX / "meta.json.gz", max_len=max_len, extra=extra))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated cache and card directory; counts the builder's calls."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    monkeypatch.chdir(tmp_path)
    write_card(tmp_path / "cards")
    calls = []
    real = prep.build_samples

    def counting(tables, card):
        calls.append(card.name)
        return real(tables, card)

    monkeypatch.setattr(prep, "build_samples", counting)
    return tmp_path, calls


def test_prepare_builds_then_reuses(env):
    _, calls = env
    first = prep.prepare("fixture")
    assert not first.reused and calls == ["fixture"]
    path = first.data.path
    assert path.parent == paths.prepared_root() and path.name.startswith("fixture-")
    meta = first.data.meta
    assert meta["code_version"] == prep.DATA_CODE_VERSION
    assert set(meta["raw_sha256"]) == {"reviews", "meta"}
    assert meta["card_hash"] and meta["data_hash"] and meta["counts"]["interactions"] == 59
    assert {s: meta["splits"][s]["rows"] for s in SPLITS} == {"train": 46, "valid": 24,
                                                              "test": 24}
    assert first.data.schema.max_len == 4
    mtime = (path / "meta.json").stat().st_mtime_ns
    second = prep.prepare_dataset("fixture")
    assert calls == ["fixture"]  # not rebuilt
    assert second.path == path and (path / "meta.json").stat().st_mtime_ns == mtime
    assert prep.find_prepared("fixture").path == path
    columns = first.data.split("train")
    assert columns["hist_item_id"].shape == (46, 4) and columns["label"].dtype == np.float32


def test_changed_parameter_or_raw_file_builds_a_new_store(env):
    tmp, calls = env
    a = prep.prepare_dataset("fixture")
    write_card(tmp / "cards", max_len=6)
    b = prep.prepare_dataset("fixture")
    assert b.path != a.path and a.path.is_dir() and b.schema.max_len == 6
    # same card, different raw bytes (a local file edited in place) -> new key as well
    edited = tmp / "reviews_copy.json.gz"
    edited.write_bytes((FIX / "reviews.json.gz").read_bytes())
    write_card(tmp / "cards", reviews=edited)
    c = prep.prepare_dataset("fixture")
    import gzip

    with gzip.open(FIX / "reviews.json.gz", "rb") as fh:
        lines = fh.readlines()[:-1]
    with gzip.open(edited, "wb") as fh:
        fh.writelines(lines)
    d = prep.prepare_dataset("fixture")
    assert d.path != c.path and d.meta["counts"]["interactions"] == 58
    assert len(calls) == 4
    assert prep.find_prepared("fixture").path == d.path


def test_force_rebuilds_in_place(env):
    _, calls = env
    a = prep.prepare_dataset("fixture")
    b = prep.prepare_dataset("fixture", force=True)
    assert b.path == a.path and len(calls) == 2
    assert not [p for p in paths.prepared_root().iterdir() if ".tmp-" in p.name]


def test_interrupted_build_leaves_no_finished_store(env, monkeypatch):
    real_save = np.save
    saved = []

    def failing_save(file, arr, *args, **kwargs):
        saved.append(file)
        if len(saved) == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of writing
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_dataset("fixture")
    root = paths.prepared_root()
    assert list(root.iterdir()) == []  # neither a finished store nor a temp dir
    assert prep.find_prepared("fixture") is None
    monkeypatch.setattr(np, "save", real_save)
    assert (prep.prepare_dataset("fixture").path / "meta.json").is_file()


def test_stale_temp_dirs_are_cleaned(env):
    root = paths.prepared_root()
    stale = root / ".fixture-0123456789abcdef.tmp-deadbeef"
    fresh = root / ".fixture-0123456789abcdef.tmp-cafecafe"
    for d in (stale, fresh):
        (d / "train").mkdir(parents=True)
    old = time.time() - 2 * prep.STALE_SECONDS
    os.utime(stale, (old, old))
    prep.prepare_dataset("fixture")
    assert not stale.exists()
    assert fresh.exists()  # maybe another process writing right now


def test_cli_prepare_prints_summary_and_reuses(env):
    runner = CliRunner()
    result = runner.invoke(main, ["prepare", "fixture"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "built" in out and str(paths.prepared_root()) in out
    assert "train" in out and "46" in out and "0.500" in out
    assert "reviews.json.gz (amazon 2014): 59 lines, none malformed" in out
    assert "elapsed:" in out
    again = runner.invoke(main, ["prepare", "fixture"])
    assert again.exit_code == 0 and "reused existing store" in again.output


def test_cli_prepare_reports_malformed_lines(env):
    tmp, _ = env
    write_card(tmp / "cards", name="broken", reviews=FIX / "reviews_malformed.json.gz")
    result = CliRunner().invoke(main, ["prepare", "broken"])
    assert result.exit_code == 0, result.output
    assert "4 malformed and skipped (first at lines 3 (invalid JSON)" in result.output
    strict = CliRunner().invoke(main, ["prepare", "broken", "--strict", "--force"])
    assert strict.exit_code == 1
    assert "line 3: invalid JSON" in strict.output and "Traceback" not in strict.output


def test_expected_statistics_are_checked(env):
    tmp, _ = env
    write_card(tmp / "cards", name="stats", extra=(
        "\n[expected]\nusers = 12\ninteractions = 60\nrows_test = 24\n"))
    result = CliRunner().invoke(main, ["prepare", "stats"])
    assert result.exit_code == 0, result.output
    assert "differs from the card's [expected]: interactions: expected 60, got 59" in (
        result.output)
    assert "users:" not in result.output and "rows_test:" not in result.output


def test_cli_unknown_name_and_bad_card(env):
    tmp, _ = env
    result = CliRunner().invoke(main, ["prepare", "fixtur"])
    assert result.exit_code == 1
    assert "Did you mean: fixture?" in result.output and "Traceback" not in result.output
    write_card(tmp / "cards", name="typo", extra='\n[expected]\nusers = 12\n')
    text = (tmp / "cards" / "datasets" / "typo.toml").read_text()
    (tmp / "cards" / "datasets" / "typo.toml").write_text(text.replace("protocol =",
                                                                        "protocl ="))
    result = CliRunner().invoke(main, ["prepare", "typo"])
    assert result.exit_code == 1
    assert "unknown key(s) 'protocl' (did you mean 'protocol'?)" in result.output
    write_card(tmp / "cards", name="badparam", extra="")
    text = (tmp / "cards" / "datasets" / "badparam.toml").read_text()
    (tmp / "cards" / "datasets" / "badparam.toml").write_text(text.replace("seed = 1",
                                                                            "sed = 1"))
    result = CliRunner().invoke(main, ["prepare", "badparam"])
    assert result.exit_code == 1 and "'sed'" in result.output


def test_store_built_before_repeats_were_dropped_is_rebuilt_under_the_same_key(env):
    import json

    first = prep.prepare("fixture")
    meta_path = first.data.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["cleaning"]  # as written by ctrbench before repeated events were dropped
    meta_path.write_text(json.dumps(meta))
    second = prep.prepare("fixture")
    assert not second.reused and second.data.path == first.data.path
    assert second.data.meta["data_hash"] == first.data.meta["data_hash"]  # no repeats here
    assert "cleaning" in second.data.meta
    assert prep.prepare("fixture").reused
