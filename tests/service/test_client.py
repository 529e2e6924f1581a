from __future__ import annotations

import argparse
from pathlib import Path

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


def test_restore_sends_its_idempotency_key(tmp_path: Path) -> None:
    from service.client import build_parser, restore_request

    image = tmp_path / "in.png"
    image.write_bytes(b"not decoded by the client")
    args = build_parser().parse_args(
        ["restore", "denoise", str(image), str(tmp_path / "out.png"), "--idempotency-key", "retry-7"]
    )
    assert restore_request(args).idempotency_key == "retry-7"
