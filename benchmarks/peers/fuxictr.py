"""FuxiCTR 2.3.10: the seven models composed from the pip package's layers on its BaseModel.

FuxiCTR's pip package ships layers but no models (its model zoo lives in its repository), so the
models are laid out here as the zoo lays them out (benchmarks/peers/README.md has the table of
what differs from ctrbench's cards). DIEN's AUGRU is written here: the package has none. The
library is imported inside the functions, so this module (and :class:`AUGRU`, plain torch)
imports without it.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from peers.common import (
    AUX_WEIGHT,
    CIN_SIZES,
    CROSS_LAYERS,
    DIN_ATTENTION,
    DROPOUT,
    HISTORY,
    INIT_STD,
    NEG_HISTORY,
    SEQ_TOWER,
    TARGET,
    TOWER,
)


def feature_map_doc(schema, model: str) -> dict:
    """The feature_map.json document FuxiCTR's FeatureProcessor would write for ``model``.
    Sequences share the candidate's tables (``share_embedding``), pad with id 0
    (``padding_idx``); for the non-sequential models they are mean-pooled by the feature
    encoder ``layers.MaskedAveragePooling()``; DIN/DIEN read them as [B, T, D]."""
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
    return doc


def fuxictr_feature_map(schema, model: str, dim: int, root: Path):
    """:func:`feature_map_doc` written to ``root`` and loaded by FuxiCTR's FeatureMap."""
    from fuxictr.features import FeatureMap

    path = root / f"feature_map_{model}.json"
    path.write_text(json.dumps(feature_map_doc(schema, model), indent=1))
    fmap = FeatureMap("ctrbench_generated", str(root))
    fmap.load(str(path), {"embedding_dim": dim})
    return fmap


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
