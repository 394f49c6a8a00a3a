"""The peers rebuilt by benchmarks/peer_throughput.py (benchmarks/peers/) against the libraries.

Three layers of checks:
- always (plain torch): the card values the peers are built from equal ctrbench's cards; the
  FuxiCTR AUGRU written in benchmarks/peers/fuxictr.py equals a per-row reference loop; the
  FuxiCTR feature map shares tables and pools as documented;
- with DeepCTR-Torch 0.3.0 and FuxiCTR 2.3.10 importable (the scratch venv of
  benchmarks/peers/README.md): the DeepCTR-Torch shims keep the library's own parameter count
  (xDeepFM: all but the documented first CIN layer) and make the models run;
- with ``FUXICTR_MODEL_ZOO`` naming a FuxiCTR checkout's ``model_zoo`` folder: every FuxiCTR
  model composed here has the parameter count of the zoo's own model.
Run the peer checks with ``/work/peers-venv/bin/python -m pytest tests/test_peer_models.py -rs``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ctrbench.cards import load_model_card
from ctrbench.schema import reference_schema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from peers import common
from peers import fuxictr as fux

SCHEMA = reference_schema(n_items=60, n_cates=9, max_len=6,
                          user_fields={"user_id": 30, "hist_len_bucket": 5},
                          context_fields={"month": 13})


def peer(name: str):
    """The peer library, or a skip that says how to get it."""
    return pytest.importorskip(
        name, reason=f"{name} is not importable: the peer checks run in the scratch venv of "
                     "benchmarks/peers/README.md (/work/peers-venv/bin/python -m pytest ...)")


# --------------------------------------------------------------------------- no peers needed
def test_peer_hyperparameters_are_the_cards():
    def params(name: str) -> dict:
        return load_model_card(name).params

    assert common.TOWER == params("deepfm")["hidden_units"] == params("wide_deep")["hidden_units"]
    assert common.TOWER == params("dcn")["hidden_units"] == params("xdeepfm")["hidden_units"]
    assert common.SEQ_TOWER == params("din")["hidden_units"] == params("dien")["hidden_units"]
    assert common.CROSS_LAYERS == params("dcn")["cross_layers"]
    assert common.CIN_SIZES == params("xdeepfm")["cin_layer_sizes"]
    assert common.DIN_ATTENTION == params("din")["attention_hidden"]
    assert params("din")["attention_softmax"] is False
    assert common.AUX_WEIGHT == params("dien")["aux_weight"]
    assert {common.DROPOUT} == {params(m)["dropout"] for m in
                                ("wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien")}
    assert common.INIT_STD == params("deepfm")["init_std"]


def test_fuxictr_augru_matches_a_per_row_loop():
    torch.manual_seed(0)
    width, lengths = 4, torch.tensor([5, 3, 1, 4, 2, 5])
    x = torch.randn(len(lengths), 5, width)
    att = torch.rand(len(lengths), 5)
    layer = fux.AUGRU(width)
    out = layer(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False),
                pack_padded_sequence(att, lengths, batch_first=True, enforce_sorted=False))
    for row, n in enumerate(lengths.tolist()):
        h = torch.zeros(width)
        for t in range(n):
            gu, gr, gn = layer.x2h(x[row, t]).chunk(3)
            hu, hr, hn = layer.h2h(h).chunk(3)
            update = torch.sigmoid(gu + hu) * att[row, t]
            new = torch.tanh(gn + torch.sigmoid(gr + hr) * hn)
            h = (1 - update) * h + update * new
        torch.testing.assert_close(out[row], h)


@pytest.mark.parametrize("model", common.MODELS)
def test_fuxictr_feature_map_shares_tables_and_pools_as_documented(model):
    doc = fux.feature_map_doc(SCHEMA, model)
    specs = {name: spec for f in doc["features"] for name, spec in f.items()}
    assert doc["num_fields"] == len(specs) and all(s["padding_idx"] == 0 for s in specs.values())
    sequences = {n: s for n, s in specs.items() if s["type"] == "sequence"}
    expected = {"hist_item_id": "item_id", "hist_cate_id": "cate_id"}
    if model == "dien":
        expected.update({"neg_hist_item_id": "item_id", "neg_hist_cate_id": "cate_id"})
    assert {n: s["share_embedding"] for n, s in sequences.items()} == expected
    pooled = model not in ("din", "dien")
    assert all(("feature_encoder" in s) == pooled for s in sequences.values())
    assert set(specs) - set(sequences) == {f.name for f in (*SCHEMA.item, *SCHEMA.user,
                                                            *SCHEMA.context)}


# --------------------------------------------------------------------------- DeepCTR-Torch
def _deepctr_inputs(net, rows: int = 8) -> torch.Tensor:
    """Random ids in DeepCTR-Torch's input layout (every feature column + hist_len)."""
    rng = np.random.default_rng(0)
    parts = []
    for name in net.feature_index:
        if name == "hist_len":
            parts.append(rng.integers(1, SCHEMA.max_len + 1, (rows, 1)))
        else:
            field = SCHEMA.field(name)
            width = SCHEMA.max_len if field.group in ("behavior", "neg_behavior") else 1
            parts.append(rng.integers(1, field.vocab_size, (rows, width)))
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


