"""Shared layers against hand-computed values (numbers worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.inputs import (
    FieldEmbedding,
    LinearTerm,
    embed_pooled_fields,
    num_fields,
    pooled_fields,
)
from ctrbench.models.layers import (
    CIN,
    CrossLayer,
    CrossNetwork,
    Dice,
    FactorizationMachine,
    first_order_bank,
    masked_mean,
    masked_softmax,
)
from ctrbench.schema import FieldSpec, Schema


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))


def tiny_schema() -> Schema:
    """item/cate + histories (T = 3), one user field sharing the cate table, one context field."""
    return Schema((
        FieldSpec("item_id", "item", "item", 6),
        FieldSpec("cate_id", "item", "cate", 4),
        FieldSpec("hist_item_id", "behavior", "item", 6),
        FieldSpec("hist_cate_id", "behavior", "cate", 4),
        FieldSpec("neg_hist_item_id", "neg_behavior", "item", 6),
        FieldSpec("neg_hist_cate_id", "neg_behavior", "cate", 4),
        FieldSpec("fav_cate", "user", "cate", 4),
        FieldSpec("weekday", "context", "weekday", 3),
    ), max_len=3)


def tiny_batch() -> dict[str, torch.Tensor]:
    return {
        "item_id": torch.tensor([2, 5]),
        "cate_id": torch.tensor([3, 2]),
        "hist_item_id": torch.tensor([[3, 4, 0], [0, 0, 0]]),
        "hist_cate_id": torch.tensor([[2, 3, 0], [0, 0, 0]]),
        "neg_hist_item_id": torch.tensor([[5, 5, 0], [0, 0, 0]]),
        "neg_hist_cate_id": torch.tensor([[3, 3, 0], [0, 0, 0]]),
        "fav_cate": torch.tensor([2, 3]),
        "weekday": torch.tensor([2, 2]),
        "hist_len": torch.tensor([2, 0]),
    }


# --------------------------------------------------------------------------- FM
def test_factorization_machine_hand_values():
    # v1 = (1, 2), v2 = (3, 0), v3 = (-1, 1):
    # <v1,v2> = 3, <v1,v3> = -1 + 2 = 1, <v2,v3> = -3  -> sum of pairs = 1.
    # Second sample: a single non-zero field has no pairs -> 0.
    fields = torch.tensor([
        [[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0]],
        [[4.0, 5.0], [0.0, 0.0], [0.0, 0.0]],
    ])
    out = FactorizationMachine()(fields)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0]))


# --------------------------------------------------------------------------- DCN cross layer
def test_cross_layer_hand_values():
    layer = CrossLayer(2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2]))
    x0 = torch.tensor([[1.0, 2.0]])
    xl = torch.tensor([[3.0, -1.0]])
    # xl . w = 1.5 - 1 = 0.5; x0 * 0.5 = (0.5, 1.0); + b = (0.6, 0.8); + xl = (3.6, -0.2)
    torch.testing.assert_close(layer(x0, xl), torch.tensor([[3.6, -0.2]]))


def test_cross_network_hand_values():
    net = CrossNetwork(2, n_layers=2)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([1.0, 0.0]))
        net.layers[0].bias.zero_()
        net.layers[1].weight.copy_(torch.tensor([0.0, 1.0]))
        net.layers[1].bias.copy_(torch.tensor([1.0, 1.0]))
    x0 = torch.tensor([[1.0, 2.0]])
    # x1 = x0 * (x0 . (1,0)) + 0 + x0 = (1,2)*1 + (1,2) = (2, 4)
    # x2 = x0 * (x1 . (0,1)) + (1,1) + x1 = (4, 8) + (1, 1) + (2, 4) = (7, 13)
    torch.testing.assert_close(net(x0), torch.tensor([[7.0, 13.0]]))


def test_cross_layer_initial_bias_zero_and_weight_truncated():
    layer = CrossLayer(500)
    assert torch.equal(layer.bias, torch.zeros(500))
    assert layer.weight.abs().max() <= 0.04 + 1e-7


# --------------------------------------------------------------------------- CIN
def _set_cin(cin: CIN, weights: list[list[list[float]]], biases: list[list[float]]) -> None:
    with torch.no_grad():
        for layer, w, b in zip(cin.layers, weights, biases, strict=True):
            layer.weight.copy_(torch.tensor(w))  # (H_k, m*H_{k-1})
            layer.bias.copy_(torch.tensor(b))


# x0 has m = 2 fields, D = 2: f0 = (1, 2), f1 = (3, -1).
# Layer 1 products z[i*H + j] = x0[i] * x0[j]: z00 = (1, 4), z01 = (3, -2), z10 = (3, -2),
# z11 = (9, 1).
CIN_X0 = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
# W1 rows: map0 = z00 = (1, 4); map1 = z01 + z11 = (12, -1)
CIN_W1 = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]


@pytest.mark.parametrize(("activation", "expected"), [("identity", [11.0, 8.0]),
                                                      ("relu", [12.0, 8.0])])
def test_cin_split_half_hand_values(activation, expected):
    # split_half: layer 1 (2 maps) sends map0 = (1, 4) on and map1 = (12, -1) to the output:
    #   identity: sum over D = 11; relu: (12, 0) -> 12.
    # Layer 2 (1 map) over x0 x h, h = map0 = (1, 4): z0 = (1, 8), z1 = (3, -4);
    #   W2 = (1, 2), b2 = 0.5: (1, 8) + 2 * (3, -4) + 0.5 = (7.5, 0.5) -> sum 8 (relu: same).
    cin = CIN(num_fields=2, layer_sizes=[2, 1], split_half=True, activation=activation)
    _set_cin(cin, [CIN_W1, [[1.0, 2.0]]], [[0.0, 0.0], [0.5]])
    assert cin.out_dim == 2
    torch.testing.assert_close(cin(CIN_X0), torch.tensor([expected]))


def test_cin_without_split_hand_values():
    # Without split, both layer-1 maps go to the output (sums 5 and 11) and to layer 2:
    # h0 = (1, 4), h1 = (12, -1); z[i*2 + j] = x0[i] * h[j]: z00 = (1, 8), z01 = (12, -2),
    # z10 = (3, -4), z11 = (36, 1). W2 = (1, 0, 0, 1): (37, 9) -> 46.
    cin = CIN(num_fields=2, layer_sizes=[2, 1], split_half=False, activation="identity")
    _set_cin(cin, [CIN_W1, [[1.0, 0.0, 0.0, 1.0]]], [[0.0, 0.0], [0.0]])
    assert cin.out_dim == 3
    torch.testing.assert_close(cin(CIN_X0), torch.tensor([[5.0, 11.0, 46.0]]))


def test_cin_rejects_wrong_field_count_and_odd_split():
    with pytest.raises(ValueError, match="even"):
        CIN(num_fields=3, layer_sizes=[3, 2], split_half=True)
    cin = CIN(num_fields=3, layer_sizes=[4])
    with pytest.raises(ValueError, match="3 fields"):
        cin(torch.zeros(1, 2, 4))


# --------------------------------------------------------------------------- Dice
@pytest.mark.parametrize("fused", [True, False])  # the fast path and layers.dice
def test_dice_train_mode_uses_batch_statistics_and_updates_running_ones(fused):
    dice = Dice(1, momentum=0.01, fused=fused)
    with torch.no_grad():
        dice.alpha.fill_(0.5)
    x = torch.tensor([[1.0], [5.0]])
    # mean 3, biased var 4, std 2: p(1) = sigmoid(-1) = 0.268941, p(5) = sigmoid(1) = 0.731059
    # f(1) = 0.268941 * 1 + 0.731059 * 0.5 * 1 = 0.634470
    # f(5) = 0.731059 * 5 + 0.268941 * 0.5 * 5 = 3.655293 + 0.672353 = 4.327646
    out = dice.train()(x)
    torch.testing.assert_close(out, torch.tensor([[0.634470], [4.327646]]), atol=1e-5, rtol=0)
    # running_mean = 0 + 0.01 * (3 - 0) = 0.03; running_var = 1 + 0.01 * (4 - 1) = 1.03
    torch.testing.assert_close(dice.running_mean, torch.tensor([0.03]))
    torch.testing.assert_close(dice.running_var, torch.tensor([1.03]))


@pytest.mark.parametrize("fused", [True, False])  # the fast path and layers.dice
def test_dice_eval_mode_uses_running_statistics_only(fused):
    dice = Dice(1, fused=fused)
    with torch.no_grad():
        dice.alpha.fill_(0.5)
        dice.running_mean.fill_(2.0)
        dice.running_var.fill_(4.0)
    dice.eval()
    # p(4) = sigmoid((4 - 2) / 2) = 0.731059; f(4) = 0.731059 * 4 + 0.268941 * 0.5 * 4 = 3.462119
    alone = dice(torch.tensor([[4.0]]))
    torch.testing.assert_close(alone, torch.tensor([[3.462119]]), atol=1e-5, rtol=0)
    with_others = dice(torch.tensor([[4.0], [100.0], [-7.0]]))
    assert torch.equal(with_others[:1], alone)
    assert torch.equal(dice.running_mean, torch.tensor([2.0]))  # eval never updates


# --------------------------------------------------------------------------- masking helpers
def test_masked_mean_hand_values():
    seq = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [50.0, 60.0]],
                        [[7.0, 8.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # row 0: mean of (1,2) and (3,4) = (2, 3); row 1: nothing valid -> 0
    torch.testing.assert_close(masked_mean(seq, mask), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))


def test_masked_softmax_hand_values():
    scores = torch.tensor([[0.0, math.log(3.0), 5.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # row 0: exp(0) : exp(ln 3) = 1 : 3 -> (0.25, 0.75), masked 5.0 ignored; row 1: all zeros
    out = masked_softmax(scores, mask)
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]]))


# --------------------------------------------------------------------------- embeddings
def test_first_order_bank_initialisation():
    schema = tiny_schema()
    zero = first_order_bank(schema, init_std=0.0)
    assert torch.equal(zero.weight, torch.zeros_like(zero.weight))
    assert zero.weight.shape == (sum(schema.vocab_sizes.values()), 1)
    small = first_order_bank(schema)  # truncated normal, std 0.02, cut at 2 std
    for vocab in small.vocab_sizes:
        block = small.block(vocab)
        assert block.shape[1] == 1
        assert block.abs().max() <= 0.04 + 1e-7
        assert block[0].item() == 0.0


# --------------------------------------------------------------------------- input assembly
def test_pooled_fields_count_fields_not_tables_and_skip_negatives():
    schema = tiny_schema()
    names = [f.name for f in pooled_fields(schema)]
    assert names == ["item_id", "cate_id", "hist_item_id", "hist_cate_id", "fav_cate", "weekday"]
    assert num_fields(schema) == 6  # 3 tables
    assert FieldEmbedding(schema, 4).num_fields == 6


def test_embed_pooled_fields_hand_values():
    schema = tiny_schema()
    bank = EmbeddingBank(schema, dim=1)
    with torch.no_grad():  # row r of every table holds the value r * 10 (+ 1 for cate)
        bank.block("item").copy_(torch.arange(6.0).unsqueeze(1) * 10)
        bank.block("cate").copy_(torch.arange(4.0).unsqueeze(1) * 10 + 1)
        bank.block("weekday").copy_(torch.arange(3.0).unsqueeze(1) * 10)
        for vocab in bank.vocab_sizes:
            bank.block(vocab)[0] = 0.0
    out = embed_pooled_fields(bank, schema, tiny_batch())
    assert out.shape == (2, 6, 1)
    # sample 0: item 2 -> 20, cate 3 -> 31, hist items (3, 4) -> mean 35,
    # hist cates (2, 3) -> (21 + 31) / 2 = 26, fav_cate 2 -> 21, weekday 2 -> 20
    # sample 1: item 5 -> 50, cate 2 -> 21, empty histories -> 0, 0, fav 3 -> 31, weekday 20
    expected = torch.tensor([[20.0, 31.0, 35.0, 26.0, 21.0, 20.0],
                             [50.0, 21.0, 0.0, 0.0, 31.0, 20.0]])
    torch.testing.assert_close(out.squeeze(-1), expected)


def test_linear_term_hand_values_ignore_padding_and_negatives():
    schema = tiny_schema()
    linear = LinearTerm(schema)
    with torch.no_grad():
        for vocab, size in linear.bank.vocab_sizes.items():
            block = linear.bank.block(vocab)
            block.copy_(torch.arange(size, dtype=torch.float).unsqueeze(1))
            block[0] = 0.0
        linear.bias.fill_(0.5)
    batch = tiny_batch()
    # sample 0: 0.5 + item 2 + cate 3 + mean(3, 4) + mean(2, 3) + fav 2 + weekday 2
    #   = 0.5 + 2 + 3 + 3.5 + 2.5 + 2 + 2 = 15.5
    # sample 1: 0.5 + 5 + 2 + 0 + 0 + 3 + 2 = 12.5
    torch.testing.assert_close(linear(batch), torch.tensor([15.5, 12.5]))
    batch["hist_item_id"] = torch.tensor([[3, 4, 5], [5, 5, 5]])  # padded positions changed
    batch["neg_hist_item_id"] = torch.tensor([[2, 2, 2], [3, 3, 3]])
    torch.testing.assert_close(linear(batch), torch.tensor([15.5, 12.5]))


def test_dice_bf16_input_keeps_float32_statistics():
    # Under bf16 autocast the input arrives in bf16; the statistics stay float32 (same numbers
    # as the float32 test above: mean 3, var 4 -> running 0.03 and 1.03).
    dice = Dice(1, momentum=0.01).train()
    with torch.no_grad():
        dice.alpha.fill_(0.5)
    out = dice(torch.tensor([[1.0], [5.0]], dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(dice.running_mean, torch.tensor([0.03]))
    torch.testing.assert_close(dice.running_var, torch.tensor([1.03]))
    torch.testing.assert_close(out.float(), torch.tensor([[0.634470], [4.327646]]),
                               atol=0.03, rtol=0)
