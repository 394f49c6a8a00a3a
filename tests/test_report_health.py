"""Training-health flags beside the leaderboard (issue 10, item 7): listed, counted, explained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctrbench.report.build import build_report

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """The fixture records, with one degenerate and one not-converged mian run on books."""
    monkeypatch.setenv("CTRBENCH_CARDS", str(FIXTURES / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    root = tmp_path / "results"
    shutil.copytree(FIXTURES / "runs", root / "runs")
    for seed, health in (
        (1, {"degenerate": True, "degenerate_reasons": ["test AUC 0.5012 <= 0.55"],
             "not_converged": False,
             "dead_relu": {"init": {"mlp.net.1": 0.4, "mlp.net.4": 0.5},
                           "best": {"mlp.net.1": 1.0, "mlp.net.4": 1.0}}}),
        (2, {"degenerate": False, "degenerate_reasons": [], "not_converged": True,
             "dead_relu": {"init": {"mlp.net.1": 0.0}, "best": {"mlp.net.1": 0.125}}}),
    ):
        path = root / "runs" / "books" / "mian" / f"seed-{seed}.json"
        record = json.loads(path.read_text())
        record["health"] = health
        path.write_text(json.dumps(record))
    return root


def test_flagged_runs_are_listed_and_still_counted(results):
    report = build_report(results, results / "report", n_boot=0, make_plots=False)
    tables = {t.name: t for t in report.tables}
    flagged = tables["flagged"].frame
    assert list(zip(flagged["model"], flagged["seed"])) == [("mian", 1), ("mian", 2)]
    assert flagged.iloc[0]["flags"].startswith("degenerate (test AUC 0.5012")
    assert "not converged" in flagged.iloc[1]["flags"]
    assert flagged.iloc[0]["dead_relu_init"] == pytest.approx(0.5)
    assert flagged.iloc[0]["dead_relu_best"] == pytest.approx(1.0)
    board = tables["leaderboard"].frame.set_index(["dataset", "model"])
    seeds = [json.loads(p.read_text())["test"]["auc"]
             for p in sorted((results / "runs/books/mian").glob("seed-*.json"))]
    assert board.loc[("books", "mian"), "auc_mean"] == pytest.approx(np.mean(seeds))
    text = (results / "report" / "leaderboard.md").read_text()
    assert "flagged runs (counted, see flagged.md): mian 1 degenerate, 1 not converged" in text
    assert "count in the means above, never dropped" in text
    assert "degenerate (test AUC 0.5012" in (results / "report" / "flagged.md").read_text()


def test_no_flags_no_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_CARDS", str(FIXTURES / "cards"))
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    report = build_report(FIXTURES, tmp_path / "out", n_boot=0, make_plots=False)
    assert next(t for t in report.tables if t.name == "flagged").frame.empty
    assert (tmp_path / "out" / "flagged.md").read_text().endswith("_No flagged runs._\n")
