"""Benchmark figures as data (benchmarks/bench_results.py) and the README renderer
(benchmarks/render_readme.py), on a temporary copy of the README (never the real one)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_results as br  # noqa: E402
import render_readme  # noqa: E402

RECORDS = ROOT / "tests" / "fixtures" / "records"
PEER_ROWS = [{"library": "DeepCTR-Torch", "model": "din", "fit_samples_per_s": 3812.4,
              "step_samples_per_s": 4101.0, "torch_threads": 2, "params": 4186058},
             {"library": "FuxiCTR", "model": "din", "fit_samples_per_s": 4890.2,
              "step_samples_per_s": 950.0, "torch_threads": 2, "params": 4185258}]
BLOCKS = """
<!-- BEGIN generated:bench:peer_throughput -->
(hand-copied table)
<!-- END generated:bench:peer_throughput -->

<!-- BEGIN generated:results:books -->
<!-- END generated:results:books -->
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(RECORDS / "cards"))
    monkeypatch.delenv("CTRBENCH_MACHINE", raising=False)


def save_peer(results: Path, rows=PEER_ROWS, commit: str = "a" * 40,
              date: str = "2026-11-30T10:00:00Z") -> Path:
    return br.save("peer_throughput", {"rounds": 2, "models": "din"}, rows, results_dir=results,
                   machine="box-1", commit=commit, dirty=False, date=date)


def readme_copy(tmp_path: Path) -> Path:
    """The real README, its own generated blocks taken out, with the test's blocks added after
    its first section (a temporary copy)."""
    text = render_readme.MARKER.sub("", (ROOT / "README.md").read_text())
    cut = text.index("\n## ")
    path = tmp_path / "README.md"
    path.write_text(text[:cut] + "\n" + BLOCKS + text[cut:])
    return path


def render(readme: Path, results: Path, *extra: str) -> int:
    return render_readme.main(["--readme", str(readme), "--bench-results", str(results),
                               "--results", str(RECORDS), *extra])


# --------------------------------------------------------------------------- bench_results
def test_save_writes_the_documented_schema(tmp_path):
    args = argparse.Namespace(rounds=2, work=tmp_path / "w", results_dir=tmp_path,
                              machine="box-1", no_save=False)
    rows = [{"variant": "fast", "ms": np.float64(1.25), "n": np.int64(3), "ok": True}]
    path = br.save("augru_speed", args, rows, results_dir=tmp_path, machine="box-1",
                   commit="0123456789abcdef" * 2 + "01234567", dirty=True,
                   date="2026-11-30T10:00:00Z")
    assert path == tmp_path / "box-1" / "0123456789ab-augru_speed.json"
    doc = json.loads(path.read_text())
    assert set(doc) == set(br.KEYS)
    assert doc["args"] == {"rounds": 2, "work": str(tmp_path / "w")}  # save options dropped
    assert doc["rows"] == [{"variant": "fast", "ms": 1.25, "n": 3, "ok": True}]
    assert (doc["machine"], doc["dirty"], doc["schema_version"]) == ("box-1", True, 1)
    assert br.load(path)["rows"] == doc["rows"]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_save_records_the_git_commit_of_this_checkout(tmp_path):
    path = br.save("augru_speed", None, [{"ms": 1.0}], results_dir=tmp_path, machine="m")
    commit, dirty = br.git_state()
    doc = br.load(path)
    assert doc["commit"] == commit and doc["dirty"] == dirty
    assert commit == "unknown" or len(commit) == 40


@pytest.mark.parametrize(("rows", "machine", "message"), [
    ([{"ms": float("nan")}], "m", "not a finite number"),
    ([{"ms": {"a": 1}}], "m", "is not a str/int/float/bool/None"),
    ([{"ms": [1, [2]]}], "m", "is not a str/int/float/bool/None"),
    ([{"ms": 1.0}], "../up", "machine name"),
])
def test_save_refuses_bad_input_with_a_clear_message(tmp_path, rows, machine, message):
    with pytest.raises(br.BenchResultError, match=message):
        br.save("augru_speed", None, rows, results_dir=tmp_path, machine=machine, commit="c")


def test_load_refuses_other_schemas_and_broken_files(tmp_path):
    path = save_peer(tmp_path)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(br.BenchResultError, match="schema_version 99"):
        br.load(path)
    path.write_text("{not json")
    with pytest.raises(br.BenchResultError, match="cannot read benchmark result"):
        br.load(path)


