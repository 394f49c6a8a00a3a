"""glibc's malloc thresholds set on ``import ctrbench`` (ctrbench/allocator.py)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from ctrbench import allocator


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_sets_both_thresholds_high():
    libc = FakeLibc()
    assert allocator.keep_freed_memory({}, libc) == "set"
    assert libc.calls == [(allocator.M_MMAP_THRESHOLD, 32 * 2**20),
                          (allocator.M_TRIM_THRESHOLD, 2**30)]


@pytest.mark.parametrize("env", [{"CTRBENCH_MALLOC": "default"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}])
def test_the_users_choice_wins(env):
    libc = FakeLibc()
    assert allocator.keep_freed_memory(env, libc).startswith("default")
    assert libc.calls == []


def test_no_glibc_no_change():
    assert allocator.keep_freed_memory({}, object()) == "default (no glibc mallopt)"


def test_a_refused_mmap_threshold_leaves_the_trim_threshold_alone():
    # setting only the trim threshold would switch glibc's dynamic mmap threshold off and
    # leave it at 128 KiB: far more page faults than the defaults (docs/performance.md)
    libc = FakeLibc(answer=0)
    assert allocator.keep_freed_memory({}, libc) == "default (mallopt refused)"
    assert libc.calls == [(allocator.M_MMAP_THRESHOLD, 32 * 2**20)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    """Tensors of 1..8 MiB allocated and freed as a training step does (a few alive at once):
    with the thresholds set, later rounds fault (almost) no page in again; with glibc's
    defaults most of each round's memory was faulted in anew."""
    code = (
        "import resource, torch, ctrbench.allocator as a\n"
        "def rounds(n):\n"
        "    for _ in range(n):\n"
        "        alive = []\n"
        "        for mib in range(1, 9):\n"
        "            alive.append(torch.ones(mib * 2**18))  # float32: mib MiB\n"
        "            if len(alive) > 2:\n"
        "                alive.pop(0)\n"
        "        del alive\n"
        "rounds(2)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "rounds(20)\n"
        "print(a.status)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for setting in ("", "default"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env["CTRBENCH_MALLOC"] = setting
        out = subprocess.run([sys.executable, "-c", "import ctrbench\n" + code], env=env,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        faults[out[0]] = int(out[1])
    assert set(faults) == {"set", "default (CTRBENCH_MALLOC=default)"}
    pages = 20 * 36 * 2**20 // resource.getpagesize()  # every page of every round
    assert faults["set"] < 0.05 * pages  # reused
    # glibc's defaults faulted 56-70% of these pages in again here (glibc 2.36); another glibc
    # may do better, never worse than the setting
    assert faults["default (CTRBENCH_MALLOC=default)"] >= faults["set"]
