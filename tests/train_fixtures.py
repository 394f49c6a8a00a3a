"""Helpers for the trainer/runner tests: a tiny planted prepared store and a test architecture.

The planted problem: the click probability rises with an item effect (even categories), when
the candidate's category occurs in the history, and when the user's "taste" field matches the
candidate's category; everything is generated with numpy from a seed (identical on every call).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctrbench.data.store import PreparedData, write_store
from ctrbench.models.base import CTRModel
from ctrbench.models.config import Integer, ModelConfig, PositiveInt, param
from ctrbench.models.registry import ARCHITECTURES, register
from ctrbench.schema import Batch, Schema, reference_schema

N_ITEMS, N_CATES, T = 120, 8, 10


def planted_schema() -> Schema:
    return reference_schema(n_items=N_ITEMS, n_cates=N_CATES, max_len=T,
                            user_fields={"user_id": 60, "taste": N_CATES},
                            context_fields={"month": 14})


def _planted_split(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    item_cate = (np.arange(N_ITEMS) % (N_CATES - 2)) + 2
    item = rng.integers(2, N_ITEMS, rows)
    cate = item_cate[item]
    hist_len = rng.integers(0, T + 1, rows)
    mask = np.arange(T)[None, :] < hist_len[:, None]
    hist_item = rng.integers(2, N_ITEMS, (rows, T)) * mask
    hist_cate = item_cate[hist_item] * mask
    neg_item = rng.integers(2, N_ITEMS, (rows, T)) * mask
    user = rng.integers(2, 60, rows)
    taste = (user % (N_CATES - 2)) + 2
    in_hist = (hist_cate == cate[:, None]).any(axis=1)
    logit = -1.5 + 2.5 * in_hist + 2.0 * (taste == cate) + 1.5 * (cate % 2 == 0)
    prob = 1 / (1 + np.exp(-logit))
    label = (rng.random(rows) < prob).astype(np.float32)
    return {
        "item_id": item.astype(np.int32), "cate_id": cate.astype(np.int32),
        "hist_item_id": hist_item.astype(np.int32), "hist_cate_id": hist_cate.astype(np.int32),
        "neg_hist_item_id": neg_item.astype(np.int32),
        "neg_hist_cate_id": (item_cate[neg_item] * mask).astype(np.int32),
        "user_id": user.astype(np.int32), "taste": taste.astype(np.int32),
        "month": rng.integers(2, 14, rows).astype(np.int32),
        "hist_len": hist_len.astype(np.int32), "label": label,
        "group": user.astype(np.int64), "oracle": prob.astype(np.float32),
        "gap_days": rng.random(rows).astype(np.float32),
    }


def make_planted_store(path: Path, rows: tuple[int, int, int] = (1500, 400, 400),
                       seed: int = 0, name: str = "planted") -> PreparedData:
    rng = np.random.default_rng(seed)
    splits = {split: _planted_split(rng, n) for split, n in zip(("train", "valid", "test"), rows)}
    meta = {"dataset": name, "card_hash": f"card-{seed}", "data_hash": f"data-{seed}-{rows}",
            "protocol": "din", "version": 1, "raw_sha256": {}, "code_version": 1}
    return write_store(path, planted_schema(), splits, meta)


@dataclass(frozen=True)
class TinyConfig(ModelConfig):
    embedding_dim: int = param(4, PositiveInt())
    nan_after: int = param(0, Integer(0))


class TinyLogistic(CTRModel):
    """Test architecture: logistic model on the item fields and the user fields.

    ``nan_after`` > 0 makes the logits NaN from that many training steps on (divergence tests).
    """

    config_class = TinyConfig

    def __init__(self, schema: Schema, config: TinyConfig) -> None:
        super().__init__(schema, config)
        embedding_dim, sparse = config.embedding_dim, config.sparse
        self.fields = [f for f in schema.fields if f.group in ("item", "user")]
        self.tables = nn.ModuleDict({
            f.name: nn.Embedding(f.vocab_size, embedding_dim, padding_idx=0, sparse=sparse)
            for f in self.fields})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.out = nn.Linear(embedding_dim * len(self.fields), 1)
        self.nan_after = config.nan_after
        self.steps = 0

    def forward(self, batch: Batch) -> torch.Tensor:
        parts = [self.tables[f.name](batch[f.name]) for f in self.fields]  # F x (B, D)
        return self.out(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)

    def forward_train(self, batch: Batch):
        self.steps += 1
        logits = self(batch)
        if self.nan_after and self.steps >= self.nan_after:
            logits = logits * float("nan")
        return logits, {}


if "tiny_logistic" not in ARCHITECTURES:
    register("tiny_logistic")(TinyLogistic)


def write_cards(root: Path, cards: dict[str, str]) -> Path:
    """Write model cards ``name -> TOML text`` under ``root/models`` (for $CTRBENCH_CARDS)."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    for name, text in cards.items():
        (root / "models" / f"{name}.toml").write_text(text)
    return root


def runner_script(tests: Path, store: Path, results: Path, model: str,
                  prelude: str = "") -> str:
    """A Python script that runs ``model`` (seed 0) on the planted store at ``store`` into
    ``results`` with the runner and prints ``[[status, detail]]`` as JSON: for tests that
    signal, kill or starve the process running it. ``prelude`` runs after the imports."""
    return "\n".join([
        "import json, os, signal, sys",
        f"sys.path.insert(0, {str(tests)!r})",
        "import torch",
        "import train_fixtures",
        "from ctrbench.runs import runner",
        "from ctrbench.data.store import open_store",
        "torch.set_num_threads(1)",
        prelude,
        f"handle = runner.DatasetHandle('planted', open_store({str(store)!r}), "
        "{'name': 'planted'})",
        f"specs = runner.plan_runs(handle, runner.resolve_cards({model!r}), [0], "
        f"__import__('pathlib').Path({str(results)!r}))",
        "out = runner.execute(specs, handle, device='cpu', show_progress=False)",
        "print(json.dumps([[r.status, r.detail] for r in out]))",
        ""])


TINY_CARD = """
arch = "tiny_logistic"
groups = ["tiny"]
[params]
embedding_dim = 4
[train]
lr = 0.05
batch_size = 64
eval_batch_size = 256
epochs = 3
patience = 2
l2 = 1e-4
"""

def tune_workspace(tmp_path, monkeypatch, cards: dict[str, str]):
    """``tmp_path`` as the working folder of a ``ctrbench tune`` test: progress output on, a
    fresh ``CTRBENCH_HOME``, no ``CTRBENCH_CARDS``, and ``models/<name>.toml`` for each of
    ``cards`` (name -> text). Returns ``tmp_path``."""
    from ctrbench import progress

    monkeypatch.setattr(progress, "_MODE", "auto")
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name, text in cards.items():
        (tmp_path / "models" / f"{name}.toml").write_text(text)
    return tmp_path
