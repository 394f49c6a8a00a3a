"""DeepCTR-Torch 0.3.0: its own seven models on the shared columns, plus two shims.

Every model is the library's own class (``deepctr_torch.models``); :func:`dice_on_2d` and
:func:`cin_on_fields` work around two bugs of 0.3.0 (benchmarks/peers/README.md, "Shims").
The library is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from peers.common import (
    AUX_WEIGHT,
    CIN_SIZES,
    CROSS_LAYERS,
    DIN_ATTENTION,
    DROPOUT,
    INIT_STD,
    SEQ_TOWER,
    TARGET,
    TOWER,
)


def deepctr_columns(schema, model: str, dim: int) -> list:
    """SparseFeat / VarLenSparseFeat: histories mean-pooled by ``hist_len`` and sharing the
    candidate's tables (``embedding_name``), as in DeepCTR-Torch's DIN/DIEN examples."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat

    owner = {f.vocab: f.name for f in schema.item}

    def sequence(f):
        inner = SparseFeat(f.name, f.vocab_size, dim, embedding_name=owner[f.vocab])
        return VarLenSparseFeat(inner, maxlen=schema.max_len, combiner="mean",
                                length_name="hist_len")

    columns = [SparseFeat(f.name, f.vocab_size, dim) for f in schema.item]
    columns += [sequence(f) for f in schema.behavior]
    if model == "dien":
        columns += [sequence(f) for f in schema.neg_behavior]
    columns += [SparseFeat(f.name, f.vocab_size, dim) for f in (*schema.user, *schema.context)]
    return columns


def dice_on_2d(dnn) -> None:
    """Shim: DeepCTR-Torch 0.3.0's DIN/DIEN build their final DNN with Dice(dim=3) (DNN's
    default ``dice_dim``) and feed it [B, H] inputs, which fails an assertion; give that tower
    the library's own Dice with dim=2. The attention DNNs (3-D inputs) keep dim=3."""
    from deepctr_torch.layers.activation import Dice

    for i, act in enumerate(dnn.activation_layers):
        if isinstance(act, Dice) and act.dim == 3:
            dnn.activation_layers[i] = Dice(act.bn.num_features, dim=2)


def cin_on_fields(net, num_fields: int) -> None:
    """Shim: DeepCTR-Torch 0.3.0's xDeepFM sizes its CIN by ``len(embedding_dict)`` (embedding
    TABLES, 11 here, as the history shares the item/category tables) while the CIN input stacks
    one embedding per FIELD (13), so the first Conv1d gets 169 channels instead of 121 and
    fails; rebuild the library's own CIN with the field count (same sizes, split-half, ReLU)."""
    from deepctr_torch.layers import CIN

    cin = net.cin
    net.cin = CIN(num_fields, cin.layer_size, "relu", cin.split_half, 0.0, 0)


def build_deepctr(model: str, schema, l2: float, dim: int):
    from deepctr_torch.models import DCN, DIEN, DIN, WDL, DeepFM, xDeepFM

    cols = deepctr_columns(schema, model, dim)
    common = {"l2_reg_embedding": l2, "init_std": INIT_STD, "seed": 0, "device": "cpu"}
    tower = {"dnn_hidden_units": tuple(TOWER), "dnn_dropout": DROPOUT, "dnn_activation": "relu"}
    if model == "lr":  # no LR class: WDL without a deep part is logit = linear(x)
        net = WDL(cols, [], dnn_hidden_units=(), l2_reg_linear=l2, **common)
    elif model == "wide_deep":
        net = WDL(cols, cols, l2_reg_linear=l2, **tower, **common)
    elif model == "dcn":  # ctrbench's DCN has no linear part: no linear feature columns
        net = DCN([], cols, cross_num=CROSS_LAYERS, cross_parameterization="vector",
                  l2_reg_cross=0.0, **tower, **common)
    elif model == "deepfm":
        net = DeepFM(cols, cols, l2_reg_linear=l2, **tower, **common)
    elif model == "xdeepfm":
        net = xDeepFM(cols, cols, cin_layer_size=tuple(CIN_SIZES), cin_split_half=True,
                      cin_activation="relu", l2_reg_linear=l2, **tower, **common)
        cin_on_fields(net, len(cols))
    elif model == "din":
        net = DIN(cols, list(TARGET), dnn_hidden_units=tuple(SEQ_TOWER), dnn_activation="dice",
                  att_hidden_size=tuple(DIN_ATTENTION), att_activation="dice",
                  att_weight_normalization=False, dnn_dropout=DROPOUT, **common)
        dice_on_2d(net.dnn)
    elif model == "dien":  # attention: the library's MLP attention (defaults (64, 16), ReLU)
        net = DIEN(cols, list(TARGET), gru_type="AUGRU", use_negsampling=True, alpha=AUX_WEIGHT,
                   dnn_hidden_units=tuple(SEQ_TOWER), dnn_activation="dice",
                   att_weight_normalization=True, dnn_dropout=DROPOUT, **common)
        dice_on_2d(net.dnn)
    else:
        raise ValueError(model)
    net.compile("adam", "binary_crossentropy")  # torch Adam, lr 1e-3
    return net


class DeepCTRRun:
    """One DeepCTR-Torch model on the shared columns."""

    library = "deepctr"

    def __init__(self, model: str, schema, cols: dict[str, np.ndarray], args) -> None:
        torch.manual_seed(0)
        self.net = build_deepctr(model, schema, args.l2, args.embedding_dim)
        self.cols = cols
        self.names = list(self.net.feature_index)  # feature columns + hist_len, in input order
        self.batch_size = args.batch_size

    def fit(self, lo: int, hi: int) -> None:
        x = {n: self.cols[n][lo:hi] for n in self.names}
        y = self.cols["label"][lo:hi]
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and a banner
            self.net.fit(x, y, batch_size=self.batch_size, epochs=1, verbose=0, shuffle=True)

    def batches(self, lo: int, hi: int) -> list:
        parts = [self.cols[n][lo:hi].reshape(hi - lo, -1) for n in self.names]
        X = torch.from_numpy(np.concatenate(parts, axis=-1)).float()  # as fit feeds the model
        y = torch.from_numpy(np.ascontiguousarray(self.cols["label"][lo:hi])).float()
        b = self.batch_size
        return [(X[i:i + b], y[i:i + b]) for i in range(0, hi - lo, b)]

    def step(self, batches: list) -> None:
        """The body of DeepCTR-Torch's fit loop (BaseModel.fit), without the DataLoader."""
        net = self.net
        net.train()
        for x, y in batches:
            y_pred = net(x).squeeze(-1)
            net.optim.zero_grad()
            loss = net.loss_func(y_pred, y, reduction="sum")
            total = loss + net.get_regularization_loss() + net.aux_loss
            total.backward()
            net.optim.step()
