"""Two leftovers of the eighth session's fault hunt (docs/reliability.md, "Found and left"):

- a run's lock file that names no run id: one nobody holds is taken whatever it says; one whose
  live holder has not written its run id yet is read again once it has (before: "locked",
  though the holder may run another configuration, which is ``refused``);
- a SIGKILL between the two renames of a forced store swap: a reader that finds the store path
  missing puts the complete store left under a temporary name back (before: "not a finished
  prepared store" until the next ``prepare`` rebuilt it).

The states a kill leaves are made by hand; nothing is killed and nothing waits on a clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ctrbench.data.store import WRITING, open_store
from ctrbench.errors import DataError
from ctrbench.runs import lock as lock_module
from ctrbench.runs.lock import RunLock


# --------------------------------------------------------------------------- run locks
@pytest.fixture
def lock_file(tmp_path) -> Path:
    return tmp_path / "runs" / "seed-0.lock"


def _held_by(lock_file: Path, run_id: str | None) -> RunLock:
    holder = RunLock(lock_file, run_id=run_id)
    assert holder.acquire()
    return holder


@pytest.mark.parametrize("content", [
    "",
    "{}",
    '{"pid": 1, "host": "here", "start": "1", "token": "ab12"}',  # the former pid-file lock
    '{"pid": 1, "host": "here", "run_id": "another-configuration"}',
    "not JSON",
], ids=["empty", "empty object", "pid file", "another run id", "garbage"])
def test_a_lock_file_nobody_holds_is_taken_whatever_it_names(lock_file, content):
    lock_file.parent.mkdir(parents=True)
    lock_file.write_text(content)
    taker = RunLock(lock_file, run_id="mine")
    try:
        assert taker.acquire(), taker.holder
        assert json.loads(lock_file.read_text())["run_id"] == "mine"
    finally:
        taker.release()
    assert not lock_file.exists()


def test_a_holder_caught_before_it_wrote_its_run_id_is_read_once_it_has(lock_file,
                                                                         monkeypatch):
    """Before: the contender read the empty file once and said "locked" (exit 0), though the
    holder ran another configuration (which is ``refused``, exit 1)."""
    holder = _held_by(lock_file, "theirs")
    written = lock_file.read_text()
    lock_file.write_text("")  # the instant between the holder's flock and its write

    def holder_writes(_seconds):
        lock_file.write_text(written)

    monkeypatch.setattr(lock_module.time, "sleep", holder_writes)
    contender = RunLock(lock_file, run_id="mine")
    try:
        assert not contender.acquire()
        assert contender.holder["run_id"] == "theirs"
        assert contender.holder["pid"] == os.getpid()
    finally:
        holder.release()


def test_a_holder_that_releases_while_it_is_read_leaves_the_lock_to_the_contender(
        lock_file, monkeypatch):
    holder = _held_by(lock_file, "theirs")
    lock_file.write_text("")
    monkeypatch.setattr(lock_module.time, "sleep", lambda _seconds: holder.release())
    contender = RunLock(lock_file, run_id="mine")
    try:
        assert contender.acquire(), contender.holder
    finally:
        contender.release()
    assert not lock_file.exists()


def test_a_live_holder_that_never_names_a_run_id_still_reads_as_locked(lock_file, monkeypatch):
    """An older ctrbench's lock: its run cannot be told, so it stays "locked" (exit 0), after a
    bounded number of reads."""
    holder = _held_by(lock_file, None)
    pauses = []
    monkeypatch.setattr(lock_module.time, "sleep", pauses.append)
    contender = RunLock(lock_file, run_id="mine")
    try:
        assert not contender.acquire()
        assert contender.holder.get("pid") == os.getpid() and "run_id" not in contender.holder
    finally:
        holder.release()
    assert 0 < len(pauses) <= lock_module.HOLDER_READS


# --------------------------------------------------------------------------- store swap
@pytest.fixture
def store(tmp_path) -> Path:
    """A finished (tiny) store at ``prepared/planted-0123456789abcdef``."""
    import train_fixtures as tf

    path = tmp_path / "prepared" / "planted-0123456789abcdef"
    tf.make_planted_store(path, rows=(40, 20, 20))
    return path


def _aside(store: Path, suffix: str) -> Path:
    """``store``'s folder under a temporary name (``.<name>.tmp-<suffix>``), as write_store
    names its new store (8 hex digits) or the old one it swaps out (``old-`` + 8 hex)."""
    return store.with_name(f".{store.name}.tmp-{suffix}")


def _killed_between_the_renames(store: Path, new_complete: bool = True) -> tuple[Path, Path]:
    """The state a SIGKILL leaves between ``final -> trash`` and ``new -> final``: the old
    store under its trash name, the new one (marked complete or not) under its temporary
    name, nothing at the store's path."""
    new = _aside(store, "0a1b2c3d")
    shutil.copytree(store, new)
    (new / "new").touch()
    if not new_complete:
        (new / WRITING).touch()  # its writer died before it marked the store complete
    trash = _aside(store, "old-4e5f6a7b")
    store.rename(trash)
    return new, trash


