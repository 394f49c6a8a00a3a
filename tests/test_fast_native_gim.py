"""The native GIM kernel (``models/fast/fused_gim.cpp`` through
:mod:`ctrbench.models.fast.fused_gim`) against GIM's torch path in float64: the output, the part
weights and every gradient (parts, projection weights and biases, score vectors and biases),
widths and ``G`` on both sides of the 16-lane vectors, row counts that leave tails of the
kernel's 4-row and 8-row blocks, saturated scores; the same bits at 1 and 2 threads; where it
may run; MIAN with and without it."""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast.fused_gim import STEM, library, usable
from ctrbench.models.mian import GlobalInteraction

pytestmark = pytest.mark.skipif(library() is None,
                                reason=f"native GIM: {native.status(STEM)}")


def _module(widths: list[int], width: int, seed: int, scale: float = 1.0) -> GlobalInteraction:
    torch.manual_seed(seed)
    gim = GlobalInteraction(widths, width)
    with torch.no_grad():
        gim.bias.normal_()
        gim.weight.mul_(scale)
    return gim


def _run(gim: GlobalInteraction, parts: list[torch.Tensor], upstream: torch.Tensor,
         native_path: bool) -> list[torch.Tensor]:
    """Output, part weights, then the gradients of the parts and of every parameter."""
    previous = GlobalInteraction.NATIVE
    GlobalInteraction.NATIVE = native_path
    try:
        parts = [p.detach().requires_grad_(True) for p in parts]
        out, alpha = gim(parts)
        grads = torch.autograd.grad(out, [*parts, *gim.parameters()], upstream)
    finally:
        GlobalInteraction.NATIVE = previous
    return [out.detach(), alpha.detach(), *grads]


@pytest.mark.parametrize(("widths", "width", "rows", "scale"), [
    ([32, 64, 32, 80, 64, 48, 48], 64, 128, 1.0),  # MIAN's parts on Electronics, batch 128
    ([5, 17], 20, 9, 1.0),        # widths and G off the vectors; 4-row and 8-row tails
    ([3], 1, 1, 1.0),             # one part, one output, one row
    ([16, 33], 128, 13, 1.0),     # G at the kernel's largest width
    ([40, 24, 8], 16, 37, 200.0),  # saturated tanh scores
])
def test_kernel_equals_the_float64_reference(widths, width, rows, scale):
    gim = _module(widths, width, seed=len(widths) + width, scale=scale)
    gen = torch.Generator().manual_seed(rows)
    parts = [torch.randn(rows, w, generator=gen) for w in widths]
    upstream = torch.randn(rows, width, generator=gen)
    got = _run(gim, parts, upstream, native_path=True)
    reference = _run(gim.double(), [p.double() for p in parts], upstream.double(),
                     native_path=False)
    assert len(got) == len(reference) == 2 + len(widths) + 2 * len(widths) + 2
    for value, expected in zip(got, reference):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=2e-5)


def test_the_same_bits_at_one_and_two_threads():
    widths, width, rows = [32, 64, 80], 64, 67
    gim = _module(widths, width, seed=3)
    gen = torch.Generator().manual_seed(5)
    parts = [torch.randn(rows, w, generator=gen) for w in widths]
    upstream = torch.randn(rows, width, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(gim, parts, upstream, native_path=True)
        torch.set_num_threads(2)
        two = _run(gim, parts, upstream, native_path=True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_where_the_kernel_may_run(monkeypatch):
    gim = _module([8, 8], 16, seed=0)
    parts = [torch.randn(4, 8), torch.randn(4, 8)]
    assert usable(parts, gim.weight, 16)
    assert not usable([p.double() for p in parts], gim.weight, 16)
    assert not usable(parts, gim.weight.double(), 16)
    assert not usable([parts[0], torch.randn(5, 8)], gim.weight, 16)  # rows differ
    assert not usable([torch.randn(4, 2, 4)] * 2, gim.weight, 16)
    assert not usable(parts, gim.weight, 129)  # wider than the kernel takes
    assert not usable([torch.randn(4, 1)] * 33, gim.weight, 16)  # too many parts
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not usable(parts, gim.weight, 16)
    monkeypatch.setenv(native.OPT_OUT_VAR, "0")
    assert not usable(parts, gim.weight, 16)


def test_a_part_weight_is_not_differentiable_and_eval_takes_the_kernel():
    gim = _module([8, 8], 16, seed=1)
    parts = [torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)]
    out, alpha = gim(parts)
    assert out.requires_grad and not alpha.requires_grad
    torch.testing.assert_close(alpha.sum(1), torch.ones(6))
    with torch.no_grad():
        again, alpha_again = gim(parts)
    assert torch.equal(again, out.detach()) and torch.equal(alpha_again, alpha)


def test_mian_with_and_without_the_kernel(monkeypatch):
    """MIAN's logits and gradients match with the kernel on and off (float32 rounding; eval
    mode, so that no dropout mask differs between the two passes)."""
    from ctrbench.cards import load_model_card
    from ctrbench.models import build_model
    from ctrbench.schema import random_batch, reference_schema

    schema = reference_schema(n_items=200, n_cates=12, max_len=10)
    batch = random_batch(schema, 24, torch.Generator().manual_seed(2))
    card = load_model_card("mian")
    torch.manual_seed(0)
    model = build_model(card.arch, schema, card.params).eval()
    results = []
    for switch in (True, False):
        monkeypatch.setattr(GlobalInteraction, "NATIVE", switch)
        model.zero_grad()
        logits = model(batch)
        logits.sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()
                                          if p.grad is not None]))
    (on, grads_on), (off, grads_off) = results
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6)
    assert len(grads_on) == len(grads_off) > 0
    for a, b in zip(grads_on, grads_off):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
