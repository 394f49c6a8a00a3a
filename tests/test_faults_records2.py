"""Records this version cannot read, rescued results and non-finite parameters (issue 14,
faults 1, 2 and 8).

A record file that exists and is not clearly half-written or failed is never overwritten
without ``--force``, and with it the old bytes move to ``replaced/``; a rescued ("unsaved")
result never overwrites an earlier one; ``inf``/``nan`` parameters are refused at resolution.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import train_fixtures as tf
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.errors import CardError
from ctrbench.record import RunRecord, read_record, write_record
from ctrbench.runs import runner
from ctrbench.runs.state import record_state, save_outcome

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted",
                                 rows=(640, 200, 200))


@pytest.fixture
def planted(tmp_path, monkeypatch, store):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    tf.write_cards(tmp_path / "cards", {"tiny": tf.TINY_CARD.replace("epochs = 3", "epochs = 1")})
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path / "cards"))
    return runner.DatasetHandle("planted", store, {"name": "planted"})


def _spec(handle, results: Path, train: dict | None = None):
    overrides = runner.Overrides(common={"train": train} if train else {})
    cards = runner.resolve_cards("tiny", overrides)
    return runner.plan_runs(handle, cards, [0], results)[0]


def _run(spec, handle, force: bool = False):
    return runner.execute([spec], handle, device="cpu", show_progress=False, force=force)[0]


@pytest.fixture
def finished(planted, tmp_path):
    """A real finished record (of another configuration than ``_spec``'s default) and scores."""
    spec = _spec(planted, tmp_path / "first", {"lr": 0.01})
    assert _run(spec, planted).status == "finished"
    return spec.record_file.read_text(), spec.record_file.with_suffix(".npz").read_bytes()


def _edit(text: str, how: str) -> str:
    data = json.loads(text)
    if how == "schema_version":
        data["schema_version"] = 3  # as a newer ctrbench would write
    elif how == "extra_key":
        data["note"] = "keep"
    elif how == "typo":  # a hand edit that broke the syntax, not a cut-short file
        return text.replace('"status": "finished",', '"status": "finished",,', 1)
    elif how == "not_an_object":
        return json.dumps([data])
    return json.dumps(data)


def _replaced(record_file: Path) -> list[Path]:
    folder = record_file.parent / "replaced"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


# --------------------------------------------------------------------------- fault 1
@pytest.mark.parametrize("how", ["schema_version", "extra_key", "typo", "not_an_object"])
def test_a_record_this_version_cannot_read_is_refused_then_moved_aside(planted, tmp_path,
                                                                       finished, how):
    text, scores = finished
    spec = _spec(planted, tmp_path / "R")
    spec.record_file.parent.mkdir(parents=True)
    spec.record_file.write_text(_edit(text, how))
    spec.record_file.with_suffix(".npz").write_bytes(scores)
    before = spec.record_file.read_bytes()

    assert record_state(spec).protected
    refused = _run(spec, planted)
    assert refused.status == "refused", refused.detail
    assert "cannot read" in refused.detail and "--force" in refused.detail
    assert spec.record_file.read_bytes() == before
    assert spec.record_file.with_suffix(".npz").read_bytes() == scores
    assert runner.pending([spec]) == [spec]

    forced = _run(spec, planted, force=True)
    assert forced.status == "finished", forced.detail
    (kept,) = _replaced(spec.record_file)
    assert kept.read_bytes() == before  # byte-identical, with its scores
    assert kept.with_suffix(".npz").read_bytes() == scores
    assert read_record(spec.record_file).run_id == spec.run_id


def test_the_cli_refuses_a_record_of_a_newer_schema(tmp_path, monkeypatch):
    """The tester's case, end to end: exit 1, the record named with why it cannot be read."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    results = tmp_path / "R"
    base = ["run", "-m", "lr", "-d", "synthetic", "--seed-list", "0", "--epochs", "1",
            "--device", "cpu", "-q", "--results", str(results)]
    path = results / "runs" / "synthetic" / "lr" / "seed-0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": 3, "status": "finished", "run_id": "abc"}))
    before = path.read_bytes()
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "schema_version 3" in result.output
    assert "--force" in result.output and "Traceback" not in result.output
    assert path.read_bytes() == before


@pytest.mark.parametrize("how", ["cut_short", "empty", "failed_newer_schema"])
def test_a_half_written_or_failed_record_is_redone_and_its_bytes_kept(planted, tmp_path,
                                                                      finished, how):
    text, scores = finished
    spec = _spec(planted, tmp_path / "R")
    spec.record_file.parent.mkdir(parents=True)
    if how == "cut_short":
        content = text[: len(text) // 2]  # a killed writer that wrote in place
    elif how == "empty":
        content = ""
    else:
        content = json.dumps({**json.loads(text), "status": "failed", "schema_version": 3})
    spec.record_file.write_text(content)
    spec.record_file.with_suffix(".npz").write_bytes(scores)

    assert not record_state(spec).protected
    result = _run(spec, planted)
    assert result.status == "finished", result.detail
    assert read_record(spec.record_file).run_id == spec.run_id
    (kept,) = _replaced(spec.record_file)
    assert kept.read_text() == content  # never deleted: moved aside, with the scores beside it
    assert kept.with_suffix(".npz").read_bytes() == scores


def _record(run_id: str, auc: float) -> RunRecord:
    return RunRecord(run_id=run_id, dataset="d", model="m", seed=0, status="finished",
                     dataset_config={}, dataset_identity={}, model_config={}, model_hash="h",
                     environment={}, test={"auc": auc})


def test_replacing_twice_keeps_both_replaced_records(tmp_path):
    path = tmp_path / "runs" / "d" / "m" / "seed-0.json"
    write_record(path, _record("same", 0.1))
    for auc in (0.2, 0.3):  # --force twice on the same run id
        save_outcome(path, _record("same", auc), None, Path("d/m/seed-0.json"))
    kept = sorted(read_record(p).test["auc"] for p in _replaced(path))
    assert kept == [0.1, 0.2]
    assert read_record(path).test["auc"] == 0.3


# --------------------------------------------------------------------------- fault 2
def test_rescued_results_never_overwrite_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    relative = Path("d/m/seed-0.json")
    saved = []
    for root, auc in (("a", 0.6), ("b", 0.7)):
        record_file = tmp_path / root / "runs" / relative
        record_file.mkdir(parents=True)  # the record path is a directory: the write is refused
        saved.append(save_outcome(record_file, _record("same", auc), None, relative).fallback)
    assert saved[0] != saved[1]
    assert [read_record(p).test["auc"] for p in saved] == [0.6, 0.7]


def test_the_printed_rescue_path_holds_the_result(planted, tmp_path):
    spec = _spec(planted, tmp_path / "R")
    spec.record_file.mkdir(parents=True)  # the write is refused (`execute` refuses this before
    # training; `execute_one` meets it as it would a directory made during the run)
    result = runner.execute_one(spec, planted, device="cpu", show_progress=False)
    assert result.status == "unsaved", result.detail
    rescued = [p for p in (tmp_path / "fallback").rglob("*.json") if str(p) in result.detail]
    assert len(rescued) == 1, result.detail
    assert read_record(rescued[0]).run_id == spec.run_id
    assert rescued[0].with_suffix(".npz").is_file()
    assert str(rescued[0].with_suffix(".npz")) in result.detail


# --------------------------------------------------------------------------- slurm: lost task
def test_a_lost_task_never_overwrites_a_protected_record(planted, tmp_path, finished):
    from ctrbench.runs.runner import record_failed

    text, _ = finished
    spec = _spec(planted, tmp_path / "R")
    spec.record_file.parent.mkdir(parents=True)
    spec.record_file.write_text(text)  # a finished record of another configuration
    result = record_failed(spec, planted, "task killed")
    assert result.status == "failed" and "kept" in result.detail
    assert spec.record_file.read_text() == text


# --------------------------------------------------------------------------- fault 8
@pytest.mark.parametrize("model, item, key", [
    ("lr", "params.init_std=inf", "init_std"),
    ("lr", "params.init_std=nan", "init_std"),
    ("din", "params.init_std=-inf", "init_std"),
    ("dien", "dien:params.aux_weight=inf", "aux_weight"),
    ("dien", "params.aux_weight=nan", "aux_weight"),
])
def test_non_finite_numbers_are_refused_at_resolution(model, item, key):
    with pytest.raises(CardError, match=rf"{key} must be a number in .*, got (inf|nan|-inf)"):
        runner.resolve_cards(model, runner.load_overrides(None, [item]))


def test_the_cli_refuses_an_infinite_init_std(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    result = CliRunner().invoke(main, ["run", "-m", "lr", "-d", "synthetic", "--seed-list", "0",
                                       "--epochs", "1", "-q", "--results", str(tmp_path / "R"),
                                       "--set", "params.init_std=inf"])
    assert result.exit_code == 1, result.output
    assert "init_std" in result.output and "Traceback" not in result.output
