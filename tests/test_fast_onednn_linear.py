"""oneDNN's linear (``ctrbench/models/fast/onednn_linear.py``) against ``F.linear`` in float64:
values and every gradient on both sides of ``MIN_MACS``, rows padded to a bucket, 3-D inputs,
no bias, the bucket sizes, and the fallbacks (switched off, autocast, float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctrbench.models.fast import onednn_linear
from ctrbench.models.fast.onednn_linear import MIN_MACS, bucket, linear


@pytest.fixture
def built():
    """This torch has oneDNN's linear op, else the test is skipped."""
    if not onednn_linear.available():
        pytest.skip("torch without oneDNN's _linear_pointwise")


needs_onednn = pytest.mark.usefixtures("built")


def _run(shape: tuple[int, ...], inputs: int, outputs: int, bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, inputs, generator=gen)
    w = torch.randn(outputs, inputs, generator=gen) / inputs ** 0.5
    b = torch.randn(outputs, generator=gen) if bias else None
    g = torch.randn(*shape, outputs, generator=gen)
    tensors = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    out = linear(tensors[0], tensors[1], tensors[2] if bias else None)
    out.backward(g)
    ref = [t.double().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    want = F.linear(ref[0], ref[1], ref[2] if bias else None)
    want.backward(g.double())
    return out, want, tensors, ref


@needs_onednn
@pytest.mark.parametrize(("rows", "inputs", "outputs"), [
    (2048, 169, 256),  # a CIN layer at batch 128: above MIN_MACS
    (2000, 64, 48),  # above it, rows padded to bucket(2000) = 2048
    (37, 16, 8),  # below it: torch's addmm
])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_f_linear(rows, inputs, outputs, bias):
    out, want, got, ref = _run((rows,), inputs, outputs, bias)
    assert out.shape == (rows, outputs) and out.dtype == torch.float32
    scale = inputs ** 0.5
    assert torch.allclose(out.double(), want, atol=1e-5 * scale)
    for mine, theirs in zip(got, ref):
        assert torch.allclose(mine.grad.double(), theirs.grad, atol=1e-4 * rows ** 0.5 * scale)


@needs_onednn
def test_three_dimensional_input_keeps_its_leading_axes():
    out, want, got, ref = _run((64, 40), 96, 64, bias=True)  # 2560 rows: above MIN_MACS
    assert out.shape == (64, 40, 64)
    assert torch.allclose(out.double(), want, atol=1e-4)
    assert torch.allclose(got[0].grad.double(), ref[0].grad, atol=1e-4)


@needs_onednn
def test_the_large_path_is_taken_and_the_same_bits_twice(monkeypatch):
    calls = []
    op = torch.ops.mkldnn._linear_pointwise

    def counted(*args):
        calls.append(args[0].shape)
        return op(*args)

    x, w, b = torch.randn(2048, 169), torch.randn(256, 169), torch.randn(256)
    assert 2048 * 169 * 256 >= MIN_MACS
    first = onednn_linear.forward(x, w, b)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted)
    second = onednn_linear.forward(x, w, b)
    assert calls == [(2048, 169)]
    assert torch.equal(first, second)


def test_buckets_are_few_and_tight():
    sizes = {bucket(n) for n in range(1, 40_000)}
    assert len(sizes) < 200
    for n in (1, 15, 16, 17, 100, 1893, 2048, 2049, 16_700, 39_999):
        assert n <= bucket(n) <= max(n + 15, n * 1.0625 + 1)
        assert bucket(bucket(n)) == bucket(n)


@pytest.mark.parametrize("case", ["off", "native_off", "autocast", "float64"])
def test_fallbacks_are_f_linear(case, monkeypatch):
    x, w, b = torch.randn(2048, 169), torch.randn(256, 169), torch.randn(256)
    if case == "off":
        monkeypatch.setattr(onednn_linear, "ENABLED", False)
    if case == "native_off":
        monkeypatch.setenv("CTRBENCH_NATIVE", "0")
    if case == "float64":
        x, w, b = x.double(), w.double(), b.double()
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", None, raising=False)
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_linear.usable(x, w)
            out = linear(x, w, b)
        assert out.dtype == torch.bfloat16
        return
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))


def test_run_records_say_whether_the_products_went_to_onednn(monkeypatch):
    monkeypatch.delenv("CTRBENCH_NATIVE", raising=False)
    want = "oneDNN" if onednn_linear.available() else "unavailable"
    assert onednn_linear.status("cpu").startswith(want)
    assert onednn_linear.status("meta") == "not used on meta"
    monkeypatch.setenv("CTRBENCH_NATIVE", "0")
    assert onednn_linear.status("cpu") == "off (CTRBENCH_NATIVE=0)"
    monkeypatch.delenv("CTRBENCH_NATIVE")
    monkeypatch.setattr(onednn_linear, "ENABLED", False)
    assert onednn_linear.status("cpu") == "off (ENABLED = False)"
