"""`ctrbench plan`: one self-contained `ctrbench run` command line per run, for a user's own
scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ctrbench.runs.runner import RunSpec


def _shell_word(word: str) -> str:
    """``word`` quoted for bash: :func:`shlex.quote`, or ``$'...'`` when it holds a control
    character (a newline would split a plan's one-command line in two)."""
    import shlex

    if not any(ord(c) < 32 or ord(c) == 127 for c in word):
        return shlex.quote(word)
    escaped = "".join("\\\\" if c == "\\" else "\\'" if c == "'"
                      else f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c
                      for c in word)
    return f"$'{escaped}'"


def plan_commands(specs: Sequence[RunSpec], *, results_root: Path, device: str,
                  config_file: Path | None, set_items: Sequence[str],
                  epochs: int | None, force: bool = False) -> list[str]:
    """One self-contained ``ctrbench run`` command line per spec (bash syntax: one line each,
    whatever the values hold)."""
    commands = []
    for spec in specs:
        parts = ["ctrbench", "run", "--models", spec.model, "--dataset", spec.dataset,
                 "--seed-list", str(spec.seed), "--results", str(Path(results_root).resolve()),
                 "--device", device]
        if epochs is not None:
            parts += ["--epochs", str(epochs)]
        if force:
            parts.append("--force")
        if config_file is not None:
            parts += ["--config", str(Path(config_file).resolve())]
        for item in set_items:
            key = item.split("=", 1)[0]
            if ":" not in key or key.split(":", 1)[0] == spec.model:
                parts += ["--set", item]
        commands.append(" ".join(_shell_word(part) for part in parts))
    return commands
