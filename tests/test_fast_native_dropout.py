"""The native dropout kernel (``models/fast/native_dropout.cpp`` through
:mod:`ctrbench.models.fast.dropout`): its Philox4x32-10 against published known answers, its
keep mask against a Python Philox of the documented element layout, values and gradients of
:class:`UniformDropout` and its residual form, the keep rate and the independence of
neighbouring elements, repeatability under ``torch.manual_seed``, and the fallbacks."""

from __future__ import annotations

import ctypes

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast import dropout as native_dropout
from ctrbench.models.fast.dropout import UniformDropout, apply_mask, threshold_of

pytestmark = pytest.mark.skipif(native_dropout.library() is None,
                                reason=f"native dropout: {native.status('native_dropout')}")

MASK32 = 0xFFFFFFFF
LANES, CHUNK = 16, 64  # the kernel's layout: 16 counters of 4 words per 64 elements


def philox_words(counter: list[int], key: list[int]) -> list[int]:
    """Philox4x32-10 in Python (Salmon et al. 2011)."""
    x, k0, k1 = list(counter), key[0], key[1]
    for _ in range(10):
        p0, p1 = 0xD2511F53 * x[0], 0xCD9E8D57 * x[2]
        x = [(p1 >> 32) ^ x[1] ^ k0, p1 & MASK32, (p0 >> 32) ^ x[3] ^ k1, p0 & MASK32]
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return x


def reference_keep(n: int, seed: int, p: float) -> torch.Tensor:
    """The documented mask: element e uses word (e % 64) // 16 of block 16 (e // 64) + e % 16."""
    key = [seed & MASK32, seed >> 32]
    threshold = threshold_of(p)
    keep = torch.empty(n, dtype=torch.bool)
    for e in range(n):
        block = (e // CHUNK) * LANES + e % LANES
        word = philox_words([block & MASK32, block >> 32, 0, 0], key)[(e % CHUNK) // LANES]
        keep[e] = word >= threshold
    return keep


def seed_after(manual_seed: int) -> int:
    """The key the next dropout call draws after ``torch.manual_seed(manual_seed)``."""
    torch.manual_seed(manual_seed)
    return int(torch.empty((), dtype=torch.int64).random_())


@pytest.mark.parametrize(("counter", "key", "expected"), [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([MASK32] * 4, [MASK32] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
])
def test_philox_matches_the_published_known_answers(counter, key, expected):
    """Random123's known-answer vectors for philox4x32-10; the Python reference agrees."""
    words = (ctypes.c_uint32 * 4)()
    native.check(native_dropout.library().ctrbench_philox_words(
        (ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), words), "philox")
    assert list(words) == expected
    assert philox_words(counter, key) == expected


@pytest.mark.parametrize(("n", "seed", "p"), [
    (1, 7, 0.5), (63, 2**40 + 3, 0.2), (1000, 0x1234_5678_9ABC_DEF0, 0.3), (1536, 0, 0.9)])
def test_kernel_mask_is_the_documented_philox_layout(n, seed, p):
    """Every element, tails (n not a multiple of 16, 64 or 512) and high key bits included."""
    out = apply_mask(torch.ones(n), None, seed, p)
    keep = reference_keep(n, seed, p)
    assert torch.equal(out != 0, keep)
    assert torch.allclose(out[keep], torch.full((int(keep.sum()),), 1 / (1 - p)))


def test_values_gradient_and_residual_are_dropouts_with_one_mask():
    p = 0.25
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(37, 29, generator=gen).requires_grad_(True)
    base = torch.randn(37, 29, generator=gen).requires_grad_(True)
    upstream = torch.randn(37, 29, generator=gen)
    keep = reference_keep(x.numel(), seed_after(5), p).view(37, 29)
    drop = UniformDropout(p)
    for residual in (False, True):
        torch.manual_seed(5)
        out = drop.residual(base, x) if residual else drop(x)
        expected = torch.where(keep, x / (1 - p), 0.0) + (base if residual else 0.0)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
        dx, dbase = torch.autograd.grad((out * upstream).sum(), (x, base), allow_unused=True)
        torch.testing.assert_close(dx, torch.where(keep, upstream / (1 - p), 0.0),
                                   rtol=1e-6, atol=0)
        assert torch.equal(dbase, upstream) if residual else dbase is None


def test_non_contiguous_input_gets_the_mask_of_its_contiguous_copy():
    x = torch.randn(40, 30).t()  # (30, 40), not contiguous
    torch.manual_seed(2)
    out = UniformDropout(0.5)(x)
    torch.manual_seed(2)
    assert torch.equal(out, UniformDropout(0.5)(x.contiguous()))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_neighbours_are_independent(p):
    """The keep rate is 1 - p, and a kept element says nothing about the elements 1, 16 or 64
    later (the kernel's lane, word and chunk strides): each rate and correlation within 5
    standard deviations of a fair draw, over 2^20 elements."""
    n = 2**20
    torch.manual_seed(3)
    keep = (UniformDropout(p)(torch.ones(n)) != 0).double()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(keep.mean().item() - (1 - p)) < 5 * sd
    centred = keep - keep.mean()
    for lag in (1, 16, 64, 512):
        corr = (centred[:-lag] * centred[lag:]).mean().item() / centred.var().item()
        assert abs(corr) < 5 / (n - lag) ** 0.5, f"lag {lag}: correlation {corr:.2e}"


def test_seeded_calls_repeat_and_successive_calls_differ():
    x = torch.ones(4096)
    drop = UniformDropout(0.5)
    torch.manual_seed(11)
    first, second = drop(x), drop(x)
    assert not torch.equal(first, second)
    torch.manual_seed(11)
    assert torch.equal(drop(x), first)
    assert torch.equal(drop(x), second)


def test_eval_and_edge_rates_behave_as_nn_dropout():
    x = torch.randn(8, 5)
    assert torch.equal(UniformDropout(0.3).eval()(x), x)
    assert torch.equal(UniformDropout(0.3).eval().residual(x, x), x + x)
    assert torch.equal(UniformDropout(0.0)(x), x)
    assert torch.equal(UniformDropout(0.0).residual(x, x), x + x)
    assert torch.equal(UniformDropout(1.0)(x), torch.zeros_like(x))
    assert torch.equal(UniformDropout(1.0).residual(x, x), x)


def test_other_dtypes_and_native_off_take_the_rand_mask(monkeypatch):
    """float64 and ``UniformDropout.NATIVE = False`` draw ``rand >= p``."""
    p = 0.4
    for dtype, switch in ((torch.float64, True), (torch.float32, False)):
        monkeypatch.setattr(UniformDropout, "NATIVE", switch)
        x = torch.ones(300, dtype=dtype)
        torch.manual_seed(9)
        out = UniformDropout(p)(x)
        torch.manual_seed(9)
        assert torch.equal(out != 0, torch.rand(300, dtype=dtype) >= p)
        torch.manual_seed(9)
        torch.testing.assert_close(UniformDropout(p).residual(x, x), x + out)


def test_native_status_names_the_dropout_kernel():
    assert native.statuses()["native_dropout"].startswith("native")
