"""Training throughput of the peers, DeepCTR-Torch 0.3.0 and FuxiCTR 2.3.10, side by side.

Run with a SCRATCH virtual environment that holds the peers (never a dependency of ctrbench; see
``benchmarks/peers/README.md`` for the exact install commands and every shim):

  /work/peers-venv/bin/python benchmarks/peer_throughput.py --threads 2
  /work/peers-venv/bin/python benchmarks/peer_throughput.py --models din,dien --train-rows 2560

Data: exactly ``benchmarks/train_throughput.py``'s ``generated_store(root, rows)`` (200k
Electronics-shaped train rows by default: item_id, cate_id, hist_item_id / hist_cate_id [B, 30]
left-aligned with hist_len, 5 user fields, 4 context fields; neg_hist_* only for DIEN's auxiliary
loss), converted to each library's feature definitions with embedding width 16 and the history
sharing the candidate's item / category tables.

Models: LR, Wide&Deep, DCN, DeepFM, xDeepFM, DIN, DIEN (AUGRU + auxiliary loss), with the towers,
dropout, activations, CIN sizes, cross layers and attention units of ctrbench's cards
(models/*.toml), Adam lr 1e-3, batch 128, L2 ``--l2`` on the embedding tables (both peers
penalise the WHOLE tables every step; ctrbench only the rows a batch touches). DeepCTR-Torch ships
every model; FuxiCTR's pip package ships only layers, so its models are built here from its own
layers on its ``BaseModel`` (training loop, loss, regulariser, optimiser), as its model zoo does;
its DIEN's AUGRU is written here (the pip package has none). The README lists what differs.

Two figures per library x model, train samples/s after a warm-up of ``--warmup-steps`` steps:
- fit: the library's own training loop over ``--train-rows`` rows as a user runs it, validation
  off (DeepCTR-Torch ``model.fit(x, y, batch_size, epochs=1, verbose=0)``, the whole call timed;
  FuxiCTR ``model.train_epoch(loader)``, the body of its ``fit`` without evaluation and
  checkpoint reload, over its npz ``RankDataLoader`` built beforehand);
- step: forward + loss (+ regulariser + aux) + backward + optimizer.step in a tight loop over
  batches pre-sliced from tensors (no DataLoader): the model compute without loader overhead.
  DeepCTR-Torch: the body of its fit loop; FuxiCTR: its ``model.train_step(batch)`` (which also
  clips the gradient norm, as its fit does).
Each figure is the best of ``--rounds`` rounds; within a model the libraries take turns.
Figures only; the machine may be shared: say so when quoting.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

MODELS = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien")
LIBRARIES = ("deepctr", "fuxictr")
LABELS = {"deepctr": "DeepCTR-Torch", "fuxictr": "FuxiCTR"}
TARGET = ("item_id", "cate_id")
HISTORY = ("hist_item_id", "hist_cate_id")
NEG_HISTORY = ("neg_hist_item_id", "neg_hist_cate_id")

# ctrbench's cards (models/*.toml), for both peers
TOWER = [256, 128]            # wide_deep, dcn, deepfm, xdeepfm: hidden_units
SEQ_TOWER = [200, 80]         # din, dien: hidden_units (Dice)
DROPOUT = 0.2
CROSS_LAYERS = 2              # dcn
CIN_SIZES = [256, 128]        # xdeepfm (split-half, ReLU where the library offers it)
DIN_ATTENTION = [80, 40]      # din: attention_hidden (Dice), no softmax
AUX_WEIGHT = 1.0              # dien
INIT_STD = 0.02


def generated_store(root: Path, rows: int):
    """``benchmarks/train_throughput.py``'s data, imported from that file (not a package)."""
    path = Path(__file__).resolve().with_name("train_throughput.py")
    spec = importlib.util.spec_from_file_location("ctrbench_train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generated_store(root, rows)


# --------------------------------------------------------------------------- DeepCTR-Torch

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


# --------------------------------------------------------------------------- FuxiCTR

def fuxictr_feature_map(schema, model: str, dim: int, root: Path):
    """A FuxiCTR feature_map.json (what its FeatureProcessor writes), loaded by FeatureMap.
    Sequences share the candidate's tables (``share_embedding``), pad with id 0
    (``padding_idx``); for the non-sequential models they are mean-pooled by the feature
    encoder ``layers.MaskedAveragePooling()``; DIN/DIEN read them as [B, T, D]."""
    from fuxictr.features import FeatureMap

    owner = {f.vocab: f.name for f in schema.item}
    pooled = model not in ("din", "dien")
    features = [{f.name: {"source": "item", "type": "categorical", "vocab_size": f.vocab_size,
                          "padding_idx": 0}} for f in schema.item]
    sequences = list(schema.behavior) + (list(schema.neg_behavior) if model == "dien" else [])
    for f in sequences:
        spec = {"source": "user", "type": "sequence", "vocab_size": f.vocab_size,
                "max_len": schema.max_len, "padding_idx": 0, "share_embedding": owner[f.vocab]}
        if pooled:
            spec["feature_encoder"] = "layers.MaskedAveragePooling()"
        features.append({f.name: spec})
    for group, fields in (("user", schema.user), ("context", schema.context)):
        features += [{f.name: {"source": group, "type": "categorical",
                               "vocab_size": f.vocab_size, "padding_idx": 0}} for f in fields]
    doc = {"dataset_id": "ctrbench_generated", "num_fields": len(features),
           "total_features": sum(next(iter(f.values()))["vocab_size"] for f in features),
           "input_length": 0, "labels": ["label"], "features": features}
    path = root / f"feature_map_{model}.json"
    path.write_text(json.dumps(doc, indent=1))
    fmap = FeatureMap("ctrbench_generated", str(root))
    fmap.load(str(path), {"embedding_dim": dim})
    return fmap


def fuxictr_models() -> dict[str, type]:
    """The seven models from FuxiCTR's layers on its BaseModel (its model zoo is not in the
    pip package). Each forward returns {"y_pred": sigmoid output}; BaseModel does the rest."""
    from fuxictr.pytorch.layers import (
        CompressedInteractionNet,
        CrossNet,
        DIN_Attention,
        FactorizationMachine,
        FeatureEmbedding,
        FeatureEmbeddingDict,
        LogisticRegression,
        MaskedSumPooling,
        MLP_Block,
    )
    from fuxictr.pytorch.models import BaseModel

    class Model(BaseModel):
        def __init__(self, feature_map, *, optimizer, loss, learning_rate, **kwargs):
            super().__init__(feature_map, model_id=type(self).__name__, **kwargs)
            self._compile_args = (optimizer, loss, learning_rate)

        def finish(self) -> None:
            self.compile(*self._compile_args)
            self.reset_parameters()
            # tables start N(0, 0.02) (ctrbench's init_std, as given to DeepCTR-Torch), not 1e-4
            for module in self.modules():
                if isinstance(module, FeatureEmbeddingDict):
                    module.embedding_initializer = partial(nn.init.normal_, std=INIT_STD)
                    module.init_weights()
            self.model_to_device()

    def relu_tower(input_dim: int, output_dim: int | None = 1) -> MLP_Block:
        """The cards' ReLU tower (TOWER widths, DROPOUT) as FuxiCTR's MLP_Block."""
        return MLP_Block(input_dim=input_dim, output_dim=output_dim, hidden_units=list(TOWER),
                         hidden_activations="ReLU", dropout_rates=DROPOUT)

    class LR(Model):
        def __init__(self, feature_map, embedding_dim=16, **kwargs):
            super().__init__(feature_map, **kwargs)
            self.lr_layer = LogisticRegression(feature_map, use_bias=True)
            self.finish()

        def forward(self, inputs):
            return {"y_pred": self.output_activation(self.lr_layer(self.get_inputs(inputs)))}

    class WideDeep(Model):
        def __init__(self, feature_map, embedding_dim=16, **kwargs):
            super().__init__(feature_map, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.lr_layer = LogisticRegression(feature_map, use_bias=False)
            self.dnn = relu_tower(feature_map.sum_emb_out_dim())
            self.finish()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X, flatten_emb=True)
            return {"y_pred": self.output_activation(self.lr_layer(X) + self.dnn(emb))}

    class DCN(Model):
        def __init__(self, feature_map, embedding_dim=16, **kwargs):
            super().__init__(feature_map, **kwargs)
            width = feature_map.sum_emb_out_dim()
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.crossnet = CrossNet(width, CROSS_LAYERS)
            self.dnn = relu_tower(width, output_dim=None)
            self.fc = nn.Linear(width + TOWER[-1], 1)
            self.finish()

        def forward(self, inputs):
            emb = self.embedding_layer(self.get_inputs(inputs), flatten_emb=True)
            out = torch.cat([self.crossnet(emb), self.dnn(emb)], dim=-1)
            return {"y_pred": self.output_activation(self.fc(out))}

    class DeepFM(Model):
        def __init__(self, feature_map, embedding_dim=16, **kwargs):
            super().__init__(feature_map, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.fm = FactorizationMachine(feature_map)  # first order + FM
            self.mlp = relu_tower(feature_map.sum_emb_out_dim())
            self.finish()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)
            logit = self.fm(X, emb) + self.mlp(emb.flatten(start_dim=1))
            return {"y_pred": self.output_activation(logit)}

    class XDeepFM(Model):
        def __init__(self, feature_map, embedding_dim=16, **kwargs):
            super().__init__(feature_map, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.lr_layer = LogisticRegression(feature_map, use_bias=False)
            # FuxiCTR's CIN: no split-half, no activation (not configurable)
            self.cin = CompressedInteractionNet(feature_map.num_fields, list(CIN_SIZES), 1)
            self.dnn = relu_tower(feature_map.sum_emb_out_dim())
            self.finish()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)
            logit = self.lr_layer(X) + self.cin(emb) + self.dnn(emb.flatten(start_dim=1))
            return {"y_pred": self.output_activation(logit)}

    class DIN(Model):
        def __init__(self, feature_map, embedding_dim=16, **kwargs):
            super().__init__(feature_map, **kwargs)
            self.embedding_dim = embedding_dim
            self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
            self.attention = DIN_Attention(embedding_dim * len(TARGET),
                                           attention_units=list(DIN_ATTENTION),
                                           hidden_activations="Dice", use_softmax=False)
            self.dnn = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                                 hidden_units=list(SEQ_TOWER), hidden_activations="Dice",
                                 output_activation=self.output_activation, dropout_rates=DROPOUT)
            self.finish()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)
            target = torch.cat([emb[f] for f in TARGET], dim=-1)
            history = torch.cat([emb[f] for f in HISTORY], dim=-1)
            pooled = self.attention(target, history, X[HISTORY[0]].long() != 0)
            for field, part in zip(HISTORY, pooled.split(self.embedding_dim, dim=-1)):
                emb[field] = part
            return {"y_pred": self.dnn(self.embedding_layer.dict2tensor(emb, flatten_emb=True))}

    class AUGRU(nn.Module):
        """GRU with attentional update gate over a PackedSequence, one time step per loop
        iteration (the model zoo's DynamicGRU design; the pip package has no AUGRU)."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width
            self.x2h = nn.Linear(width, 3 * width)
            self.h2h = nn.Linear(width, 3 * width)

        def forward(self, packed: PackedSequence, scores: PackedSequence) -> torch.Tensor:
            x, batch_sizes, _, unsorted = packed
            att = scores.data
            h = x.new_zeros(int(batch_sizes[0]), self.width)
            last = x.new_zeros(int(batch_sizes[0]), self.width)
            start = 0
            for n in batch_sizes.tolist():
                gx = self.x2h(x[start:start + n]).chunk(3, 1)
                gh = self.h2h(h[:n]).chunk(3, 1)
                update = torch.sigmoid(gx[0] + gh[0]) * att[start:start + n].unsqueeze(-1)
                reset = torch.sigmoid(gx[1] + gh[1])
                new = torch.tanh(gx[2] + reset * gh[2])
                h = h[:n] + update * (new - h[:n])
                last = torch.cat([h, last[n:]], dim=0)  # rows that ended keep their last state
                start += n
            return last[unsorted]

    class DIEN(Model):
        def __init__(self, feature_map, embedding_dim=16, **kwargs):
            super().__init__(feature_map, **kwargs)
            width = embedding_dim * len(TARGET)
            flat = [f for f, s in feature_map.features.items() if s["type"] != "sequence"]
            self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
            self.extractor = nn.GRU(width, width, batch_first=True)
            self.kernel = nn.Parameter(torch.eye(width))  # bilinear attention, softmax
            self.evolution = AUGRU(width)
            self.sum_pooling = MaskedSumPooling()
            # [final interest; sum of behaviours; target * sum; every single-valued field]
            self.dnn = MLP_Block(input_dim=3 * width + embedding_dim * len(flat), output_dim=1,
                                 hidden_units=list(SEQ_TOWER), hidden_activations="Dice",
                                 output_activation=self.output_activation, dropout_rates=DROPOUT)
            self.aux_net = MLP_Block(input_dim=2 * width, output_dim=1, hidden_units=[100, 50],
                                     hidden_activations="ReLU", output_activation="Sigmoid")
            self.flat = flat
            self.finish()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)
            target = torch.cat([emb[f] for f in TARGET], dim=-1)
            history = torch.cat([emb[f] for f in HISTORY], dim=-1)
            negative = torch.cat([emb[f] for f in NEG_HISTORY], dim=-1)
            mask = X[HISTORY[0]].long() > 0
            lengths = mask.sum(dim=1)
            keep = lengths > 0
            packed = pack_padded_sequence(history[keep], lengths[keep].cpu(), batch_first=True,
                                          enforce_sorted=False)
            packed_interest, _ = self.extractor(packed)
            interest, _ = pad_packed_sequence(packed_interest, batch_first=True,
                                              total_length=mask.size(1))
            score = ((interest @ self.kernel) @ target[keep].unsqueeze(-1)).squeeze(-1)
            score = score.masked_fill(~mask[keep], -1e9).softmax(dim=-1)
            packed_score = pack_padded_sequence(score, lengths[keep].cpu(), batch_first=True,
                                                enforce_sorted=False)
            final = target.new_zeros(target.shape)
            final[keep] = self.evolution(packed_interest, packed_score)
            summed = self.sum_pooling(history)
            parts = [final, summed, target * summed] + [emb[f] for f in self.flat]
            full_interest = interest.new_zeros(history.shape)
            full_interest[keep] = interest
            return {"y_pred": self.dnn(torch.cat(parts, dim=-1)), "interest": full_interest,
                    "pos": history, "neg": negative, "mask": mask}

        def add_loss(self, return_dict, y_true):
            loss = self.loss_fn(return_dict["y_pred"], y_true, reduction="mean")
            state = return_dict["interest"][:, :-1]
            width = state.size(-1)
            valid = return_dict["mask"][:, 1:].reshape(-1).float()
            probs = [self.aux_net(torch.cat([state, return_dict[key][:, 1:]], -1)
                                  .view(-1, 2 * width)).view(-1) for key in ("pos", "neg")]
            aux = (F.binary_cross_entropy(probs[0], torch.ones_like(valid), reduction="none")
                   + F.binary_cross_entropy(probs[1], torch.zeros_like(valid), reduction="none"))
            return loss + AUX_WEIGHT * (aux * valid).sum() / (2 * valid.sum() + 1e-9)

    return {"lr": LR, "wide_deep": WideDeep, "dcn": DCN, "deepfm": DeepFM, "xdeepfm": XDeepFM,
            "din": DIN, "dien": DIEN}


class FuxiCTRRun:
    """One FuxiCTR model on the shared columns."""

    library = "fuxictr"

    def __init__(self, model: str, schema, cols: dict[str, np.ndarray], args, root: Path) -> None:
        torch.manual_seed(0)
        self.fmap = fuxictr_feature_map(schema, model, args.embedding_dim, root)
        kwargs = {"optimizer": "adam", "loss": "binary_crossentropy", "learning_rate": 1e-3,
                  "gpu": -1, "embedding_regularizer": args.l2 or None, "net_regularizer": None,
                  "model_root": str(root / "checkpoints"), "metrics": ["logloss"], "verbose": 0}
        self.net = fuxictr_models()[model](self.fmap, embedding_dim=args.embedding_dim, **kwargs)
        self.cols = cols
        self.columns = [*self.fmap.features, *self.fmap.labels]
        self.batch_size = args.batch_size
        self.workers = args.fuxictr_workers
        self.root = root
        # what BaseModel.fit sets before train_epoch; evaluation never comes due
        self.net._max_gradient_norm = 10.0
        self.net._eval_steps = 1 << 62
        self.net._total_steps = 0
        self.net._stop_training = False
        self.net._epoch_index = 0

    def loader(self, lo: int, hi: int):
        """FuxiCTR's npz RankDataLoader over rows [lo, hi) (the file is written first)."""
        from fuxictr.pytorch.dataloaders import RankDataLoader

        path = self.root / f"rows_{lo}_{hi}.npz"
        if not path.exists():
            np.savez(path, **{c: self.cols[c][lo:hi] for c in self.columns})
        train, _ = RankDataLoader(self.fmap, stage="train", train_data=str(path),
                                  batch_size=self.batch_size, shuffle=True, data_format="npz",
                                  num_workers=self.workers)
        return train

    def fit(self, loader) -> None:
        self.net.train_epoch(loader)

    def batches(self, lo: int, hi: int) -> list:
        tensors = {c: torch.from_numpy(np.ascontiguousarray(self.cols[c][lo:hi]))
                   for c in self.columns}
        tensors = {c: t.float() if c in self.fmap.labels else t.long() for c, t in tensors.items()}
        b = self.batch_size
        return [{c: t[i:i + b] for c, t in tensors.items()} for i in range(0, hi - lo, b)]

    def step(self, batches: list) -> None:
        net = self.net
        net.train()
        for batch in batches:
            net.train_step(batch)


