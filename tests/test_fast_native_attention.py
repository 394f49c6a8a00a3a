"""The native attention kernel (``ctrbench/models/fast/fused_attention.{cpp,py}``) against its
plain reference, ``MaskedSelfAttention.mix`` over the padded batch in float64, at the valid
steps; its build (``ctrbench/native.py``): cache, opt-out, no compiler, a failing compiler; and
the transformer block and run records that use it.
"""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from ctrbench import native
from ctrbench.environment import environment
from ctrbench.models.fast.fused_attention import (
    STEM,
    RowPacking,
    attention_backward,
    attention_forward,
    fused_attention,
    usable,
)
from ctrbench.models.sequence import MaskedSelfAttention, TransformerBlock


@pytest.fixture
def built():
    """The kernel is built here (a C++ compiler is present), else the test is skipped."""
    if native.load(STEM) is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


needs_native = pytest.mark.usefixtures("built")


def case(lengths: list[int], steps: int, heads: int, head_dim: int, seed: int = 0):
    """(packed float32 qkv [N, 3D] requiring grad, offsets, places, padded float64 qkv
    [B, T, 3D] requiring grad, mask [B, T])."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    padded = 2 * torch.randn(len(lengths), steps, 3 * heads * head_dim, generator=gen)
    packing = RowPacking.of(mask)
    places, offsets = packing.places, packing.offsets
    qkv = padded.reshape(-1, padded.shape[-1]).index_select(0, places)  # (N, 3D)
    return (qkv.requires_grad_(), offsets, places, padded.double().requires_grad_(), mask)


@needs_native
@pytest.mark.parametrize("lengths,steps,heads,head_dim", [
    ([5, 0, 3, 7, 1, 12, 20, 9], 20, 8, 4),  # MIAN's heads; an empty history
    ([30, 17, 16, 15, 1, 29, 2, 8, 30], 30, 8, 4),  # either side of the 16-lane vectors
    ([33, 48, 1, 0, 47], 50, 2, 8),  # three vectors of keys; head widths 8 and 16 ...
    ([31, 5, 0, 3, 7, 1, 12, 20, 9, 2], 31, 4, 8),  # head lanes: 4 steps per vector ...
    ([6, 1, 0, 11, 16], 16, 4, 4),  # ... one vector per step
    ([9, 4, 17, 1], 17, 2, 16),  # ... 8 steps per vector
    ([3, 8, 1, 0, 5], 8, 8, 2),
    ([16, 3], 16, 1, 16),  # per head
    ([7, 1, 4], 7, 3, 5),  # ... and the generic width
    ([9, 2], 9, 1, 64),  # the widest head the kernel takes
    ([0, 0, 0], 6, 2, 4),  # nothing valid at all
])
def test_fused_attention_equals_mix_at_valid_steps(lengths, steps, heads, head_dim):
    qkv, offsets, places, padded, mask = case(lengths, steps, heads, head_dim)
    assert usable(qkv, head_dim)
    got = fused_attention(qkv, offsets, heads)  # (N, D)
    width = heads * head_dim
    expected = MaskedSelfAttention(width, heads, fused=False).mix(padded, mask).reshape(
        -1, width).index_select(0, places)  # (N, D), float64
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-6)
    # seeded: a fresh draw each run made the largest error vary (and once in ~300 runs of
    # the 31-step rows exceed the bound); float32 sums over up to 31 steps of products of
    # values ~N(0, 4) cancel to ~3e-5 where the float64 gradient is near 0
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    (grad_fused,) = torch.autograd.grad((got * weights).sum(), qkv)
    (grad_padded,) = torch.autograd.grad((expected * weights.double()).sum(), padded)
    torch.testing.assert_close(
        grad_fused.double(), grad_padded.reshape(-1, 3 * width).index_select(0, places),
        rtol=2e-5, atol=6e-5)


@needs_native
@pytest.mark.parametrize("heads,head_dim", [(8, 4), (4, 8), (2, 16)])
def test_the_head_lane_layout_computes_what_the_per_head_layout_computes(heads, head_dim):
    lengths = [31, 5, 0, 3, 7, 1, 12, 20, 9, 2, 16, 17]
    qkv, offsets, *_ = case(lengths, 31, heads, head_dim, seed=3)
    qkv = qkv.detach()
    grad = torch.randn(qkv.shape[0], heads * head_dim)
    results = {}
    for lanes in (True, False):
        out, stats = attention_forward(qkv, offsets, heads, head_lanes=lanes)
        results[lanes] = out, stats, attention_backward(qkv, offsets, out, stats, grad, heads,
                                                        head_lanes=lanes)
    # the forward's arithmetic is the same lane for lane; the backward sums dK, dV in
    # another order (one pass by queries)
    assert torch.equal(results[True][0], results[False][0])
    assert torch.equal(results[True][1], results[False][1])
    torch.testing.assert_close(results[True][2], results[False][2], rtol=1e-5, atol=1e-6)


@needs_native
def test_fused_attention_is_deterministic_at_any_thread_count():
    qkv, offsets, *_ = case([30, 12, 1, 25, 0, 17], 30, 8, 4)
    weights = torch.randn(qkv.shape[0], 32)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            out = fused_attention(qkv, offsets, 8)
            (grad,) = torch.autograd.grad((out * weights).sum(), qkv)
            results.append((out, grad))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@needs_native
def test_fused_attention_probabilities_sum_to_one_at_extreme_scores():
    """Scores far apart (one key dominates) and all equal: no overflow, no NaN."""
    qkv, offsets, *_ = case([20, 3], 20, 1, 4)
    with torch.no_grad():
        qkv[:, :4] *= 300.0  # queries: scores of several thousand
        qkv[:, 8:] = 1.0  # every value 1: each output is the sum of its probabilities
    out = fused_attention(qkv, offsets, 1)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_fused_attention_is_not_used_where_it_cannot_run():
    qkv = torch.randn(5, 24)
    assert not usable(qkv.double(), 4)
    assert not usable(qkv.bfloat16(), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not usable(qkv, 4)
    assert not usable(qkv, 65)  # wider than the kernel's per-head registers


@needs_native
@pytest.mark.parametrize("pre_ln", [True, False])
def test_block_with_the_native_attention_equals_the_torch_path(pre_ln):
    torch.manual_seed(0)
    block = TransformerBlock(32, heads=8, ffn_mult=2, pre_ln=pre_ln).train()  # no dropout
    x = torch.randn(9, 30, 32, requires_grad=True)
    lengths = torch.tensor([30, 0, 3, 17, 1, 16, 29, 5, 12])
    mask = torch.arange(30)[None, :] < lengths[:, None]
    native = block.forward_packed(x, mask)
    block.NATIVE_ATTENTION = False
    torch_path = block.forward_packed(x, mask)
    torch.testing.assert_close(native, torch_path, rtol=1e-5, atol=1e-5)
    assert torch.equal(native[~mask], torch.zeros_like(native[~mask]))
    params = [x, *block.parameters()]
    for a, b in zip(torch.autograd.grad(native[mask].sum(), params),
                    torch.autograd.grad(torch_path[mask].sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the build
@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """No library loaded in this process yet, and an empty build cache."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv(native.CACHE_VAR, str(tmp_path / "native"))
    monkeypatch.delenv(native.OPT_OUT_VAR, raising=False)
    return tmp_path / "native"