def test_latest_is_the_newest_by_date(tmp_path):
    save_peer(tmp_path, commit="b" * 40, date="2026-11-30T12:00:00Z")
    save_peer(tmp_path, commit="a" * 40, date="2026-11-30T10:00:00Z")
    assert br.latest("peer_throughput", tmp_path)["commit"] == "b" * 40
    assert br.latest("peer_throughput", tmp_path, machine="other") is None
    assert br.latest("prepare_scale", tmp_path) is None


def test_command_line_saves_rows_for_shell_scripts(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"model": "din", "samples_per_s": 1234.5}\n{"model": "dien", '
                    '"samples_per_s": 456.0}\n')
    out = ["--results-dir", str(tmp_path / "bench"), "--machine", "h200"]
    assert br.main(["--script", "gpu", "--rows", str(rows), "--args", '{"batch_size": 1024}',
                    *out]) == 0
    doc = br.latest("gpu", tmp_path / "bench")
    assert doc["args"] == {"batch_size": 1024} and [r["model"] for r in doc["rows"]] == [
        "din", "dien"]
    assert capsys.readouterr().out.strip() == doc["path"]
    rows.write_text("[1, 2]")
    assert br.main(["--script", "gpu", "--rows", str(rows), *out]) == 2
    assert "every row a JSON object" in capsys.readouterr().err


# --------------------------------------------------------------------------- render_readme
def test_render_fills_the_blocks_and_leaves_the_rest(tmp_path, capsys):
    readme = readme_copy(tmp_path)
    before = readme.read_text()
    save_peer(tmp_path / "bench")
    assert render(readme, tmp_path / "bench") == 0
    text = readme.read_text()
    assert "(hand-copied table)" not in text
    assert "| DeepCTR-Torch | din | 3.8k | 4.1k | 2 | 4,186,058 |" in text
    assert "| FuxiCTR | din | 4.9k | 950 | 2 | 4,185,258 |" in text
    assert "box-1/aaaaaaaaaaaa-peer_throughput.json" in text
    # the leaderboard of the fixture records, through the report code: best model first
    block = text[text.index("generated:results:books -->"):]
    assert block.index("| mian |") < block.index("| din |") < block.index("| lr |")
    assert "| din | 0.7134 ± 0.0031 | 0.6254 ± 0.0022 | 41.1 | 1.00× |" in block
    # everything outside the blocks is unchanged
    outside = render_readme.MARKER.split(text)[0]
    assert before.startswith(outside)
    assert text.endswith(before[before.index("<!-- END generated:results:books -->"):])
    capsys.readouterr()
    assert render(readme, tmp_path / "bench", "--check") == 0
    assert "up to date" in capsys.readouterr().out


def test_check_fails_on_stale_tables_and_writes_nothing(tmp_path, capsys):
    readme = readme_copy(tmp_path)
    save_peer(tmp_path / "bench")
    assert render(readme, tmp_path / "bench") == 0
    rendered = readme.read_text()
    newer = [{**PEER_ROWS[0], "fit_samples_per_s": 9000.0}, PEER_ROWS[1]]
    save_peer(tmp_path / "bench", newer, commit="b" * 40, date="2026-12-01T10:00:00Z")
    capsys.readouterr()
    assert render(readme, tmp_path / "bench", "--check") == 1
    err = capsys.readouterr().err
    assert "stale generated tables: bench:peer_throughput" in err
    assert "+| DeepCTR-Torch | din | 9.0k |" in err
    assert readme.read_text() == rendered
    assert render(readme, tmp_path / "bench") == 0  # regenerating makes it current again
    assert render(readme, tmp_path / "bench", "--check") == 0


def test_names_select_blocks(tmp_path, capsys):
    readme = readme_copy(tmp_path)
    save_peer(tmp_path / "bench")
    args = ["--names", "bench:*"]
    assert render_readme.main(["--readme", str(readme), "--bench-results",
                               str(tmp_path / "bench"), "--results", str(tmp_path / "none"),
                               *args]) == 0
    text = readme.read_text()
    assert "| FuxiCTR | din |" in text
    assert "<!-- BEGIN generated:results:books -->\n<!-- END" in text  # left alone


@pytest.mark.parametrize(("blocks", "message"), [
    ("<!-- BEGIN generated:bench:nothing_here -->\n<!-- END generated:bench:nothing_here -->",
     "no benchmark result for bench:nothing_here"),
    ("<!-- BEGIN generated:tables:x -->\n<!-- END generated:tables:x -->",
     "unknown generated block 'tables:x'"),
    ("<!-- BEGIN generated:bench:a -->\n", "BEGIN generated:bench:a has no END"),
    ("<!-- END generated:bench:a -->\n", "END generated:bench:a without its BEGIN"),
    ("<!-- BEGIN generated:results:movies -->\n<!-- END generated:results:movies -->",
     "no run records for dataset"),
])
def test_bad_markers_or_missing_data_exit_2_with_a_message(tmp_path, capsys, blocks, message):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{blocks}")
    save_peer(tmp_path / "bench")
    assert render(readme, tmp_path / "bench") == 2
    assert message in capsys.readouterr().err
    assert readme.read_text() == f"# x\n{blocks}"