# --------------------------------------------------------------------------- measuring

def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def measure(model: str, libraries: list[str], schema, cols, args, root: Path,
            flip: bool) -> dict[str, dict]:
    """Warm up, then ``rounds`` x (fit, step) per library, the libraries taking turns."""
    warm = args.warmup_steps * args.batch_size
    lo, hi = warm, warm + args.train_rows
    runs = []
    for library in libraries:
        if library == "deepctr":
            runs.append(DeepCTRRun(model, schema, cols, args))
        else:
            runs.append(FuxiCTRRun(model, schema, cols, args, root / model))
    fit_inputs, step_inputs = {}, {}
    for run in runs:
        if run.library == "fuxictr":
            run.fit(run.loader(0, warm))
            fit_inputs[run.library] = run.loader(lo, hi)
        else:
            run.fit(0, warm)
            fit_inputs[run.library] = (lo, hi)
        run.step(run.batches(0, warm))
        step_inputs[run.library] = run.batches(lo, hi)
    best = {run.library: {"fit": 0.0, "step": 0.0, "params": count_parameters(run.net)}
            for run in runs}
    rows = hi - lo
    for r in range(args.rounds):
        order = runs[::-1] if (r % 2 == 1) ^ flip else runs
        for run in order:
            arg = fit_inputs[run.library]
            start = time.perf_counter()
            if isinstance(arg, tuple):
                run.fit(*arg)
            else:
                run.fit(arg)
            fit_rate = rows / (time.perf_counter() - start)
            start = time.perf_counter()
            run.step(step_inputs[run.library])
            step_rate = rows / (time.perf_counter() - start)
            b = best[run.library]
            b["fit"], b["step"] = max(b["fit"], fit_rate), max(b["step"], step_rate)
            print(f"{model:>10} {LABELS[run.library]:>14} round {r + 1}: fit {fit_rate:>8,.0f}/s "
                  f"step {step_rate:>8,.0f}/s", flush=True)
    return best


