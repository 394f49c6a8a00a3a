"""End-to-end faults on real-format data as users bring it: prepare --from a mirror, run, report
with the paper comparison (issue h12)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctrbench.cli import main

FIX = Path(__file__).parent / "fixtures" / "amazon"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def books_mirror(tmp_path: Path) -> Path:
    """A folder holding Amazon 2014 files under the books card's names (not the real files)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(FIX / "reviews.json.gz", mirror / "reviews_Books_5.json.gz")
    shutil.copy(FIX / "meta.json.gz", mirror / "meta_Books.json.gz")
    return mirror


def test_prepare_takes_the_no_strict_hash_its_own_hint_names(home, tmp_path):
    mirror = books_mirror(tmp_path)
    refused = invoke("prepare", "books", "--from", str(mirror))
    assert refused.exit_code == 1 and "--no-strict-hash" in refused.output
    result = invoke("prepare", "books", "--from", str(mirror), "--no-strict-hash")
    assert result.exit_code == 0, result.output
    assert "books (din): built" in result.output


@pytest.mark.usefixtures("one_torch_thread")
def test_paper_comparison_on_a_subset_says_the_papers_numbers_do_not_apply(home, tmp_path):
    mirror, results = books_mirror(tmp_path), tmp_path / "results"
    assert invoke("download", "books", "--from", str(mirror), "--no-strict-hash").exit_code == 0
    run = invoke("run", "-m", "lr", "-d", "books", "--seed-list", "0", "--epochs", "1",
                 "--results", str(results), "-q")
    assert run.exit_code == 0, run.output
    report = invoke("report", "--results", str(results), "--paper-map", "books=books",
                    "--bootstrap", "0", "--no-plots")
    assert report.exit_code == 0, report.output
    paper = (results / "report" / "paper.md").read_text()
    assert "| lr " in paper  # the numbers are still shown beside the paper's
    assert "not the paper's data" in paper and "interactions: expected 8,898,041" in paper
    assert "not the paper's data" in report.output