def _temporaries(store: Path) -> list[str]:
    return sorted(p.name for p in store.parent.iterdir() if ".tmp-" in p.name)


def test_a_reader_puts_the_new_store_back_after_a_kill_between_the_renames(store):
    """Before: "not a finished prepared store (no meta.json)" until the next `prepare`."""
    _killed_between_the_renames(store)
    data = open_store(store)
    assert data.num_rows("train") == 40
    assert (store / "new").exists()  # the complete new store, as the swap meant
    assert _temporaries(store) == []  # the old one removed, as the swap would have


def test_a_reader_puts_the_old_store_back_when_the_new_one_is_not_complete(store):
    new, _ = _killed_between_the_renames(store, new_complete=False)
    data = open_store(store)
    assert data.num_rows("train") == 40
    assert not (store / "new").exists() and not (store / WRITING).exists()
    assert _temporaries(store) == [new.name]  # left to the next `prepare`'s clean-up


@pytest.mark.parametrize("leftover", ["incomplete", "no meta.json", "not a folder"])
def test_an_incomplete_store_is_never_put_back(store, leftover):
    new = _aside(store, "0a1b2c3d")
    store.rename(new)
    if leftover == "incomplete":
        (new / WRITING).touch()
    elif leftover == "no meta.json":
        (new / "meta.json").unlink()
    else:
        shutil.rmtree(new)
        new.write_text("")
    with pytest.raises(DataError, match="not a finished prepared store"):
        open_store(store)
    assert not store.exists() and _temporaries(store) == [new.name]


def test_a_store_of_another_name_is_never_put_back(store):
    other = store.with_name(f".{store.name}x.tmp-0a1b2c3d")  # card "planted-...x"'s
    store.rename(other)
    with pytest.raises(DataError, match="not a finished prepared store"):
        open_store(store)
    assert other.is_dir() and not store.exists()


KILLED_BETWEEN_THE_RENAMES = """
import os, signal, sys
sys.path.insert(0, {root!r})
from ctrbench.data import store as st

data = st.open_store({path!r})
splits = {{split: data.split(split, mmap=False) for split in st.SPLITS}}
real_replace, renames = os.replace, []

def replace(src, dst):
    renames.append(dst)
    if len(renames) == 2:  # final -> trash done, new -> final not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

os.replace = replace
st.write_store({path!r}, data.schema, splits, {{**data.meta, "new": True}}, replace=True)
"""


def test_a_forced_swap_killed_between_its_renames_is_recovered_by_the_next_reader(store):
    """The same with a real SIGKILL of a real forced write (at its second rename)."""
    code = KILLED_BETWEEN_THE_RENAMES.format(root=str(Path(__file__).parents[1]),
                                             path=str(store))
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1500:]
    assert not store.exists() and len(_temporaries(store)) == 2
    assert open_store(store).meta.get("new") is True
    assert _temporaries(store) == []


def test_the_next_prepare_recovers_a_swap_killed_between_its_renames(tmp_path, monkeypatch):
    """Before: the next `prepare` found the path empty and rebuilt the store from the raw
    files (and its clean-up of stale temporaries could delete the old store meanwhile); now it
    puts the complete new store back and reuses it."""
    from test_faults_store import shop

    from ctrbench.data.prepare import prepare

    shop(tmp_path, monkeypatch)
    store = prepare("shop").data.path
    _killed_between_the_renames(store)
    result = prepare("shop")
    assert result.reused and result.data.path == store
    assert (store / "new").exists() and _temporaries(store) == []
