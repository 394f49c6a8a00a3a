"""Test-set bootstrap of one record's AUC: resampling users (clusters) vs rows (stratified).

    python benchmarks/cluster_vs_rows.py RESULTS_DIR [--n-boot 1000]

For the first finished record of each (dataset, model) under RESULTS_DIR/runs, prints the
standard deviation of its test AUC over bootstrap resamples of (a) test users, all of a user's
rows together (what the report's seeds x users intervals use), and (b) rows, stratified by
label (the report's former ΔAUC bootstrap), and their ratio. Seeded; no per-row Python.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ctrbench.analysis import cluster, stats
from ctrbench.report.data import load_results


def main(results: Path, n_boot: int) -> None:
    rs = load_results(results)
    fin = rs.finished.sort_values(["dataset", "model", "seed"])
    print(f"{'dataset':<12} {'model':<8} {'rows':>7} {'users':>6} {'sd users':>9} "
          f"{'sd rows':>8} {'rows/users':>10}")
    for (ds, model), grp in fin.groupby(["dataset", "model"], sort=True):
        path = str(grp["path"].iloc[0])
        arrays, groups = rs.scores(path), rs.test_groups(path)
        if arrays is None or groups is None:
            continue
        scores, labels = arrays["scores"], arrays["labels"]
        w = cluster.user_weights(groups, n_boot, np.random.default_rng(0))
        by_users = cluster.weighted_aucs([scores], labels, w)[0]
        by_rows = stats.bootstrap_aucs([scores], labels, n_boot=n_boot, seed=0)[0]
        su, sr = float(np.std(by_users, ddof=1)), float(np.std(by_rows, ddof=1))
        print(f"{ds:<12} {model:<8} {labels.size:>7,} {np.unique(groups).size:>6,} "
              f"{su:>9.5f} {sr:>8.5f} {sr / su:>10.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    main(args.results, args.n_boot)
