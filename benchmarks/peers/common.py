"""What both peers share: model names, ctrbench's card hyperparameters, the data, counting.

The values are those of ctrbench's cards (models/*.toml); both peers are built from them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

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
    path = Path(__file__).resolve().parent.parent / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("ctrbench_train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generated_store(root, rows)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
