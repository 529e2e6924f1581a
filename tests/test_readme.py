"""The README's client command lines against the client's real argument parser, so they cannot drift."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from service.client import build_parser
from tests.readme import CLIENT, client_commands

REPO = Path(__file__).resolve().parents[1]


def test_every_client_command_in_the_readme_parses_and_its_inputs_are_in_the_repository() -> None:
    commands = client_commands(REPO / "README.md")
    assert {c.split()[1] for c in commands} >= {"colorize", "suggest", "restore", "watch", "cancel"}
    for command in commands:
        # As bash reads it: a comment starts at a word's start only (`#RRGGBB` inside a hint is no comment).
        words = shlex.split(re.sub(r"(^|\s)#.*$", "", command.removeprefix(CLIENT)))
        args = build_parser().parse_args(words)
        for name in ("input", "mask"):
            path = getattr(args, name, None)
            if path is not None:
                assert not path.is_absolute() and (REPO / path).is_file(), (
                    f"{command}: {path} is not in the repo"
                )
        output = getattr(args, "output", None)
        if output is not None:
            assert str(output).startswith("/tmp/"), f"{command}: write outputs to /tmp, not into the checkout"


def test_the_try_it_section_covers_the_first_hour() -> None:
    verbs = [c.split()[1] for c in client_commands(REPO / "README.md", section="Try it")]
    assert {"colorize", "suggest", "restore"} <= set(verbs), verbs
