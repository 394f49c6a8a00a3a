"""DIEN's attention and auxiliary loss as native kernels
(``ctrbench/models/fast/fused_dien.{cpp,py}``) against DIEN's torch math in float64: values and
every gradient on edge packings (empty rows, all of length 1, all full, mixed, B = 0 and 1;
widths 32 and 5), saturated logits, determinism, where they run; and the whole DIEN training
step with ``DIEN.NATIVE`` on and off.
"""

from __future__ import annotations

import pytest
import torch
from test_models_sequential import T, batch_with_lengths, bce, card_model, dense, grads
from torch.nn import functional as F

from ctrbench import native
from ctrbench.models.dien import DIEN
from ctrbench.models.fast import fused_dien
from ctrbench.models.fast.fused_dien import STEM
from ctrbench.models.fast.packed_scan import StepPacking
from ctrbench.models.layers import masked_softmax
from ctrbench.schema import HIST_LEN


@pytest.fixture(autouse=True)
def built(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    if native.load(STEM) is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


PACKINGS = {  # name -> (lengths, steps)
    "mixed": ([7, 0, 3, 1, 7, 2, 5, 0], 7),  # empty histories, full ones
    "all_one": ([1, 1, 1, 1], 5),  # no pair for the auxiliary loss
    "all_full": ([6, 6, 6], 6),
    "all_empty": ([0, 0, 0], 4),  # N = 0
    "one_row": ([9], 9),
    "no_row": ([], 4),  # B = 0
    "wide": ([30, 17, 16, 15, 1, 29, 2, 8, 30, 0, 12, 3, 30, 4, 6, 21, 19, 5], 30),
}


def packing_of(name: str) -> tuple[StepPacking, torch.Tensor]:
    lengths, steps = PACKINGS[name]
    lengths = torch.tensor(lengths, dtype=torch.long)
    return StepPacking.of(lengths, steps), torch.arange(steps)[None, :] < lengths[:, None]


def leaves(*shapes, seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(*s, generator=gen, dtype=torch.double)).requires_grad_()
            for s in shapes]


def cast(tensors, dtype) -> list[torch.Tensor]:
    return [t.detach().to(dtype).requires_grad_() for t in tensors]


# --------------------------------------------------------------------------- torch math
def torch_attention(states, query, packing: StepPacking, mask) -> torch.Tensor:
    """DIEN's torch path: the packed attention ``[N]``."""
    scores = (states * query.index_select(0, packing.row_of)).sum(-1)
    return packing.pack(masked_softmax(packing.unpack(scores), mask, dim=1))


def torch_aux(states, behaviours, negatives, packing: StepPacking) -> torch.Tensor:
    """DIEN's torch path of the unweighted auxiliary loss."""
    later = packing.sizes[0] if packing.sizes else 0
    current = states.index_select(0, packing.previous[later:])
    pos = (current * behaviours[later:]).sum(-1)
    neg = (current * negatives[later:]).sum(-1)
    loss = (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum"))
    return loss / max(1, pos.shape[0])


def attention_case(name: str, width: int, seed: int = 0):
    packing, mask = packing_of(name)
    states, query = leaves((packing.places.shape[0], width), (packing.rows, width), seed=seed)
    weights = torch.randn(packing.places.shape[0], generator=torch.Generator().manual_seed(9),
                          dtype=torch.double)
    return packing, mask, states, query, weights


def native_attention(states, query, packing, weights):
    states, query = cast((states, query), torch.float32)
    assert fused_dien.usable(states, query)
    alpha = fused_dien.attention(states, query, packing.row_of)
    return alpha, torch.autograd.grad((alpha * weights.float()).sum(), [states, query])


def aux_case(name: str, width: int, seed: int = 0, scale: float = 1.0):
    packing, _ = packing_of(name)
    n = packing.places.shape[0]
    return packing, leaves((n, width), (n, width), (n, width), seed=seed, scale=scale)


def native_aux(tensors, packing):
    tensors = cast(tensors, torch.float32)
    assert fused_dien.usable(*tensors)
    later = packing.sizes[0] if packing.sizes else 0
    loss = fused_dien.auxiliary_loss(*tensors, packing.previous, later)
    return loss, torch.autograd.grad(1.7 * loss, tensors)  # an incoming gradient other than 1


# --------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("width", [32, 5])
@pytest.mark.parametrize("name", list(PACKINGS))
def test_attention_equals_the_torch_math(name, width):
    packing, mask, states, query, weights = attention_case(name, width)
    want = torch_attention(states, query, packing, mask)
    want_grads = torch.autograd.grad((want * weights).sum(), [states, query])
    alpha, got_grads = native_attention(states, query, packing, weights)
    assert alpha.dtype == torch.float32 and alpha.shape == want.shape
    torch.testing.assert_close(alpha.double(), want, rtol=1e-5, atol=1e-6)
    for what, got, ref in zip(("states", "query"), got_grads, want_grads):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5, msg=what)
    row_sums = torch.zeros(packing.rows, dtype=torch.double).index_add(0, packing.row_of,
                                                                       alpha.double())
    torch.testing.assert_close(row_sums, (packing.lengths > 0).double(), rtol=0,
                               atol=1e-6)  # 0 without steps


