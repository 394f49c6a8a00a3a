"""What the CLI tells a first-time user: help texts, error messages, quiet and piped output.

Each test below failed before its fix, except the guards marked so (the examples of every
help text parse, and name datasets that exist).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ctrbench import progress
from ctrbench.cli import main

SELECT = ["-m", "lr", "-d", "synthetic", "--seeds", "1"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh CTRBENCH_HOME and working directory; the built-in cards only."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.delenv("CTRBENCH_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _commands(group: click.Group = main, path: tuple[str, ...] = ()):
    """(path, command) of every command and subcommand, the group itself first."""
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _help(path: tuple[str, ...]) -> str:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    return result.output


def _examples(text: str) -> list[list[str]]:
    """Every `ctrbench ...` example line of a help text (numbered or not; continuations
    joined; comments, redirections and pipes cut): its arguments."""
    lines, joined = [], ""
    for line in text.splitlines():
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        match = re.match(r"(\d+\.\s+)?ctrbench\s+(.*)", joined)
        joined = ""
        if match:
            words = shlex.split(match.group(2), comments=True)
            cut = next((i for i, w in enumerate(words) if w in (">", "<", "|")), len(words))
            lines.append(words[:cut])
    return lines


def _all_examples() -> list[list[str]]:
    return [args for path, _ in _commands() for args in _examples(_help(path))]


# --------------------------------------------------------------------------- help texts
def test_every_help_example_parses_with_click(work):
    """Guard: each example command of each help text is accepted by click's parser."""
    from ctrbench.cards import dataset_names

    examples = _all_examples()
    assert len(examples) > 20
    for args in examples:
        command, rest = main, list(args)
        while isinstance(command, click.Group):
            command, rest = command.commands[rest[0]], rest[1:]
        with command.make_context(command.name, rest) as ctx:  # a bad example raises here
            dataset = ctx.params.get("dataset") or ctx.params.get("name")
            if isinstance(dataset, str):
                assert dataset in dataset_names(), args


def test_every_option_has_help(work):
    """tune's --sampler and --pruner had none: their choices were not explained."""
    missing = [f"{' '.join(path)} {param.opts[0]}" for path, command in _commands()
               for param in command.params
               if isinstance(param, click.Option) and not param.help]
    assert missing == []


def _option_help(command: str, option: str) -> str:
    """The help text of ``option`` of ``ctrbench command``."""
    params = main.commands[command].params
    return next(p.help for p in params if option in p.opts)


@pytest.mark.parametrize("command", ["run", "plan", "tune", "report", "check"])
def test_results_help_names_the_environment_variable_it_honours(command):
    """report, check and tune said "default: ./results" though $CTRBENCH_RESULTS wins."""
    assert "$CTRBENCH_RESULTS" in _option_help(command, "--results")


@pytest.mark.parametrize("command,option,needle", [
    ("run", "--epochs", "default"),
    ("plan", "--epochs", "default"),
    ("tune", "--epochs", "default"),
    ("tune", "--timeout", "default"),
    ("run", "--devices", "--jobs"),
    ("run", "--max-parallel", "default"),
    ("run", "--time", "minutes"),  # every Slurm form is accepted, not only [D-]HH:MM:SS
    ("tune", "--storage", "journal:"),  # the default under --executor slurm
    ("check", "--dataset", "default"),
    ("run", "--quiet", "warnings"),
    ("tune", "--quiet", "warnings"),
])
def test_option_help_states_its_default_and_unit(command, option, needle):
    assert needle.lower() in _option_help(command, option).lower()


def test_help_prints_no_control_character(work):
    """check's help printed a raw backspace (a ``\\b`` not on a line of its own)."""
    for path, _ in _commands():
        text = _help(path)
        assert [line for line in text.splitlines()
                if any(ord(c) < 32 for c in line) or (line and not line.strip())] == [], path


# --------------------------------------------------------------------------- error messages
@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("item", ["train.lr", "=1", ":train.lr=1", "train..lr=1"])
def test_a_set_item_that_is_not_key_equals_value_is_a_usage_error(work, command, item):
    """Exit 1 (as a bad card value) before; a malformed option value is a usage error."""
    result = invoke(command, *SELECT, "--set", item, "--results", "r")
    assert result.exit_code == 2, result.output
    assert "--set" in result.output and repr(item) in result.output
    assert "Traceback" not in result.output


def test_tune_results_that_is_a_file_is_one_message(work):
    """A NotADirectoryError traceback before (after preparing the dataset)."""
    (work / "afile").write_text("")
    as_dir = invoke("tune", "--model", "lr", "--dataset", "synthetic", "--results", "afile")
    assert as_dir.exit_code == 2, as_dir.output
    under = invoke("tune", "--model", "lr", "--dataset", "synthetic", "--results", "afile/sub")
    assert under.exit_code == 1, under.output
    for result in (as_dir, under):
        assert "afile" in result.output and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (work / "home" / "prepared").exists()  # refused before any work


def test_a_slurm_option_without_slurm_reads_as_english(work):
    result = invoke("run", *SELECT, "--partition", "x", "--results", "r")
    assert result.exit_code == 2, result.output
    assert "--partition only applies with --executor slurm" in result.output


def test_generate_under_a_file_says_so_before_any_progress(work):
    """A "generating synthetic: 0 lines" progress line came before the error."""
    (work / "afile").write_text("")
    result = invoke("generate", "synthetic", "--out", "afile/sub")
    assert result.exit_code == 1, result.output
    assert "afile is a file" in result.output and "generating" not in result.output


