"""Leftovers of the fault hunts (ninth session): strata buckets whose AUC means nothing,
`prepare` saying each [expected] mismatch twice, `plan` on a results folder it cannot write,
Amazon JSON files with classic-Mac ``\\r`` line ends."""

from __future__ import annotations

import ast
import gzip
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_faults_records import read_only  # noqa: F401 (a fixture: a read-only bind mount)

from ctrbench.cli import main
from ctrbench.data.sources import amazon
from ctrbench.data.sources.amazon import read_amazon
from ctrbench.report import strata

FIX = Path(__file__).parent / "fixtures" / "amazon"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# --------------------------------------------------------------------------- 1. strata
class _Scores:
    """The part of a ResultSet the strata rows read: test scores by record path."""

    def __init__(self, labels: np.ndarray, scores: dict[str, np.ndarray]):
        self.labels, self.by_path = labels, scores

    def scores(self, path: str) -> dict[str, np.ndarray]:
        return {"labels": self.labels, "scores": self.by_path[path]}


def _samples(*sizes: int) -> np.ndarray:
    """Labels of samples laid out as the builder writes them: a positive, then its negatives."""
    return np.concatenate([[1.0] + [0.0] * n_neg for n_neg in sizes])


def test_strata_buckets_of_one_sample_or_one_class_show_no_auc():
    # bucket "many": 3 samples with 2 negatives each; "single": 1 sample with 3 negatives;
    # "positives": 2 samples without negatives (one class)
    labels = np.concatenate([_samples(2, 2, 2), _samples(3), _samples(0, 0)])
    codes = np.array([0] * 9 + [1] * 4 + [2] * 2)
    family = strata.Family("history", codes, ["many", "single", "positives"])
    cut = strata.TestStrata(labels, None, 6, [family])
    rng = np.random.default_rng(0)
    paths = {f"{m}/{s}": rng.random(len(labels)) for m in ("lr", "din") for s in (0, 1)}
    runs = {m: [(s, f"{m}/{s}") for s in (0, 1)] for m in ("lr", "din")}
    rows = strata._dataset_rows(_Scores(labels, paths), "ds", cut, runs, "lr", 0.05)
    frame = pd.DataFrame(rows, columns=list(strata.STRATA_COLUMNS))
    for bucket, why in (("single", "1 sample"), ("positives", "one class")):
        part = frame[frame["bucket"] == bucket]
        assert part["auc_mean"].isna().all() and part["delta_auc"].isna().all(), part
        assert part["ttest_p"].isna().all() and (part["significant"] != "no").all()
        assert part["note"].str.contains(f"AUC not defined: {why}").all(), part["note"]
    many = frame[frame["bucket"] == "many"].set_index("model")
    assert np.isfinite(many.loc["din", "delta_auc"]) and np.isfinite(many.loc["lr", "auc_mean"])
    md, txt = strata.render(frame, {"ds": "Reference: lr"}, 0.05)
    for text in (md, txt):
        line = next(x for x in text.splitlines() if x.lstrip("| ").startswith("din"))
        cells = [c.strip() for c in line.strip("| ").split("|" if "|" in line else "  ")
                 if c.strip()]
        assert cells[2:] == ["—", "—"] and cells[1] != "—", cells
        assert "single (n=1" in text and "positives (n=2" in text
    assert md.count("— = AUC not defined") == 1


def test_strata_legend_says_nothing_of_undefined_buckets_when_there_are_none():
    labels = _samples(1, 1, 1, 1)
    cut = strata.TestStrata(labels, None, 4, [strata.Family("gap", np.zeros(8, int), ["all"])])
    scores = {"lr/0": np.linspace(0, 1, len(labels))}
    rows = strata._dataset_rows(_Scores(labels, scores), "ds", cut, {"lr": [(0, "lr/0")]}, "lr",
                                0.05)
    md, _ = strata.render(pd.DataFrame(rows, columns=list(strata.STRATA_COLUMNS)),
                          {"ds": "Reference: lr"}, 0.05)
    assert "AUC not defined" not in md and not math.isnan(rows[0]["auc_mean"])


