"""Figures for the report (PNG, Agg canvas; no pyplot global state, so safe in any process).

- :func:`model_styles`: one colour, line style and marker per model, none repeated up to
  :data:`N_STYLES` models (20), the same for a model in every figure of a report;
- :func:`learning_curves`: validation AUC and training loss by epoch per model, the mean over
  seeds with a ±1 std band (the paper's Fig. 5);
- :func:`strata_plot`: test AUC per stratum and model (mean over seeds, ±1 std error bars), the
  oracle's AUC as a black line (:mod:`ctrbench.report.strata`);
- :func:`gim_heatmap`: GIM's attention weights over the seven parts for sampled test cases,
  from MIAN's ``explain`` output saved beside a run record (the paper's Fig. 6).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# tab10, then ten CSS colours picked greedily for the largest CIE76 distance to those before
# (every pair differs by more than 20; tests/test_plots.py checks it)
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#0000ff", "#ff00ff", "#00008b", "#000000", "#deb887", "#556b2f",
    "#ff1493", "#8a2be2", "#8b008b", "#8fbc8f",
)
DASHES: tuple[str | tuple[int, tuple[int, ...]], ...] = (
    "-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (5, 5)),
    (0, (3, 5, 1, 5)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2, 2, 2)), (0, (2, 3)),
    (0, (8, 3, 1, 3, 1, 3)), (0, (6, 2)), (0, (1, 3)), (0, (4, 2, 4, 2, 1, 2)),
    (0, (10, 3)), (0, (2, 1, 2, 4)), (0, (6, 1, 1, 1, 1, 1, 1, 1)), (0, (12, 2, 4, 2)),
)
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "p", "h", "d", "8", "H", "1",
           "2", "3", "4", "+")
N_STYLES = len(PALETTE)


@dataclass(frozen=True)
class Style:
    """How one model is drawn (matplotlib ``color``, ``linestyle``, ``marker``)."""

    color: str
    linestyle: str | tuple[int, tuple[int, ...]]
    marker: str


def model_styles(models: Sequence[str]) -> dict[str, Style]:
    """A style per model (sorted by name): colours, line styles and markers all distinct up to
    :data:`N_STYLES` models; beyond that colours repeat, but with another line style."""
    out = {}
    for i, model in enumerate(sorted(set(models))):
        k, lap = i % N_STYLES, i // N_STYLES
        out[model] = Style(PALETTE[k], DASHES[(k + lap) % len(DASHES)],
                           MARKERS[(k + 3 * lap) % len(MARKERS)])
    return out


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


def learning_curves(curves: pd.DataFrame, path: Path, title: str,
                    styles: Mapping[str, Style] | None = None,
                    floors: Sequence[str] = ()) -> None:
    """``curves`` has columns model, seed, epoch, valid_auc, train_loss (one dataset).

    Each model: the mean over seeds by epoch (its own colour, line style and marker) and a
    ±1 std band over seeds; the legend gives each model's number of seeds. ``floors``: models
    that are not trained (pop): their validation AUC is a horizontal line across the epochs and
    their (uncalibrated) training loss is left out.
    """
    styles = styles or model_styles(curves["model"].unique())
    fig = Figure(figsize=(13.5, 4.6), layout="constrained")
    ax_auc, ax_loss = fig.subplots(1, 2)
    last_epoch = max(int(curves["epoch"].max()), 1) if len(curves) else 1
    for model, grp in curves.groupby("model", sort=True):
        by_epoch = grp.groupby("epoch").agg(
            auc_mean=("valid_auc", "mean"), auc_std=("valid_auc", "std"),
            loss_mean=("train_loss", "mean"), loss_std=("train_loss", "std"),
        )
        style = styles[model]
        n_seeds = grp["seed"].nunique()
        label = f"{model} ({n_seeds} seed{'s' if n_seeds != 1 else ''})"
        line = {"color": style.color, "linestyle": style.linestyle, "linewidth": 1.4}
        if model in floors:
            auc = float(by_epoch["auc_mean"].iloc[-1])
            ax_auc.axhline(auc, **line, label=f"{model} (not trained)")
            continue
        epochs = by_epoch.index.to_numpy()
        for ax, col in ((ax_auc, "auc"), (ax_loss, "loss")):
            mean = by_epoch[f"{col}_mean"].to_numpy()
            std = by_epoch[f"{col}_std"].fillna(0.0).to_numpy()
            ax.plot(epochs, mean, **line, marker=style.marker, markersize=4, label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=style.color, alpha=0.12,
                            linewidth=0)
    ax_auc.set(xlabel="epoch", ylabel="validation AUC",
               title="Validation AUC (mean, band ±1 std over seeds)")
    ax_loss.set(xlabel="epoch", ylabel="training loss",
                title="Training loss (mean, band ±1 std over seeds)")
    for ax in (ax_auc, ax_loss):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if last_epoch <= 12:
            ax.set_xticks(range(1, last_epoch + 1))
    handles, labels = ax_auc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small", handlelength=4.0,
               frameon=False)
    fig.suptitle(title)
    _save(fig, path)


def strata_plot(frame: pd.DataFrame, path: Path, title: str,
                styles: Mapping[str, Style] | None = None) -> None:
    """``frame``: one dataset's strata rows (columns stratum, bucket, model, auc_mean, auc_std,
    oracle_auc, n_samples); one panel per stratum family, buckets on the x axis."""
    models = sorted(frame["model"].unique())
    styles = styles or model_styles(models)
    families = list(dict.fromkeys(frame["stratum"]))
    fig = Figure(figsize=(3.6 * max(1, len(families)) + 2.0, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(families)), sharey=True))
    offsets = np.linspace(-0.25, 0.25, len(models)) if len(models) > 1 else np.zeros(1)
    for ax, family in zip(axes, families):
        part = frame[frame["stratum"] == family]
        buckets = list(dict.fromkeys(part["bucket"]))
        x = np.arange(len(buckets))
        sizes = part.drop_duplicates("bucket").set_index("bucket")["n_samples"]
        for off, model in zip(offsets, models):
            rows = part[part["model"] == model].set_index("bucket").reindex(buckets)
            style = styles[model]
            ax.errorbar(x + off, rows["auc_mean"], yerr=rows["auc_std"].fillna(0.0),
                        color=style.color, linestyle=style.linestyle, marker=style.marker,
                        markersize=4, linewidth=1.0, capsize=2, label=model)
        oracle = part.drop_duplicates("bucket").set_index("bucket").reindex(buckets)["oracle_auc"]
        if oracle.notna().any():
            ax.plot(x, oracle, color="black", linewidth=2.2, alpha=0.35, label="oracle")
        ax.set_xticks(x, labels=[f"{b}\n(n={int(sizes[b]):,})" for b in buckets], fontsize=7)
        ax.set(title=family, xlabel="")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test AUC (mean ± std over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small", handlelength=4.0,
               frameon=False)
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
