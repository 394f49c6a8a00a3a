"""The feature schema: the contract between prepared data and models.

Four groups, as in the MIAN paper:

- ``item``: the candidate's fields (``item_id``, ``cate_id``), shape ``[B]``;
- ``behavior``: the history fields (``hist_item_id``, ``hist_cate_id``), shape ``[B, T]``, each
  paired with the item field whose vocabulary (embedding table) it shares. Histories are
  **left-aligned**, oldest -> newest: positions ``0 .. hist_len-1`` are valid, the newest behaviour
  is at ``hist_len - 1``, padded positions hold id 0. ``batch["hist_len"]`` (``[B]``, int64) gives
  the valid length; it may be 0;
- ``user``: J categorical user fields, shape ``[B]``;
- ``context``: K categorical context fields, shape ``[B]``.

DIEN's auxiliary loss reads ``neg_hist_item_id`` / ``neg_hist_cate_id`` (``[B, T]``), the
negative histories; they are listed in ``Schema.neg_behavior`` (same order as ``behavior``).

Vocabulary ids: 0 = padding, 1 = out-of-vocabulary, real values from 2. A ``Batch`` maps names
to tensors; besides the fields it holds ``label`` (float 0/1, ``[B]``) and ``hist_len``, and may
hold ``group`` (the raw user index, for gAUC; never a model input) and ``oracle`` (synthetic only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

Batch = Mapping[str, torch.Tensor]
Group = Literal["item", "behavior", "neg_behavior", "user", "context"]
GROUPS: tuple[Group, ...] = ("item", "behavior", "neg_behavior", "user", "context")

LABEL = "label"
HIST_LEN = "hist_len"
GROUP_KEY = "group"
ORACLE = "oracle"
PAD_ID = 0
OOV_ID = 1


@dataclass(frozen=True)
class FieldSpec:
    """One categorical field.

    ``vocab`` names the vocabulary / embedding table; fields sharing a vocab share one table
    (``item_id``, ``hist_item_id`` and ``neg_hist_item_id`` all use vocab ``item``).
    ``vocab_size`` counts padding and OOV (so real ids are ``2 .. vocab_size-1``).
    """

    name: str
    group: Group
    vocab: str
    vocab_size: int


@dataclass(frozen=True)
class Schema:
    """All fields of a prepared dataset, grouped by role, and the history length ``max_len``."""

    fields: tuple[FieldSpec, ...]
    max_len: int = 30
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in schema: {names}")
        sizes: dict[str, int] = {}
        for f in self.fields:
            if f.group not in GROUPS:
                raise ValueError(f"field {f.name!r} has unknown group {f.group!r}")
            if sizes.setdefault(f.vocab, f.vocab_size) != f.vocab_size:
                raise ValueError(f"vocab {f.vocab!r} declared with two sizes")
        if len(self.behavior) != len(self.item):
            raise ValueError("every item field needs exactly one behaviour field (same vocab)")
        for item, hist in zip(self.item, self.behavior):
            if item.vocab != hist.vocab:
                raise ValueError(f"behaviour field {hist.name!r} must share {item.name!r}'s vocab")

    def group(self, group: Group) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.group == group)

    @property
    def item(self) -> tuple[FieldSpec, ...]:
        return self.group("item")

    @property
    def behavior(self) -> tuple[FieldSpec, ...]:
        return self.group("behavior")

    @property
    def neg_behavior(self) -> tuple[FieldSpec, ...]:
        return self.group("neg_behavior")

    @property
    def user(self) -> tuple[FieldSpec, ...]:
        return self.group("user")

    @property
    def context(self) -> tuple[FieldSpec, ...]:
        return self.group("context")

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Vocabulary name -> size (one embedding table each)."""
        return {f.vocab: f.vocab_size for f in self.fields}

    @property
    def has_neg_history(self) -> bool:
        return len(self.neg_behavior) == len(self.behavior) > 0

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"max_len": self.max_len, "fields": [asdict(f) for f in self.fields],
                "extra": self.extra}

    @classmethod
    def from_dict(cls, data: Mapping) -> Schema:
        return cls(
            fields=tuple(FieldSpec(**f) for f in data["fields"]),
            max_len=int(data["max_len"]),
            extra=dict(data.get("extra", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def history_mask(batch: Batch, max_len: int) -> torch.Tensor:
    """``[B, T]`` bool mask of valid history positions (left-aligned histories)."""
    hist_len = batch[HIST_LEN]
    steps = torch.arange(max_len, device=hist_len.device)
    return steps.unsqueeze(0) < hist_len.unsqueeze(1)


def reference_schema(
    *,
    n_items: int = 1000,
    n_cates: int = 50,
    user_fields: Mapping[str, int] | None = None,
    context_fields: Mapping[str, int] | None = None,
    max_len: int = 30,
    neg_history: bool = True,
) -> Schema:
    """A schema shaped like the Amazon datasets; used by tests, `list models` and benchmarks."""
    user_fields = user_fields or {"user_id": 500, "hist_len_bucket": 8, "mean_rating_bucket": 7,
                                  "fav_cate": n_cates, "tenure_bucket": 8}
    context_fields = context_fields or {"year": 20, "month": 14, "weekday": 9, "gap_bucket": 9}
    fields = [
        FieldSpec("item_id", "item", "item", n_items),
        FieldSpec("cate_id", "item", "cate", n_cates),
        FieldSpec("hist_item_id", "behavior", "item", n_items),
        FieldSpec("hist_cate_id", "behavior", "cate", n_cates),
    ]
    if neg_history:
        fields += [
            FieldSpec("neg_hist_item_id", "neg_behavior", "item", n_items),
            FieldSpec("neg_hist_cate_id", "neg_behavior", "cate", n_cates),
        ]
    fields += [FieldSpec(n, "user", n, s) for n, s in user_fields.items()]
    fields += [FieldSpec(n, "context", n, s) for n, s in context_fields.items()]
    return Schema(tuple(fields), max_len=max_len)


def random_batch(schema: Schema, batch_size: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random but well-formed batch for ``schema`` (tests and benchmarks)."""
    T = schema.max_len
    batch: dict[str, torch.Tensor] = {}
    hist_len = torch.randint(0, T + 1, (batch_size,), generator=generator)
    mask = torch.arange(T).unsqueeze(0) < hist_len.unsqueeze(1)
    for f in schema.fields:
        if f.group in ("behavior", "neg_behavior"):
            ids = torch.randint(2, f.vocab_size, (batch_size, T), generator=generator)
            batch[f.name] = ids * mask
        else:
            batch[f.name] = torch.randint(2, f.vocab_size, (batch_size,), generator=generator)
    batch[HIST_LEN] = hist_len
    batch[LABEL] = torch.randint(0, 2, (batch_size,), generator=generator).float()
    return batch