# --------------------------------------------------------------------------- 2. prepare
def test_prepare_says_each_expected_mismatch_once(home, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(FIX / "reviews.json.gz", mirror / "reviews_Books_5.json.gz")
    shutil.copy(FIX / "meta.json.gz", mirror / "meta_Books.json.gz")
    built = invoke("prepare", "books", "--from", str(mirror), "--no-strict-hash")
    assert built.exit_code == 0 and "books (din): built" in built.output, built.output
    for said in ("users: expected 603,668, got 12", "rows_test: expected 1,207,336, got 24",
                 "checksum mismatch for reviews_Books_5.json.gz",
                 "line count mismatch for meta_Books.json.gz"):
        assert built.output.count(said) == 1, (said, built.output)
    reused = invoke("prepare", "books", "--from", str(mirror), "--no-strict-hash")
    assert "reused existing store" in reused.output, reused.output
    assert reused.output.count("users: expected 603,668, got 12") == 1, reused.output


# --------------------------------------------------------------------------- 3. plan
TINY = """
description = "tiny synthetic world"
reader = "synthetic"
protocol = "din"
version = 1
[reader_params]
seed = 3
n_users = 60
n_items = 50
n_meta_items = 55
n_cates = 5
mean_events = 8.0
max_events = 20
[protocol_params]
max_len = 5
"""


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def _plan_and_run(results: Path) -> tuple:
    args = ["-m", "lr", "-d", "tiny", "--seed-list", "0", "--epochs", "1", "--device", "cpu",
            "--results", str(results)]
    return invoke("plan", *args), invoke("run", *args, "-q")


@pytest.fixture
def tiny(home):
    (home / "tiny.toml").write_text(TINY)


@pytest.mark.usefixtures("tiny", "one_torch_thread")
def test_plan_refuses_a_results_folder_that_cannot_be_made_as_run_does(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    planned, ran = _plan_and_run(tmp_path / "a_file" / "results")
    assert ran.exit_code == 1 and _errors(ran.output), ran.output
    assert planned.exit_code == ran.exit_code, planned.output
    assert _errors(planned.output) == _errors(ran.output), planned.output
    assert "ctrbench run" not in planned.output and "Traceback" not in planned.output


@pytest.mark.usefixtures("tiny", "one_torch_thread")
def test_plan_refuses_a_read_only_results_folder_as_run_does(tmp_path, read_only):  # noqa: F811
    results = read_only(tmp_path / "R")
    planned, ran = _plan_and_run(results)
    assert ran.exit_code == 1 and "Read-only file system" in ran.output, ran.output
    assert planned.exit_code == 1 and _errors(planned.output) == _errors(ran.output), (
        planned.output)
    assert "ctrbench run" not in planned.output and not any(results.iterdir())


# --------------------------------------------------------------------------- 4. line ends
def _strict_json_meta(tmp_path: Path) -> Path:
    """The 2014 meta fixture (python-literal lines) as strict-JSON lines."""
    lines = gzip.decompress((FIX / "meta.json.gz").read_bytes()).decode().splitlines()
    path = tmp_path / "meta_strict.json.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(ast.literal_eval(x)) + "\n"
                                           for x in lines).encode()))
    return path


def _with_line_ends(source: Path, end: bytes, target: Path, compress: bool) -> Path:
    text = gzip.decompress(source.read_bytes()).replace(b"\r\n", b"\n").replace(b"\n", end)
    target.write_bytes(gzip.compress(text) if compress else text)
    return target


def _tables(reviews: Path, meta: Path):
    tables = read_amazon(reviews, meta, category_rule="last_of_last", strict=True)
    return (tables.interactions, tables.items.sort_values("item").reset_index(drop=True),
            [(r.lines, r.bad, r.format) for r in tables.reports])


PAIRS = {"2014 literal": ("reviews.json.gz", "meta.json.gz"),
         "2014 strict": ("reviews.json.gz", None),
         "2018": ("reviews_2018.json.gz", "meta_2018.json.gz"),
         "2023": ("reviews_2023.json.gz", "meta_2023.json.gz")}


@pytest.mark.parametrize("release", list(PAIRS))
@pytest.mark.parametrize("end", [b"\r\n", b"\r"], ids=["crlf", "cr"])
@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_amazon_files_read_alike_whatever_their_line_ends(tmp_path, release, end, compress):
    reviews_name, meta_name = PAIRS[release]
    reviews = FIX / reviews_name
    meta = FIX / meta_name if meta_name else _strict_json_meta(tmp_path)
    want = _tables(reviews, meta)
    assert want[2][0][0] > 3 and want[2][1][0] > 3  # several lines in each file
    suffix = ".json.gz" if compress else ".json"
    got = _tables(_with_line_ends(reviews, end, tmp_path / f"r{suffix}", compress),
                  _with_line_ends(meta, end, tmp_path / f"m{suffix}", compress))
    pd.testing.assert_frame_equal(got[0], want[0])
    pd.testing.assert_frame_equal(got[1], want[1])
    assert got[2] == want[2]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_universal_lines_split_alike_at_every_chunk_boundary(size):
    data = b'{"a": 1}\r\n{"b": 2}\r{"c": 3}\n\r\n{"d": 4}'
    fh = io.BufferedReader(io.BytesIO(data))
    assert list(amazon._universal_lines(fh, size)) == data.splitlines(keepends=True)
