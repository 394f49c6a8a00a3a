"""The prepared store under faults (a fault hunt of 2026-12-01): a store damaged after it was
finished (cut or empty column files, a column missing or of the wrong dtype or length, an edited
``meta.json``), stores written by concurrent or killed ``prepare`` runs, a full disk, odd
``CTRBENCH_HOME`` values and edge protocol parameters. Each case failed before its fix."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.data import prepare as prep
from ctrbench.data.store import SPLITS, open_store
from ctrbench.errors import DataError

REPO = Path(__file__).resolve().parents[1]

CARD = """description = "a shop's orders"
reader = "table"
protocol = "din"
version = 1
[[sources]]
role = "interactions"
file = "../data/orders.csv"
[reader_params]
user_col = "u"
item_col = "i"
time_col = "t"
[protocol_params]
max_len = 5
{params}
[fields]
user = ["user_id"]
context = ["year"]
"""


def orders(users: int = 30, per_user: int = 6, items: int = 20) -> str:
    return "".join(f"c{u},p{(u * 3 + k) % items},{1_600_000_000 + u * 100 + k * 86_400}\n"
                   for u in range(users) for k in range(per_user))


def shop(tmp_path: Path, monkeypatch, log: str | None = None, params: str = "") -> None:
    """A table card ``shop`` under ``tmp_path`` (and CTRBENCH_HOME there)."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path))
    (tmp_path / "datasets").mkdir(exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "orders.csv").write_text("u,i,t\n" + (log or orders()))
    (tmp_path / "datasets" / "shop.toml").write_text(CARD.format(params=params))


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """The finished store of ``shop``."""
    shop(tmp_path, monkeypatch)
    result = cli("prepare", "shop")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "home" / "prepared").glob("shop-*")
    return path


def edit_meta(store: Path, edit) -> None:
    meta = json.loads((store / "meta.json").read_text())
    edit(meta)
    (store / "meta.json").write_text(json.dumps(meta))


def cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def resave(path: Path, change) -> None:
    np.save(path, change(np.load(path)))


def shrink_vocab(meta: dict, vocab: str, size: int) -> None:
    for spec in meta["schema"]["fields"]:
        if spec["vocab"] == vocab:
            spec["vocab_size"] = size


DAMAGE = {
    "cut column": (lambda s: cut(s / "train" / "item_id.npy", 0.5), "train/item_id.npy"),
    "empty column": (lambda s: cut(s / "train" / "item_id.npy", 0), "train/item_id.npy"),
    "missing column": (lambda s: (s / "valid" / "hist_item_id.npy").unlink(),
                       "valid/hist_item_id.npy"),
    "float ids": (lambda s: resave(s / "train" / "item_id.npy", lambda a: a + 0.5),
                  "train/item_id.npy"),
    "fewer rows": (lambda s: resave(s / "test" / "label.npy", lambda a: a[:7]),
                   "test/label.npy"),
    "narrower history": (lambda s: resave(s / "train" / "hist_cate_id.npy", lambda a: a[:, :2]),
                         "train/hist_cate_id.npy"),
    "missing split": (lambda s: shutil.rmtree(s / "test"), "test"),
    "meta rows": (lambda s: edit_meta(s, lambda m: m["splits"]["train"].update(rows=5)),
                  "train/"),
    "meta max_len": (lambda s: edit_meta(s, lambda m: m["schema"].update(max_len=3)),
                     "train/hist_cate_id.npy: shape (180, 5), but meta.json says (180, 3)"),
    "meta without schema": (lambda s: edit_meta(s, lambda m: m.pop("schema")), "meta.json"),
    "meta without splits": (lambda s: edit_meta(s, lambda m: m.pop("splits")), "meta.json"),
    "meta vocab not a number": (lambda s: edit_meta(s, lambda m: shrink_vocab(m, "item", "x")),
                                "meta.json"),
    "meta one vocab size edited": (
        lambda s: edit_meta(s, lambda m: m["schema"]["fields"][0].update(vocab_size=3)),
        "meta.json"),
    "meta not an object": (lambda s: (s / "meta.json").write_text("[1, 2]"), "meta.json"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_store_is_named_with_its_fix_and_never_used(store, case):
    damage, where = DAMAGE[case]
    damage(store)
    with pytest.raises(DataError, match="prepare shop --force") as info:
        data = open_store(store)  # train and valid; the test split when it is loaded
        for split in SPLITS:
            data.check_split(split)
    assert where in str(info.value) and str(store) in str(info.value)
    result = cli("stats", "shop")
    assert result.exit_code == 1, result.output
    assert "is damaged" in result.output and where in result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    result = cli("prepare", "shop", "--force")
    assert result.exit_code == 0, result.output
    open_store(store)


@pytest.mark.parametrize("column", ["train/label.npy", "test/label.npy"])
def test_run_on_a_damaged_store_trains_nothing(store, tmp_path, column):
    """A damaged test split too is found before any training (it is loaded only after)."""
    cut(store / column, 0.3)
    result = cli("run", "-m", "lr", "-d", "shop", "--seeds", "1", "--epochs", "1",
                 "--results", str(tmp_path / "res"))
    assert result.exit_code == 1, result.output
    assert column in result.output and "prepare shop --force" in result.output
    assert not list((tmp_path / "res").rglob("seed-*.json"))



@pytest.mark.parametrize("key,value", [("dataset", "other"), ("card_hash", "0" * 12),
                                       ("store_key", "shop-elsewhere")])
def test_a_store_whose_meta_names_another_dataset_is_not_reused(store, tmp_path, key, value):
    """Before: an edited `dataset` in meta.json trained, and the run records carried the other
    name as the dataset identity."""
    edit_meta(store, lambda m: m.update({key: value}))
    result = cli("run", "-m", "pop", "-d", "shop", "--seeds", "1",
                 "--results", str(tmp_path / "res"))
    assert result.exit_code == 1, result.output
    assert f"meta.json: {key} is {value!r}" in result.output
    assert "prepare shop --force" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "res").rglob("seed-*.json"))
    assert cli("prepare", "shop", "--force").exit_code == 0
    assert json.loads((store / "meta.json").read_text())[key] != value

