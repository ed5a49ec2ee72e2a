"""The `kvplan` entry point: each command line builds only its own part, help is plain and
light, and every usage error is one line with exit code 2."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import typer
from support.cli import kvplan

from kvplan import cli


def test_the_command_table_matches_what_each_part_registers() -> None:
    for module in dict.fromkeys(cli.COMMANDS.values()):
        app = typer.Typer()
        app.callback()(lambda: None)
        importlib.import_module(module).register(app)
        names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
        assert names == {k for k, v in cli.COMMANDS.items() if v == module}, module


def test_help_lists_every_command_without_rich() -> None:
    code = (
        "import sys\nfrom kvplan.cli import main\nsys.argv = ['kvplan', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('EXIT', code, 'RICH', 'rich' in sys.modules, file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "EXIT 0 RICH False" in run.stderr, run.stderr
    listed = {line.split()[0] for line in run.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(cli.COMMANDS)


@pytest.mark.parametrize("command", ["serve", "demo", "flags set-weight", "deploy render", "worker sim"])
def test_each_part_has_its_help(command: str) -> None:
    run = kvplan(*command.split(), "--help")
    assert run.returncode == 0 and run.stdout.startswith(f"Usage: kvplan {command} "), run.stdout + run.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["flags", "set-weight", "--bucket", "8k", "--weight", "abc"], "Invalid value for '--weight'"),
        (["flags", "set-weight", "--bucket", "8k"], "Missing option '--weight'"),
        (["deploy", "render", "--out", "x"], "Missing option '--plan'"),
        (["bogus"], "No such command 'bogus'"),
        (["flags", "kill", "--bogus"], "No such option: --bogus"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], reason: str) -> None:
    run = kvplan(*args)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
    assert reason in run.stderr and run.stdout == ""