@pytest.mark.parametrize("model", common.MODELS)
def test_deepctr_shims_keep_the_library_parameter_count(model, monkeypatch):
    peer("deepctr_torch")
    from peers import deepctr

    shimmed = deepctr.build_deepctr(model, SCHEMA, 1e-3, 8)
    monkeypatch.setattr(deepctr, "dice_on_2d", lambda dnn: None)
    monkeypatch.setattr(deepctr, "cin_on_fields", lambda net, num_fields: None)
    own = deepctr.build_deepctr(model, SCHEMA, 1e-3, 8)
    extra = 0
    if model == "xdeepfm":  # the shim sizes the CIN by fields, not by embedding tables
        fields, tables = len(deepctr.deepctr_columns(SCHEMA, model, 8)), len(own.embedding_dict)
        assert (fields, tables) == (7, 5)  # two history fields share the candidate's tables

        def conv_weights(f: int) -> int:  # layer k: size_k x (f * width of layer k-1) kernels
            total, previous = 0, f
            for size in common.CIN_SIZES:
                total += size * f * previous
                previous = size // 2  # split-half: half of each layer goes on
            return total

        extra = conv_weights(fields) - conv_weights(tables)
    assert common.count_parameters(shimmed) == common.count_parameters(own) + extra
    shimmed.eval()
    with torch.no_grad():
        out = shimmed(_deepctr_inputs(shimmed))
    assert out.shape == (8, 1) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- FuxiCTR
ZOO_FILES = {"lr": "LR/src/LR.py", "wide_deep": "WideDeep/WideDeep_torch/src/WideDeep.py",
             "dcn": "DCN/DCN_torch/src/DCN.py", "deepfm": "DeepFM/DeepFM_torch/src/DeepFM.py",
             "xdeepfm": "xDeepFM/src/xDeepFM.py", "din": "DIN/src/DIN.py",
             "dien": "DIEN/src/DIEN.py"}
ZOO_CLASSES = {"lr": "LR", "wide_deep": "WideDeep", "dcn": "DCN", "deepfm": "DeepFM",
               "xdeepfm": "xDeepFM", "din": "DIN", "dien": "DIEN"}


def zoo_kwargs(model: str) -> dict:
    """The zoo model's arguments for ctrbench's card values (as the rebuild uses them)."""
    tower = {"net_dropout": common.DROPOUT, "batch_norm": False}
    return {
        "lr": {},
        "wide_deep": {"hidden_units": common.TOWER, "hidden_activations": "ReLU", **tower},
        "dcn": {"dnn_hidden_units": common.TOWER, "dnn_activations": "ReLU",
                "num_cross_layers": common.CROSS_LAYERS, **tower},
        "deepfm": {"hidden_units": common.TOWER, "hidden_activations": "ReLU", **tower},
        "xdeepfm": {"dnn_hidden_units": common.TOWER, "dnn_activations": "ReLU",
                    "cin_hidden_units": common.CIN_SIZES, **tower},
        "din": {"dnn_hidden_units": common.SEQ_TOWER, "dnn_activations": "Dice",
                "attention_hidden_units": common.DIN_ATTENTION,
                "attention_hidden_activations": "Dice", "din_use_softmax": False,
                "din_target_field": [common.TARGET], "din_sequence_field": [common.HISTORY],
                **tower},
        "dien": {"dnn_hidden_units": common.SEQ_TOWER, "dnn_activations": "Dice",
                 "dien_target_field": [common.TARGET], "dien_sequence_field": [common.HISTORY],
                 "dien_neg_seq_field": [common.NEG_HISTORY], "gru_type": "AUGRU",
                 "enable_sum_pooling": True, "attention_type": "bilinear_attention",
                 "use_attention_softmax": True, "aux_hidden_units": [100, 50],
                 "aux_activation": "ReLU", "aux_loss_alpha": common.AUX_WEIGHT, **tower},
    }[model]


def load_zoo_class(zoo: Path, model: str):
    path = zoo / ZOO_FILES[model]
    if not path.is_file():
        pytest.fail(f"FUXICTR_MODEL_ZOO={zoo}: no {ZOO_FILES[model]} (a FuxiCTR checkout's "
                    "model_zoo folder is expected)")
    spec = importlib.util.spec_from_file_location(f"fuxictr_zoo_{model}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, ZOO_CLASSES[model])


@pytest.mark.parametrize("model", common.MODELS)
def test_fuxictr_models_have_the_model_zoo_parameter_count(model, tmp_path):
    peer("fuxictr")
    zoo = os.environ.get("FUXICTR_MODEL_ZOO")
    if not zoo:
        pytest.skip("FUXICTR_MODEL_ZOO is not set: FuxiCTR's pip package has no models; point "
                    "it at the model_zoo folder of a FuxiCTR checkout (tag v2.3.10)")
    dim = 8
    common_kwargs = {"optimizer": "adam", "loss": "binary_crossentropy", "learning_rate": 1e-3,
                     "gpu": -1, "model_root": str(tmp_path / "ckpt"), "metrics": ["logloss"],
                     "verbose": 0}
    args = SimpleNamespace(embedding_dim=dim, l2=0.0, batch_size=8, fuxictr_workers=0)
    run = fux.FuxiCTRRun(model, SCHEMA, {}, args, tmp_path)
    regularizers = ({} if model == "lr"
                    else {"embedding_regularizer": None, "net_regularizer": None})
    zoo_model = load_zoo_class(Path(zoo), model)(
        run.fmap, embedding_dim=dim, **zoo_kwargs(model), **regularizers, **common_kwargs)
    assert common.count_parameters(run.net) == common.count_parameters(zoo_model)
