"""Thread choice (ctrbench.engine.threads): cgroup quotas, affinity, workers, the wait policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ctrbench.engine import threads


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_in_cores(tmp_path):
    write(tmp_path / "cpu.max", "150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    write(tmp_path / "cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_in_cores(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 1.0
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    assert threads.cgroup_cpu_limit(tmp_path / "absent") is None


def test_usable_cores_is_capped_by_the_quota_and_the_affinity_mask(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert threads.usable_cores(tmp_path / "absent") == affinity
    write(tmp_path / "cpu.max", "100000 100000\n")  # one core's worth
    assert threads.usable_cores(tmp_path) == 1
    write(tmp_path / "cpu.max", f"{(affinity + 4) * 100000} 100000\n")  # quota above the mask
    assert threads.usable_cores(tmp_path) == affinity


def test_default_threads_is_one_thread_within_the_workers_share(monkeypatch):
    # one thread per process: measured faster for these models on CPU (threads.py docstring)
    assert threads.default_threads(1, cores=8) == 1
    assert threads.default_threads(3, cores=8) == 1
    assert threads.default_threads(16, cores=8) == 1
    assert threads.default_threads(0, cores=2) == 1
    # the share of the cores stays the bound if the cap is raised
    monkeypatch.setattr(threads, "AUTO_MAX_THREADS", 64)
    assert threads.default_threads(1, cores=8) == 8
    assert threads.default_threads(3, cores=8) == 2
    assert threads.default_threads(16, cores=8) == 1


@pytest.mark.parametrize("text,expected", [("auto", None), (None, None), ("3", 3), (" 1 ", 1)])
def test_parse_threads(text, expected):
    assert threads.parse_threads(text) == expected


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", ""])
def test_parse_threads_rejects_bad_values(text):
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        threads.parse_threads(text)


def test_apply_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1 and torch.get_num_threads() == 1
        chosen = threads.apply_threads(None, workers=10**6)
        assert chosen == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_passive_wait_policy_is_a_default_never_an_override():
    env: dict[str, str] = {}
    assert threads.set_passive_wait_policy(env) and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not threads.set_passive_wait_policy(env) and env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_importing_ctrbench_sets_the_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import sys, os, ctrbench; "
            "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "PASSIVE"]


def test_load_average_is_a_non_negative_number():
    load = threads.load_average()
    assert load is not None and load >= 0


@pytest.mark.parametrize("policy, count, split", [("PASSIVE", 2, True), ("passive", 8, True),
                                                  ("PASSIVE", 1, False), ("ACTIVE", 2, False),
                                                  ("", 2, False)])
def test_a_budget_is_split_only_under_the_passive_policy(policy, count, split):
    assert threads.splits_threads(count, {"OMP_WAIT_POLICY": policy}) is split


def test_a_split_budget_runs_the_large_products_on_every_thread_and_the_rest_on_one(monkeypatch):
    """Under PASSIVE, ``apply_threads(2)``: torch's ops on 1 thread, oneDNN's products on 2,
    the record says 2 with the split; a later ``torch.set_num_threads`` ends the split."""
    from ctrbench import openmp
    from ctrbench.environment import environment
    from ctrbench.models.fast import onednn_linear

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    seen = []

    def product(x, weight, bias, *args):
        seen.append(torch.get_num_threads())
        return x @ weight.t()

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", product, raising=False)
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(2) == 2
        assert torch.get_num_threads() == 1 and threads.thread_budget() == 2
        assert threads.thread_split() == {"torch_ops": 1, "large_products": 2}
        record = environment("cpu")
        assert record["threads"] == 2 and record["thread_split"]["large_products"] == 2
        onednn_linear._matmul(torch.ones(3, 4), torch.ones(5, 4), None)
        assert seen == [2] and torch.get_num_threads() == 1  # on 2 for the product, then 1
        torch.set_num_threads(3)  # someone else's choice: no split any more
        assert threads.thread_budget() == 3 and threads.thread_split() is None
        onednn_linear._matmul(torch.ones(3, 4), torch.ones(5, 4), None)
        assert seen == [2, 3]
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # spinning waiters: no split
        assert threads.apply_threads(2) == 2 and torch.get_num_threads() == 2
        assert threads.thread_split() is None and environment("cpu")["thread_split"] is None
    finally:
        openmp.set_split(None)
        torch.set_num_threads(before)
