"""The native GRU / AUGRU kernel (``ctrbench/models/fast/native_scan.{cpp,py}``) against its plain
reference, the torch loop of ``packed_scan`` run in float64 (itself tested against ``nn.GRU`` and
the autograd AUGRU loop in ``tests/test_fast_scans.py``): values and every gradient on edge
packings, saturated gates, determinism at any thread count, the dispatch of the packed scans,
and the whole DIEN with the kernel on and off.
"""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.cards import load_model_card
from ctrbench.models import build_model
from ctrbench.models.fast import packed_scan
from ctrbench.models.fast.native_scan import STEM, native_gated_scan, usable
from ctrbench.models.fast.packed_scan import StepPacking, packed_augru_scan, packed_gru_scan
from ctrbench.schema import HIST_LEN, random_batch, reference_schema


@pytest.fixture
def built():
    """The kernel is built here (a C++ compiler is present), else the test is skipped."""
    if native.load(STEM) is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


needs_native = pytest.mark.usefixtures("built")

EDGE_PACKINGS = {  # name -> (lengths, steps)
    "mixed": ([7, 0, 3, 1, 7, 2, 5], 7),  # an empty history, two full ones
    "all_empty": ([0, 0, 0], 4),  # nothing valid: N = 0
    "all_one": ([1, 1, 1, 1], 5),  # one step: no recurrent product
    "all_full": ([6, 6, 6], 6),
    "one_row": ([9], 9),
    "wide": ([30, 17, 16, 15, 1, 29, 2, 8, 30, 0, 12], 30),
}


def case(lengths: list[int], steps: int, hidden: int, seed: int = 0):
    """(packing, float64 leaves gx [N, 3H], attention [N], w_hh, b_hh, output weights [N, H])."""
    gen = torch.Generator().manual_seed(seed)
    packing = StepPacking.of(torch.tensor(lengths), steps)
    rows = packing.places.shape[0]

    def make(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.double)).requires_grad_()

    gate = torch.rand(rows, generator=gen, dtype=torch.double).requires_grad_()
    weights = torch.randn(rows, hidden, generator=gen, dtype=torch.double)
    return (packing, make(rows, 3 * hidden), gate, make(3 * hidden, hidden, scale=0.5),
            make(3 * hidden, scale=0.5), weights)


def run(kind: str, gx, gate, w_hh, b_hh, packing):
    if kind == "gru":
        return packed_gru_scan(gx, w_hh, b_hh, packing), (gx, w_hh, b_hh)
    return packed_augru_scan(gx, gate, w_hh, b_hh, packing), (gx, gate, w_hh, b_hh)


def values_and_grads(kind, leaves, packing, weights):
    """(states, gradients of the leaves) of ``sum(states * weights)``."""
    states, inputs = run(kind, *leaves, packing)
    grads = torch.autograd.grad((states * weights.to(states.dtype)).sum(), inputs)
    return states, grads


def float32_leaves(leaves):
    return [x.detach().float().requires_grad_() for x in leaves]


def assert_matches_reference(kind, packing, leaves, weights, rtol=2e-5, atol=2e-5):
    """The float32 packed scan (native path, asserted) against the float64 torch loop."""
    expected, expected_grads = values_and_grads(kind, leaves, packing, weights)
    singles = float32_leaves(leaves)
    assert usable(singles[0])
    got, got_grads = values_and_grads(kind, singles, packing, weights)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol)
    for mine, theirs in zip(got_grads, expected_grads):
        torch.testing.assert_close(mine.double(), theirs, rtol=rtol, atol=atol)


@needs_native
@pytest.mark.parametrize("hidden", [32, 5, 40])  # DIEN's width; odd; a generic vector count
@pytest.mark.parametrize("packing_name", sorted(EDGE_PACKINGS))
@pytest.mark.parametrize("kind", ["gru", "augru"])
def test_native_scans_equal_the_float64_torch_loop(kind, packing_name, hidden):
    packing, gx, gate, w_hh, b_hh, weights = case(*EDGE_PACKINGS[packing_name], hidden)
    assert_matches_reference(kind, packing, (gx, gate, w_hh, b_hh), weights)


@needs_native
@pytest.mark.parametrize("kind", ["gru", "augru"])
def test_native_scans_saturate_cleanly(kind):
    """Pre-activations of several hundred either way: gates at exactly 0 or 1, no NaN/inf."""
    packing, gx, gate, w_hh, b_hh, weights = case([12, 5, 12, 0, 3], 12, 32, seed=2)
    with torch.no_grad():
        gx.mul_(300.0)
    assert_matches_reference(kind, packing, (gx, gate, w_hh, b_hh), weights)