VALUES = {
    "item ids": (lambda s: edit_meta(s, lambda m: shrink_vocab(m, "item", 3)),
                 "beyond its vocabulary 'item' of 3 ids"),
    "category ids": (lambda s: edit_meta(s, lambda m: shrink_vocab(m, "cate", 1)),
                     "beyond its vocabulary 'cate' of 1 ids"),
    "user ids": (lambda s: edit_meta(s, lambda m: shrink_vocab(m, "user_id", 2)),
                 "beyond its vocabulary 'user_id' of 2 ids"),
    "labels": (lambda s: resave(s / "train" / "label.npy", lambda a: a * 2), "beyond [0, 1]"),
    "history lengths": (lambda s: resave(s / "train" / "hist_len.npy", lambda a: a + 9),
                        "beyond max_len 5"),
}


@pytest.mark.parametrize("case", list(VALUES))
def test_values_beyond_the_schema_never_reach_a_model(store, tmp_path, case):
    damage, problem = VALUES[case]
    damage(store)  # the headers agree with meta.json, the values do not
    result = cli("run", "-m", "lr", "-d", "shop", "--seeds", "2", "--epochs", "1",
                 "--results", str(tmp_path / "res"))
    assert result.exit_code == 1, result.output
    assert problem in result.output and "prepare shop --force" in result.output
    assert "finished test AUC" not in result.output
    # once for the command, before any folder or record (was: one failed record per seed)
    assert "DamagedStoreError" not in result.output and not (tmp_path / "res").exists()


# --------------------------------------------------------------------------- writers
def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_force_keeps_the_old_store_whole_until_the_new_one_is_complete(store, monkeypatch):
    real_save, rows = np.save, []

    def save_while_reading(file, arr, *args, **kwargs):
        rows.append(open_store(store).num_rows("train"))  # e.g. a run starting meanwhile
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_while_reading)
    result = cli("prepare", "shop", "--force")
    assert result.exit_code == 0, result.output
    assert rows and set(rows) == {180}
    assert [p.name for p in store.parent.iterdir() if ".tmp-" in p.name] == []


def test_a_store_another_process_finished_meanwhile_is_not_replaced(store, monkeypatch):
    theirs = store.with_name("theirs")
    store.rename(theirs)
    real_build = prep.build_samples

    def build_while_another_finishes(*args, **kwargs):
        built = real_build(*args, **kwargs)
        theirs.rename(store)  # the other process's rename lands first
        (store / "theirs").touch()
        return built

    monkeypatch.setattr(prep, "build_samples", build_while_another_finishes)
    result = cli("prepare", "shop")
    assert result.exit_code == 0, result.output
    assert (store / "theirs").exists()  # a reader may have it open: never moved away
    assert [p.name for p in store.parent.iterdir() if ".tmp-" in p.name] == []


def test_a_second_prepare_waits_for_the_first_and_reuses_its_store(tmp_path, monkeypatch):
    shop(tmp_path, monkeypatch)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with prep.build_lock("shop"):
        other = subprocess.Popen([sys.executable, "-m", "ctrbench.cli", "prepare", "shop"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in other.stdout:  # EOF (no wait announced) ends the loop too
            seen.append(line)
            if "waiting for another ctrbench process" in line:
                break
        built = cli("prepare", "shop")  # while the other process waits
        assert built.exit_code == 0 and "built" in built.output, built.output
    out = "".join(seen) + other.communicate()[0]
    assert other.returncode == 0, out
    assert "waiting for another ctrbench process" in out and "reused existing store" in out


def test_a_killed_writers_folder_is_removed_by_the_next_prepare(tmp_path, monkeypatch):
    shop(tmp_path, monkeypatch)
    killed = run_python(
        "import os, signal, numpy as np\n"
        "from ctrbench.data.prepare import prepare_dataset\n"
        "real, calls = np.save, []\n"
        "def save(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*args, **kwargs)\n"
        "np.save = save\n"
        "prepare_dataset('shop')\n")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    root = tmp_path / "home" / "prepared"
    assert len([p for p in root.iterdir() if ".tmp-" in p.name]) == 1
    result = cli("prepare", "shop")
    assert result.exit_code == 0 and "built" in result.output, result.output
    assert [p.name for p in root.iterdir() if ".tmp-" in p.name] == []  # not an hour later


def test_a_full_disk_while_writing_names_the_store_and_keeps_the_old_one(store, monkeypatch):
    def disk_full(file, arr, *args, **kwargs):
        Path(file).write_bytes(b"\x93NUMPY")  # a few bytes, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    result = cli("prepare", "shop", "--force")
    assert result.exit_code == 1, result.output
    assert f"cannot write {store}: No space left on device" in result.output
    assert "Traceback" not in result.output
    assert [p.name for p in store.parent.iterdir() if ".tmp-" in p.name] == []
    assert open_store(store).num_rows("train") == 180  # the old store, whole


def test_a_bad_protocol_parameter_is_refused_before_the_raw_files_are_read(tmp_path,
                                                                         monkeypatch):
    shop(tmp_path, monkeypatch, params="neg_per_pos = 0")
    result = cli("prepare", "shop")
    assert result.exit_code == 1, result.output
    assert "neg_per_pos must be in 1..100, got 0" in result.output
    assert "preparing shop" not in result.output  # before minutes of reading a large log