def test_generic_layout_for_other_scripts(tmp_path):
    br.save("train_throughput", {}, [{"model": "din", "optimizer": "adam", "samples_per_s": 1e4,
                                      "batch_size": 128}],
            results_dir=tmp_path / "bench", machine="m", commit="c" * 40, dirty=False)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN generated:bench:train_throughput -->\n"
                      "<!-- END generated:bench:train_throughput -->\n")
    assert render(readme, tmp_path / "bench") == 0
    assert ("| model | optimizer | batch_size | samples_per_s |\n|---|---|---|---|\n"
            "| din | adam | 128 | 10,000 |") in readme.read_text()


def test_gpu_layout_shows_throughput_failures_and_stages(tmp_path):
    rows = [{"stage": "tests", "tests": 3, "failures": 1, "failed": ["test_x"], "seconds": 9.0},
            {"stage": "throughput", "model": "din", "batch_size": 128, "samples_per_s": 8014.2,
             "step_ms": 15.97, "peak_memory_mb": 559.0},
            {"stage": "throughput", "model": "mian", "batch_size": 128, "error": "RuntimeError: x"},
            {"stage": "books_epoch", "status": "timed out", "seconds": 331.0}]
    br.save("gpu", {}, rows, results_dir=tmp_path / "bench", machine="h200", commit="c" * 40,
            dirty=False)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN generated:bench:gpu -->\n<!-- END generated:bench:gpu -->\n")
    assert render(readme, tmp_path / "bench") == 0
    text = readme.read_text()
    assert "| din | 128 | 8.0k | 15.97 | 559 |  |" in text
    assert "| mian | 128 | – | – | – | RuntimeError: x |" in text
    assert "3 tests, 1 failed (test_x)" in text and "timed out after 331.0 s" in text


@pytest.mark.parametrize("text, expected", [("2", [2]), ("1,2", [1, 2]), ("1,x", None),
                                            ("0", None), ("", None)])
def test_thread_counts_parse_or_refuse_with_a_message(text, expected):
    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError):
            br.thread_counts(text)
    else:
        assert br.thread_counts(text) == expected


def test_load_ratio_layout_skips_models_without_training(tmp_path):
    rows = [{"model": "din", "setting": "auto", "busy": 4, "threads": 2, "quiet_seconds": 7.1,
             "loaded_seconds": 12.51, "ratio": 1.762, "quiet_load_avg_1m": [3.65],
             "loaded_load_avg_1m": [4.13]},
            {"model": "pop", "setting": "auto", "busy": 4, "threads": None,
             "quiet_seconds": 0.0012, "loaded_seconds": 0.0011, "ratio": 0.89}]
    br.save("load_ratio", {}, rows, results_dir=tmp_path / "bench", machine="m",
            commit="c" * 40, dirty=False)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN generated:bench:load_ratio -->\n"
                      "<!-- END generated:bench:load_ratio -->\n")
    assert render(readme, tmp_path / "bench") == 0
    text = readme.read_text()
    assert "| din | auto | 2 | 7.10 | 12.51 | 1.76× | 4 | 3.6 / 4.1 |" in text, text
    assert "| pop |" not in text


def test_train_vs_peers_joins_both_scripts_of_one_machine(tmp_path):
    bench = tmp_path / "bench"
    train = [{"model": "din", "optimizer": o, "batch_size": b, "train_samples_per_s": v,
              "eval_samples_per_s": 85_000.0, "peak_rss_mb": 900.0, "params": 10}
             for o, b, v in [("adam", 128, 10_300.0), ("lazy_adam", 128, 15_400.0),
                             ("adam", 1024, 25_000.0), ("lazy_adam", 1024, 28_000.0)]]
    train.append({"ratio": "mian/din", "optimizer": "adam", "batch_size": 128,
                  "epoch_time_ratio": 1.7, "paper": 1.18})  # ratio rows are skipped
    train.append(dict(train[0], threads=1, train_samples_per_s=9_000.0))  # slower: not shown
    br.save("train_throughput", {}, train, results_dir=bench, machine="box-1",
            commit="c" * 40, dirty=False)
    save_peer(bench, rows=[*PEER_ROWS, dict(PEER_ROWS[0], torch_threads=1,
                                            step_samples_per_s=3_000.0)])
    # best of fit, step and threads: DeepCTR-Torch 4,101 (step, 2 threads), FuxiCTR 4,890 (fit)
    br.save("peer_throughput", {}, [dict(PEER_ROWS[0], fit_samples_per_s=1.0)],
            results_dir=bench, machine="other", commit="d" * 40, dirty=False,
            date="2027-01-01T00:00:00Z")  # newer, but another machine: not used
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN generated:bench:train_vs_peers -->\n"
                      "<!-- END generated:bench:train_vs_peers -->\n")
    assert render(readme, bench) == 0
    text = readme.read_text()
    assert ("| din | 10.3k | 15.4k | 4.1k | 4.9k | 2.1× | 3.1× | 25.0k / 28.0k | 85.0k |"
            in text), text
    assert "box-1" in text and "machine other" not in text