def versions() -> str:
    from importlib.metadata import version

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"numpy {np.__version__}"]
    for dist in ("deepctr-torch", "fuxictr", "pandas"):
        with contextlib.suppress(Exception):
            parts.append(f"{dist} {version(dist)}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--rows", type=int, default=200_000, help="generated train rows")
    parser.add_argument("--train-rows", type=int, default=25_600, help="timed rows per figure")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--l2", type=float, default=1e-3, help="embedding L2 (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--fuxictr-workers", type=int, default=0,
                        help="num_workers of FuxiCTR's npz loader (its default is 1)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    libraries = [lib for lib in args.libraries.split(",") if lib]
    for name in models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    for name in libraries:
        if name not in LIBRARIES:
            parser.error(f"unknown library {name!r} (choose from {', '.join(LIBRARIES)})")
    needed = args.warmup_steps * args.batch_size + args.train_rows
    if needed > args.rows:
        parser.error(f"--rows must be at least warm-up + train rows = {needed}")
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generated_store(root / "store", args.rows)
        cols = {k: np.asarray(v) for k, v in data.split("train", mmap=False).items()}
        print(f"{versions()}\ndata: {args.rows:,} generated rows "
              f"({time.perf_counter() - began:.0f} s); threads {torch.get_num_threads()}",
              flush=True)
        results = {}
        for i, model in enumerate(models):
            (root / model).mkdir()
            results[model] = measure(model, libraries, data.schema, cols, args, root, i % 2 == 1)
    table = [[LABELS[lib], model, f"{r['fit']:,.0f}", f"{r['step']:,.0f}", args.threads,
              f"{r['params']:,}"]
             for model, per_lib in results.items() for lib, r in per_lib.items()]
    print(f"\nbatch {args.batch_size}, {args.train_rows:,} timed rows per figure after "
          f"{args.warmup_steps} warm-up steps, best of {args.rounds} rounds, L2 {args.l2:g}, "
          f"FuxiCTR loader workers {args.fuxictr_workers}; "
          f"total {time.perf_counter() - began:.0f} s")
    print(tabulate(table, headers=["library", "model", "fit samples/s", "step samples/s",
                                   "torch threads", "params"]))


if __name__ == "__main__":
    main()