# --------------------------------------------------------------------------- progress
def test_progress_lines_without_a_terminal_draw_no_bar(capsys):
    """Piped stderr got `[########----]` bars in every progress line."""
    progress.set_mode("lines")
    with progress.progress("epoch 1/1", total=10, unit="batch") as bar:
        bar.update(10)
    err = capsys.readouterr().err
    assert "10/10 batch" in err and "[#" not in err and "[-" not in err and "\r" not in err


def test_quiet_hides_progress_but_not_warnings(capsys):
    """-q (documented as "no progress") also hid warnings, e.g. an empty split."""
    progress.set_mode("quiet")
    progress.message("[1/2] lr seed 0: training")
    progress.message("warning: synthetic: the valid split is empty")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "warning: synthetic: the valid split is empty\n"


# --------------------------------------------------------------------------- leftovers of the audit
@pytest.mark.parametrize("argv", [("tune", "--model", "_paper", "--dataset", "synthetic"),
                                  ("run", "-m", "_paper", "-d", "synthetic"),
                                  ("prepare", "_paper")])
def test_an_abstract_card_is_an_unknown_name_and_never_listed(work, argv):
    """Before: `tune --model _paper` failed with "missing required key 'arch'", and the hint of
    an unknown model listed `_paper` (settings other cards extend, not a model)."""
    result = invoke(*argv)
    assert result.exit_code == 1, result.output
    assert "Unknown" in result.output and "'_paper'" in result.output
    assert "_paper," not in result.output and "missing required key" not in result.output
    assert "Traceback" not in result.output


def test_the_unknown_model_or_group_hint_reads_as_english(work):
    result = invoke("run", "-m", "dinn", "-d", "synthetic")
    assert result.exit_code == 1 and "known models and groups: " in result.output, result.output


def test_from_on_a_card_without_raw_files_says_what_to_do(work):
    """Before: "hint: pass a directory holding " and nothing after it (synthetic has no files)."""
    result = invoke("prepare", "synthetic", "--from", "nowhere")
    assert result.exit_code == 1
    assert "synthetic has no raw files to take from a folder: drop --from" in result.output


def test_a_baseline_under_a_file_is_named_with_the_right_hint(work, tmp_path):
    """Before: "... File exists", the error named twice, hint "free some space"."""
    (tmp_path / "afile").write_text("")
    fixture = Path(__file__).resolve().parent / "fixtures" / "records"
    result = invoke("check", "--baseline", str(tmp_path / "afile" / "ref.csv"), "--results",
                    str(fixture), "--update")
    assert result.exit_code == 2, result.output
    assert "a file stands where a folder must be" in result.output
    assert "free some space" not in result.output
    assert result.output.count("hint:") == 1


def test_a_misspelled_model_in_set_gets_a_close_name(work):
    result = invoke("run", "-m", "din", "-d", "synthetic", "--set", "dinn:train.lr=1")
    assert result.exit_code == 1 and "did you mean: dinn -> din?" in result.output


def test_an_option_without_effect_is_said(work):
    """Before: `--devices` with one worker and `--prune-after` with `--pruner none` were
    accepted without a word (said before the dataset is looked up, so a missing one is fine)."""
    result = invoke("run", "-m", "lr", "-d", "nosuchdataset", "--devices", "cpu,cpu")
    assert "warning: --devices is for --jobs N > 1" in result.output, result.output
    result = invoke("tune", "--model", "lr", "--dataset", "nosuchdataset", "--pruner", "none",
                    "--prune-after", "3")
    assert "warning: --prune-after has no effect with --pruner none" in result.output
    default = invoke("tune", "--model", "lr", "--dataset", "nosuchdataset", "--pruner", "none")
    assert "--prune-after" not in default.output


def test_epoch_progress_names_the_seed(tmp_path, monkeypatch, capsys):
    """With --jobs 2 the epoch lines of two seeds interleave: each now names its seed."""
    import train_fixtures as tf

    from ctrbench.cards import model_card_from_dict
    from ctrbench.engine.train import train_and_evaluate

    monkeypatch.setattr(progress, "_effective_mode", lambda: "lines")
    store = tf.make_planted_store(tmp_path / "planted", rows=(64, 32, 32))
    card = model_card_from_dict({"name": "tiny", "arch": "tiny_logistic",
                                 "params": {"embedding_dim": 4}, "train": {"epochs": 1}})
    train_and_evaluate(store, card, 7, device="cpu", progress=True)
    assert "tiny seed 7 epoch 1/1" in capsys.readouterr().err


def test_a_misspelled_dataset_in_report_and_check_names_the_ones_there(work):
    """Before: "no run records for dataset(s) bokos" and "the baseline has no rows for bokos",
    with no word on what is there."""
    records = Path(__file__).resolve().parent / "fixtures" / "records"
    result = invoke("report", "--results", str(records), "--dataset", "bokos", "--out", "rep")
    assert result.exit_code == 1
    assert "(did you mean: books?)" in result.output
    assert "datasets with records there: books, electronics-dien" in result.output
    baseline = Path(__file__).resolve().parent.parent / "results" / "reference" / "ci-synthetic.csv"
    result = invoke("check", "--baseline", str(baseline), "--results", str(records),
                    "--dataset", "bokos")
    assert "its datasets: synthetic" in result.output, result.output
