"""docs/results.md calls its runs "the defaults": every flag it spells out must be one."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer.main

from mta.cli.app import app

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"
# Flags that choose what to run or where to write, not how to train: no default to match.
PER_RUN = {"--task", "--methods", "--seed", "--json-out", "--checkpoint", "--decode", "--plot"}


def _commands(text: str, prefix: str) -> list[list[str]]:
    """Each `prefix ...` command of the fenced blocks, continuation lines joined."""
    found, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if current:
            current += " " + stripped.rstrip("\\")
            if not stripped.endswith("\\"):
                found.append(current)
                current = ""
        elif stripped.startswith(prefix + " "):
            current = stripped.rstrip("\\")
            if not stripped.endswith("\\"):
                found.append(current)
                current = ""
    return [shlex.split(command.replace("$S", "0").replace("$s", "0")) for command in found]


def _defaults(*path: str) -> dict[str, object]:
    """Option name -> default of the `mta` subcommand at `path`."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # a group's subcommands
    return {opt: param.default for param in command.params for opt in param.opts}


def _check(argv: list[str], defaults: dict[str, object]) -> list[str]:
    """The flags of `argv` whose value is not the command's default."""
    wrong = []
    for i, word in enumerate(argv):
        if not word.startswith("--") or word in PER_RUN:
            continue
        value = argv[i + 1]
        default = defaults[word]
        if isinstance(default, float):
            same = float(value) == default
        else:
            same = str(value) == str(getattr(default, "value", default))
        if not same:
            wrong.append(f"{word} {value} (default {default})")
    return wrong


def test_every_documented_eval_run_uses_the_cli_defaults() -> None:
    commands = _commands(RESULTS.read_text(encoding="utf-8"), "mta eval")
    assert len(commands) >= 3
    defaults = _defaults("eval")
    for argv in commands:
        assert not _check(argv, defaults), " ".join(argv)


def test_bank_build_trains_anchors_at_the_evaluation_rate() -> None:
    assert _defaults("bank", "build")["--lr"] == _defaults("eval")["--lr"] == 1e-3
