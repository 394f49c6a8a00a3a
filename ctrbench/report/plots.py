"""Figures for the report (PNG, Agg canvas; no pyplot global state, so safe in any process).

- :func:`learning_curves`: validation AUC and training loss by epoch per model, the mean over
  seeds with a ±1 std band (the paper's Fig. 5).
- :func:`gim_heatmap`: GIM's attention weights over the seven parts for sampled test cases,
  from MIAN's ``explain`` output saved beside a run record (the paper's Fig. 6).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _save(fig: Figure, path: Path) -> None:
    """Render to a temporary PNG beside ``path``, then rename it (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png")
    FigureCanvasAgg(fig)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def learning_curves(curves: pd.DataFrame, path: Path, title: str) -> None:
    """``curves`` has columns model, seed, epoch, valid_auc, train_loss (one dataset)."""
    fig = Figure(figsize=(11, 4.2))
    ax_auc, ax_loss = fig.subplots(1, 2)
    for model, grp in curves.groupby("model", sort=True):
        by_epoch = grp.groupby("epoch").agg(
            auc_mean=("valid_auc", "mean"), auc_std=("valid_auc", "std"),
            loss_mean=("train_loss", "mean"), loss_std=("train_loss", "std"),
            seeds=("seed", "nunique"),
        )
        epochs = by_epoch.index.to_numpy()
        for ax, col in ((ax_auc, "auc"), (ax_loss, "loss")):
            mean = by_epoch[f"{col}_mean"].to_numpy()
            std = by_epoch[f"{col}_std"].fillna(0.0).to_numpy()
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=str(model))
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            linewidth=0)
    ax_auc.set(xlabel="epoch", ylabel="validation AUC", title="Validation AUC (mean ± std)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss (mean ± std)")
    for ax in (ax_auc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_auc.legend(fontsize="small", loc="lower right")
    fig.suptitle(title)
    _save(fig, path)


def gim_heatmap(weights: np.ndarray, parts: Sequence[str], path: Path, title: str,
                max_cases: int = 40) -> None:
    """``weights`` (S, P): one row of part weights per sampled test case."""
    w = np.asarray(weights, dtype=float)[:max_cases]  # (S, P)
    fig = Figure(figsize=(1.0 + 0.9 * w.shape[1], 1.5 + 0.18 * w.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(w, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-9))
    ax.set_xticks(np.arange(w.shape[1]), labels=list(parts), rotation=30, ha="right")
    ax.set(xlabel="GIM part", ylabel="sampled test case", title=title)
    fig.colorbar(image, ax=ax, label="attention weight")
    _save(fig, path)