def test_a_newer_side_by_side_result_supplies_the_peers_and_renders_its_ratios(tmp_path):
    """peer_throughput.py --with-ctrbench saves side_by_side: the peers' rows beside ctrbench's
    and ratio rows. The newest of it and peer_throughput gives train_vs_peers its peers
    (ctrbench's own rows and the ratio rows are not peers), and bench:side_by_side renders its
    ratios."""
    bench = tmp_path / "bench"
    train = [{"model": "din", "optimizer": "adam", "batch_size": 128,
              "train_samples_per_s": 12_000.0, "eval_samples_per_s": 85_000.0}]
    br.save("train_throughput", {}, train, results_dir=bench, machine="box-1",
            commit="c" * 40, dirty=False)
    save_peer(bench)  # older: DeepCTR-Torch 4,101, FuxiCTR 4,890
    ours = {"library": "ctrbench", "model": "din", "fit_samples_per_s": 99_000.0,
            "step_samples_per_s": 99_000.0, "torch_threads": 1, "params": 4185258}
    ratio = {"ratio_row": True, "model": "din", "ctrbench_fit_samples_per_s": 12_300.0,
             "ctrbench_threads": 1, "faster_peer": "FuxiCTR", "peer_samples_per_s": 4_000.0,
             "peer_threads": 2, "ratio": 3.075}
    newer = [dict(PEER_ROWS[0], fit_samples_per_s=3_000.0, step_samples_per_s=3_100.0),
             dict(PEER_ROWS[1], fit_samples_per_s=4_000.0), ours, ratio]
    br.save("side_by_side", {}, newer, results_dir=bench, machine="box-1", commit="e" * 40,
            dirty=False, date="2026-12-01T10:00:00Z")
    assert br.peer_rates(br.newest_peers(bench, "box-1")) == {
        "din": {"DeepCTR-Torch": 3_100.0, "FuxiCTR": 4_000.0}}
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN generated:bench:train_vs_peers -->\n"
                      "<!-- END generated:bench:train_vs_peers -->\n"
                      "<!-- BEGIN generated:bench:side_by_side -->\n"
                      "<!-- END generated:bench:side_by_side -->\n")
    assert render(readme, bench) == 0
    text = readme.read_text()
    assert "| din | 12.0k | 3.1k | 4.0k | 3.0× | 85.0k |" in text, text
    assert "| din | 12.3k | 1 | FuxiCTR | 4.0k | 2 | 3.08× |" in text, text
    assert "eeeeeeeeeeee-side_by_side.json" in text


def test_the_committed_readme_benchmark_tables_are_current(capsys):
    """The CI gate: README tables rendered from committed benchmarks/results/ are not stale
    (results:* blocks need run records, which are not committed, so they are not checked)."""
    code = render_readme.main(["--check", "--names", "bench:*", "--names", "evidence:*"])
    assert code == 0, capsys.readouterr().err