def test_attention_with_large_scores_is_finite():
    packing, mask, states, query, weights = attention_case("wide", 32)
    states = (states.detach() * 30).requires_grad_()  # scores in the thousands
    want = torch_attention(states, query, packing, mask)
    want_grads = torch.autograd.grad((want * weights).sum(), [states, query])
    alpha, got_grads = native_attention(states, query, packing, weights)
    torch.testing.assert_close(alpha.double(), want, rtol=1e-4, atol=1e-5)
    for got, ref in zip(got_grads, want_grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("scale", [1.0, 4.0])  # 4: logits of +-100s (saturated sigmoids)
@pytest.mark.parametrize("width", [32, 5])
@pytest.mark.parametrize("name", list(PACKINGS))
def test_auxiliary_loss_equals_the_torch_math(name, width, scale):
    packing, tensors = aux_case(name, width, scale=scale)
    want = torch_aux(*tensors, packing)
    want_grads = torch.autograd.grad(1.7 * want, tensors, allow_unused=True)
    loss, got_grads = native_aux(tensors, packing)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    later = packing.sizes[0] if packing.sizes else 0
    for what, got, ref in zip(("states", "behaviours", "negatives"), got_grads, want_grads):
        ref = torch.zeros_like(tensors[0]) if ref is None else ref
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5, msg=what)
        if what != "states":  # the first steps pair with nothing: exactly 0
            assert torch.equal(got[:later], torch.zeros_like(got[:later]))


def test_auxiliary_loss_pairs_more_than_a_vector_with_a_tail():
    """More pairs than one product chunk of the loss's logs (64 vectors) plus a tail."""
    lengths = torch.tensor([30, 29, 17, 1, 0, 23] * 20)
    packing = StepPacking.of(lengths, 30)
    n = packing.places.shape[0]
    tensors = leaves((n, 32), (n, 32), (n, 32), seed=3, scale=0.5)
    want = torch_aux(*tensors, packing)
    want_grads = torch.autograd.grad(1.7 * want, tensors)
    loss, got_grads = native_aux(tensors, packing)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    for got, ref in zip(got_grads, want_grads):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)


def test_the_kernels_are_deterministic():
    packing, _, states, query, weights = attention_case("wide", 32)
    first, second = (native_attention(states, query, packing, weights) for _ in range(2))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))
    packing, tensors = aux_case("wide", 32)
    first, second = (native_aux(tensors, packing) for _ in range(2))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_usable_only_for_float32_cpu_outside_autocast():
    x = torch.randn(4, 8)
    assert fused_dien.usable(x, x)
    assert not fused_dien.usable(x, x.double())
    assert not fused_dien.usable(x.to("meta"), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_dien.usable(x, x)


def test_bad_shapes_are_refused():
    packing, tensors = aux_case("mixed", 8)
    states = tensors[0].detach().float()
    with pytest.raises(ValueError):
        fused_dien.attention(states, torch.zeros(packing.rows, 7), packing.row_of)
    with pytest.raises(ValueError):
        fused_dien.auxiliary_loss(states, states, states[:-1], packing.previous, 1)


# --------------------------------------------------------------------------- the whole DIEN
def dien_step(native_on: bool, batch, seed: int = 2):
    """DIEN's logits, weighted auxiliary loss, explain() attention and every parameter's
    gradient (float32), with the kernels on or off."""
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DIEN, "NATIVE", native_on)
        for name in ("attention", "auxiliary_loss"):
            function = getattr(fused_dien, name)
            patch.setattr(fused_dien, name, lambda *a, f=function, n=name: (
                calls.append(n), f(*a))[1])
        model = card_model("dien", seed=seed).train()
        torch.manual_seed(0)  # the same dropout masks
        logits, extra = model.forward_train(batch)
        aux = extra["aux"]
        gradients = {n: dense(g) for n, g in grads(model, bce(logits, batch) + aux).items()}
        attention = model.eval().explain(batch)["attention"].values
    return logits, aux, gradients, attention, calls


@pytest.mark.parametrize("lengths", ["mixed", "ones", "full"])
def test_dien_with_the_kernels_equals_its_torch_path(lengths):
    batch = batch_with_lengths(seed=10, size=24)
    if lengths == "ones":
        batch[HIST_LEN].fill_(1)
    elif lengths == "full":
        batch[HIST_LEN].fill_(T)
    logits, aux, gradients, attention, fns = dien_step(True, batch)
    ref_logits, ref_aux, ref_gradients, ref_attention, ref_fns = dien_step(False, batch)
    assert fns == ["attention", "auxiliary_loss", "attention"] and not ref_fns
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux, ref_aux, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attention, ref_attention, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == ref_gradients.keys()
    for name, grad in ref_gradients.items():
        torch.testing.assert_close(gradients[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_dien_without_native_never_calls_the_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(fused_dien, "attention", lambda *a: calls.append(a))
    monkeypatch.setattr(fused_dien, "auxiliary_loss", lambda *a: calls.append(a))
    monkeypatch.setattr(DIEN, "NATIVE", False)
    model = card_model("dien").train()
    batch = batch_with_lengths(seed=4)
    model.forward_train(batch)
    monkeypatch.setattr(DIEN, "NATIVE", True)
    model.double().eval().forward_train(batch)  # float64: the torch path even with NATIVE
    assert not calls
