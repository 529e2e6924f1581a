"""The `priorlab` command: every command reaches its module's own `main`, and the help lists them all."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from priorlab.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in listed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_a_main_taking_argv(name: str) -> None:
    entry = importlib.import_module(COMMANDS[name].module).main
    assert entry.__code__.co_varnames[:1] == ("argv",)


def test_a_command_gets_its_own_modules_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["colorize", "--help"])
    assert exit_info.value.code == 0
    assert "--hint" in capsys.readouterr().out, "the client's colorize options"


def test_an_unknown_command_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["colourise"]) == 2
    assert "'colourise'" in capsys.readouterr().err


def test_the_installed_command_runs_this_checkout() -> None:
    script = Path(sys.executable).parent / "priorlab"
    assert script.is_file(), "make deps installs the priorlab command into the venv"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd="/", check=True)
    assert "restore-local" in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import priorlab; print(priorlab.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert where.stdout.strip().startswith(str(REPO)), where.stdout
