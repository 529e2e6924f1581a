from __future__ import annotations

import argparse

import pytest

from service.client import parse_hint


def test_hint_syntax() -> None:
    hint = parse_hint("120,80,#3060e0,5")
    assert (hint.x, hint.y, hint.patch_size) == (120, 80, 5)
    assert (hint.color.r, hint.color.g, hint.color.b) == (0x30, 0x60, 0xE0)
    assert parse_hint("1,2,#000000").patch_size == 1


@pytest.mark.parametrize("text", ["1,2", "1,2,3060e0", "a,2,#3060e0", "1,2,#zz60e0", "1,2,#3060e0,big"])
def test_bad_hint_syntax_names_the_hint(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=text):
        parse_hint(text)