@needs_native
def test_a_build_is_cached_and_reused(fresh_build, monkeypatch):
    assert isinstance(native.load(STEM), ctypes.CDLL)
    (library,) = fresh_build.glob(f"{STEM}-*/{STEM}.so")
    assert not [p for p in fresh_build.rglob(".*")]  # no temporary left
    built = library.stat().st_mtime_ns
    monkeypatch.setattr(native, "_loaded", {})
    assert native.load(STEM) is not None
    assert library.stat().st_mtime_ns == built  # loaded again, not rebuilt
    assert native.status(STEM) == "native"


def test_the_opt_out_turns_the_kernel_off(fresh_build, monkeypatch):
    monkeypatch.setenv(native.OPT_OUT_VAR, "0")
    assert native.load(STEM) is None
    assert native.status(STEM) == "off (CTRBENCH_NATIVE=0)"
    assert not usable(torch.randn(3, 24), 4)
    assert not fresh_build.exists()  # nothing built


def test_without_a_compiler_the_torch_path_runs(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert native.load(STEM) is None
    assert native.status(STEM) == "no C++ compiler ('no-such-compiler-here' not found)"
    block = TransformerBlock(8, heads=2, ffn_mult=2).train()
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 0])[:, None]
    out = block.forward_packed(torch.randn(3, 6, 8), mask)  # the torch path, no error
    assert out.shape == (3, 6, 8)


def test_a_failing_build_is_said_and_leaves_nothing(fresh_build, monkeypatch, tmp_path):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken 1.0; exit 0; fi\n"
                        "echo 'fused_attention.cpp:1: error: out of luck' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    assert native.load(STEM) is None
    reason = native.status(STEM)
    assert reason.startswith("build failed:") and "out of luck" in reason
    assert not list(fresh_build.rglob("*.so"))  # no half-built library taken for built


def test_run_records_say_whether_the_native_kernel_ran(monkeypatch):
    monkeypatch.setenv(native.OPT_OUT_VAR, "off")
    assert environment("cpu")["native"][STEM] == "off (CTRBENCH_NATIVE=off)"
    monkeypatch.delenv(native.OPT_OUT_VAR)
    assert environment("cpu")["native"][STEM] == native.status(STEM)
    assert environment("meta")["native"][STEM] == "not used on meta"
    assert set(environment("cpu")["native"]) == set(native.SOURCES)  # every kernel said


@needs_native
def test_a_compiler_that_refuses_march_native_builds_without_it(fresh_build, monkeypatch,
                                                                 tmp_path):
    compiler = tmp_path / "picky-c++"
    compiler.write_text("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -march=native ] && "
                        "{ echo \"error: unsupported option '-march=native'\" >&2; exit 1; }; "
                        "done\nexec c++ \"$@\"\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    assert native.load(STEM) is not None
    assert native.status(STEM) == "native (without -march=native)"
    qkv, offsets, places, padded, mask = case([5, 0, 3], 5, 2, 4)
    width = 8
    expected = MaskedSelfAttention(width, 2, fused=False).mix(padded, mask).reshape(
        -1, width).index_select(0, places)
    torch.testing.assert_close(fused_attention(qkv, offsets, 2).double(), expected,
                               rtol=2e-5, atol=2e-6)


@needs_native
def test_processes_building_at_once_load_whole_libraries(tmp_path):
    """Four processes build into one empty cache at the same moment: all load the kernel, one
    library is left and no temporary."""
    import subprocess
    import sys

    cache = tmp_path / "shared-cache"
    code = ("from ctrbench import native; print(native.status('fused_attention'), "
            "native.status('native_scan'))")
    env = {**os.environ, native.CACHE_VAR: str(cache)}
    env.pop(native.OPT_OUT_VAR, None)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert outputs == ["native native"] * 4
    assert len(list(cache.glob("fused_attention-*/fused_attention.so"))) == 1
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]


def test_every_kernel_source_exists():
    assert all(path.is_file() for path in native.SOURCES.values())