def test_evidence_tables_render_from_report_csvs(tmp_path):
    import evidence_tables

    folder = tmp_path / "evidence" / "demo"
    folder.mkdir(parents=True)
    pd.DataFrame([
        {"model": "din", "n_seeds": 5, "auc_mean": 0.85, "auc_std": 0.004, "auc_boot_low": 0.84,
         "auc_boot_high": 0.86, "reference": "mian", "delta_auc": 0.047, "ttest_p_holm": 0.0001,
         "delong_seeds": 5, "delong_better": 5, "delong_worse": 0, "beats_pop": "yes"},
        {"model": "mian", "n_seeds": 5, "auc_mean": 0.80, "auc_std": 0.002, "auc_boot_low": 0.79,
         "auc_boot_high": 0.81, "reference": "mian", "delta_auc": float("nan"),
         "ttest_p_holm": float("nan"), "delong_seeds": 0, "delong_better": 0, "delong_worse": 0,
         "beats_pop": "yes"},
        {"model": "mian_wo_gim", "n_seeds": 5, "auc_mean": 0.81, "auc_std": 0.004,
         "auc_boot_low": 0.8, "auc_boot_high": 0.82, "reference": "mian", "delta_auc": 0.01,
         "ttest_p_holm": 0.02, "delong_seeds": 5, "delong_better": 3, "delong_worse": 0,
         "beats_pop": "yes"},
        {"model": "din@demo", "n_seeds": 5, "auc_mean": 0.86, "auc_std": 0.001,
         "auc_boot_low": 0.85, "auc_boot_high": 0.87, "reference": "mian", "delta_auc": 0.06,
         "ttest_p_holm": 0.001, "delong_seeds": 5, "delong_better": 5, "delong_worse": 0,
         "beats_pop": "yes"},
    ]).to_csv(folder / "leaderboard.csv", index=False)
    pd.DataFrame([{"model": "mian", "n_seeds": 5, "auc_mean": 0.80, "auc_std": 0.002,
                   "delta_auc": float("nan"), "ttest_p_holm": float("nan"),
                   "significant": "reference", "note": float("nan")},
                  {"model": "mian_wo_gim", "n_seeds": 5, "auc_mean": 0.81, "auc_std": 0.004,
                   "delta_auc": 0.01, "ttest_p_holm": 0.02, "significant": "yes",
                   "note": float("nan")}]).to_csv(folder / "ablations.csv", index=False)
    board = evidence_tables.render(tmp_path / "evidence", "demo", "leaderboard")
    assert "| din | 5 | 0.8500 ± 0.0040 | [0.8400, 0.8600] | +0.0470 | < 0.001 | 5 / 0 | yes |" \
        in board
    assert "| mian | 5 | 0.8000 ± 0.0020 | [0.7900, 0.8100] | reference |" in board
    assert "din@demo" not in board and "mian_wo_gim" not in board  # tuned, ablation: elsewhere
    abl = evidence_tables.render(tmp_path / "evidence", "demo", "ablations")
    assert "| mian_wo_gim | 5 | 0.8100 ± 0.0040 | +0.0100 * | 0.020 |" in abl
    with pytest.raises(KeyError, match="unknown evidence table"):
        evidence_tables.render(tmp_path / "evidence", "demo", "nope")
    with pytest.raises(FileNotFoundError):
        evidence_tables.render(tmp_path / "evidence", "missing", "tuned")


def test_a_rerun_at_the_same_commit_keeps_the_earlier_result(tmp_path):
    """A second run on the same machine and commit (e.g. one model of a full table) used to
    replace the first run's file; both are kept now, and the newer is the one rendered."""
    first = br.save("load_ratio", {"models": "table2"}, [{"model": "dcn"}, {"model": "din"}],
                    results_dir=tmp_path, machine="m", commit="a" * 40,
                    date="2026-12-02T07:00:00Z")
    second = br.save("load_ratio", {"models": "dcn"}, [{"model": "dcn"}], results_dir=tmp_path,
                     machine="m", commit="a" * 40, date="2026-12-02T07:10:00Z")
    third = br.save("load_ratio", {"models": "din"}, [{"model": "din"}], results_dir=tmp_path,
                    machine="m", commit="a" * 40, date="2026-12-02T07:20:00Z")
    assert first.name == "aaaaaaaaaaaa-load_ratio.json"
    assert (second.name, third.name) == ("aaaaaaaaaaaa.2-load_ratio.json",
                                         "aaaaaaaaaaaa.3-load_ratio.json")
    assert [len(br.load(p)["rows"]) for p in (first, second, third)] == [2, 1, 1]
    assert br.latest("load_ratio", tmp_path)["args"] == {"models": "din"}
    assert len(br.find("load_ratio", tmp_path)) == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_file_system_without_hard_links_still_keeps_both_results(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(br.os, "link", no_links)
    first = br.save("load_ratio", {}, [{"model": "dcn"}], results_dir=tmp_path, machine="m",
                    commit="a" * 40, date="2026-12-02T07:00:00Z")
    second = br.save("load_ratio", {}, [{"model": "din"}], results_dir=tmp_path, machine="m",
                     commit="a" * 40, date="2026-12-02T07:10:00Z")
    assert (first.name, second.name) == ("aaaaaaaaaaaa-load_ratio.json",
                                         "aaaaaaaaaaaa.2-load_ratio.json")
    assert [br.load(p)["rows"][0]["model"] for p in (first, second)] == ["dcn", "din"]
    assert not list(tmp_path.rglob("*.tmp"))
