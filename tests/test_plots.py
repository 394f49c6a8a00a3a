"""Report figures stay readable: a distinct colour, line style and marker for every model."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb

from ctrbench.report.plots import N_STYLES, learning_curves, model_styles, strata_plot


def _lab(color: str) -> np.ndarray:
    """sRGB -> CIE L*a*b* (D65), to measure how different two colours look."""
    rgb = np.array(to_rgb(color))
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ rgb / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_twenty_models_get_unique_colours_line_styles_and_markers():
    models = [f"model_{i:02d}" for i in range(20)]
    styles = model_styles(models)
    assert N_STYLES >= 20
    for attr in ("color", "linestyle", "marker"):
        values = [str(getattr(s, attr)) for s in styles.values()]
        assert len(set(values)) == 20, f"{attr} repeats: {values}"
    # distinct to the eye: every pair of colours differs by more than 20 (CIE76 delta E)
    labs = [_lab(s.color) for s in styles.values()]
    closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(labs, 2))
    assert closest > 20


def test_styles_do_not_depend_on_order_and_never_repeat_a_pair():
    models = ["mian", "din", "dien", "xdeepfm", "lr"]
    assert model_styles(models) == model_styles(list(reversed(models)))
    many = model_styles([f"m{i:03d}" for i in range(60)])
    pairs = {(s.color, str(s.linestyle)) for s in many.values()}
    assert len(pairs) == 60  # past 20 models colours repeat, never with the same line style


def test_learning_curves_and_strata_plot_with_twenty_models(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"m{i:02d}", seed, epoch, 0.6 + 0.01 * i + 0.01 * epoch + 0.002 * rng.random(),
             0.7 - 0.01 * epoch) for i in range(20) for seed in range(3) for epoch in (1, 2, 3)]
    curves = pd.DataFrame(rows, columns=["model", "seed", "epoch", "valid_auc", "train_loss"])
    learning_curves(curves, tmp_path / "lc.png", "twenty models", floors=["m00"])
    strata = pd.DataFrame([
        {"stratum": fam, "bucket": b, "model": f"m{i:02d}", "auc_mean": 0.7 + 0.005 * i,
         "auc_std": 0.003, "oracle_auc": 0.9, "n_samples": 100}
        for fam, buckets in (("category", ["new", "seen"]), ("gap", ["> 30", "<= 30"]))
        for b in buckets for i in range(20)])
    strata_plot(strata, tmp_path / "strata.png", "strata")
    for name in ("lc.png", "strata.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