@needs_native
@pytest.mark.parametrize("kind", ["gru", "augru"])
def test_native_scans_are_deterministic_at_any_thread_count(kind):
    packing, *leaves, weights = case(*EDGE_PACKINGS["wide"], 32, seed=5)
    singles = float32_leaves(leaves)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            results.append(values_and_grads(kind, singles, packing, weights))
    finally:
        torch.set_num_threads(threads)
    for states, grads in results[1:]:
        assert torch.equal(states, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


@needs_native
def test_native_scan_never_writes_into_the_incoming_gradient():
    packing, gx, _, w_hh, b_hh, _ = case([4], 4, 8)
    gx, w_hh, b_hh = float32_leaves((gx, w_hh, b_hh))
    states = native_gated_scan(gx, w_hh, b_hh, None, packing.sizes, packing.previous)
    grad_out = torch.randn(states.shape)
    before = grad_out.clone()
    torch.autograd.grad(states, (gx, w_hh), grad_out)
    assert torch.equal(grad_out, before)


@needs_native
def test_packed_scans_take_the_native_kernel_only_where_it_can_run(monkeypatch):
    packing, gx, gate, w_hh, b_hh, _ = case([3, 1], 3, 4)
    single = float32_leaves((gx, gate, w_hh, b_hh))
    name = type(packed_augru_scan(single[0], single[1], *single[2:], packing).grad_fn).__name__
    assert "Native" in name
    assert "Native" not in type(packed_gru_scan(gx, w_hh, b_hh, packing).grad_fn).__name__
    monkeypatch.setattr(packed_scan, "NATIVE", False)
    assert "Native" not in type(packed_gru_scan(single[0], *single[2:], packing).grad_fn).__name__


def test_native_scan_is_not_used_where_it_cannot_run(monkeypatch):
    gx = torch.randn(5, 12)
    assert not usable(gx.double())
    assert not usable(gx.bfloat16())
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv(native.OPT_OUT_VAR, "0")
    assert not usable(gx)
    assert native.status(STEM) == "off (CTRBENCH_NATIVE=0)"


# --------------------------------------------------------------------------- the whole DIEN
def dien_outputs(native_on: bool, monkeypatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DIEN's training logits + auxiliary loss and every parameter's gradient, one seed."""
    monkeypatch.setattr(packed_scan, "NATIVE", native_on)
    schema = reference_schema(n_items=200, n_cates=12, max_len=10,
                              user_fields={"user_id": 30}, context_fields={"hour": 6})
    card = load_model_card("dien")
    torch.manual_seed(0)
    model = build_model(card.arch, schema, card.params).train()
    batch = random_batch(schema, 24, torch.Generator().manual_seed(1))
    lengths = batch[HIST_LEN]
    lengths[:4] = torch.tensor([0, 10, 1, 10])  # empty, full and one-step histories
    mask = torch.arange(10)[None, :] < lengths[:, None]
    for spec in (*schema.behavior, *schema.neg_behavior):
        batch[spec.name] = batch[spec.name].clamp_min(2) * mask
    logits, aux = model.forward_train(batch)
    loss = logits.sum() + aux["aux"]
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return logits, {name: g for name, g in zip(params, grads) if g is not None}


@needs_native
def test_dien_with_the_native_scans_equals_the_torch_loop(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    logits, grads = dien_outputs(True, monkeypatch)
    torch_logits, torch_grads = dien_outputs(False, monkeypatch)
    torch.testing.assert_close(logits, torch_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == torch_grads.keys()
    assert {"extractor.weight_hh_l0", "evolution.hidden_proj.weight"} <= grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, torch_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_without_a_compiler_the_packed_scans_run_the_torch_loop(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv(native.CACHE_VAR, str(tmp_path / "native"))
    monkeypatch.delenv(native.OPT_OUT_VAR, raising=False)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    packing, gx, gate, w_hh, b_hh, _ = case([3, 0, 2], 3, 4)
    gx, gate, w_hh, b_hh = float32_leaves((gx, gate, w_hh, b_hh))
    states = packed_augru_scan(gx, gate, w_hh, b_hh, packing)
    assert "Native" not in type(states.grad_fn).__name__
    assert states.shape == (5, 4) and native.status(STEM).startswith("no C++ compiler")


@needs_native
def test_native_scan_runs_in_float32_under_bf16_autocast(monkeypatch):
    """Under CPU autocast the packed scans take 16-bit inputs to float32; the kernel runs there
    and its backward (with the weight gradient's product) stays float32."""
    packing, gx, gate, w_hh, b_hh, _ = case([5, 3, 0, 1], 5, 8)
    results = []
    for native_on in (True, False):
        monkeypatch.setattr(packed_scan, "NATIVE", native_on)
        leaves = float32_leaves((gx, gate, w_hh, b_hh))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            states = packed_augru_scan(leaves[0].bfloat16(), leaves[1], *leaves[2:], packing)
            assert ("Native" in type(states.grad_fn.next_functions[0][0]).__name__) == native_on
            states.float().sum().backward()
        assert states.dtype == torch.bfloat16
        results.append((states.float(), [leaf.grad for leaf in leaves]))
    (native_states, native_grads), (torch_states, torch_grads) = results
    torch.testing.assert_close(native_states, torch_states, rtol=1e-2, atol=1e-2)
    for a, b in zip(native_grads, torch_grads):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
