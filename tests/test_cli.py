"""The `whaleid` program: every command has help, user errors are one line with no traceback."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from app.cli import COMMANDS, main


def whaleid(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert name in out and command.help in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: whaleid {name}")
    module = importlib.import_module(COMMANDS[name].module)
    assert not undocumented(module.build_parser(f"whaleid {name}"))


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Options and arguments (of subcommands too) that have no help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                missing += undocumented(sub)
        elif not action.help and not isinstance(action, argparse._HelpAction):
            missing.append(f"{parser.prog}: {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_unknown_command_is_a_usage_error() -> None:
    result = whaleid("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_user_error_is_one_line_without_traceback(tmp_path) -> None:
    result = whaleid("evaluate", "--run", str(tmp_path / "no-such-run"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("whaleid evaluate: error:")
    assert "no-such-run" in lines[0]
    assert "Traceback" not in result.stderr
