from __future__ import annotations

import numpy as np
import pytest
from skimage import color

from service.color.hints import MAX_HINTS, Hint, hint_tensors, to_working, validate
from service.errors import InvalidArgument


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [(0, 0, (0, 0)), (899, 674, (255, 255)), (450, 0, (0, 128)), (0, 337, (127, 0))],
)
def test_input_pixels_map_to_the_working_square(x: int, y: int, expected: tuple[int, int]) -> None:
    assert to_working(x, y, 675, 900, 256) == expected


def test_hint_colour_becomes_its_lab_ab_on_a_centred_patch() -> None:
    hint = Hint(x=50, y=20, rgb=(200, 40, 30), patch=3)
    ab, mask = hint_tensors((hint,), height=100, width=200, size=64)
    row, col = to_working(50, 20, 100, 200, 64)
    assert (row, col) == (12, 16)
    expected = color.rgb2lab(np.array([[[200, 40, 30]]], np.uint8))[0, 0, 1:]
    np.testing.assert_allclose(ab[0, :, row, col], expected, atol=1e-3)
    assert mask.sum() == 9 and mask[0, 0, 11:14, 15:18].all()
    assert np.count_nonzero(ab[0, 0]) == 9


def test_patches_are_clipped_at_the_edges_and_empty_hints_give_zeros() -> None:
    ab, mask = hint_tensors((Hint(0, 0, (0, 0, 255), patch=5),), height=64, width=64, size=64)
    assert mask.sum() == 9  # 3 x 3 of the 5 x 5 patch lies inside
    ab, mask = hint_tensors((), height=64, width=64, size=32)
    assert ab.shape == (1, 2, 32, 32) and mask.shape == (1, 1, 32, 32)
    assert not ab.any() and not mask.any()


@pytest.mark.parametrize(
    ("hint", "needle"),
    [
        (Hint(200, 5, (1, 2, 3)), "hint 0 at (x=200, y=5) is outside the 200x100 image"),
        (Hint(-1, 5, (1, 2, 3)), "x=-1"),
        (Hint(5, 100, (1, 2, 3)), "y=100"),
        (Hint(5, 5, (256, 0, 0)), "hint 0 colour (256, 0, 0)"),
        (Hint(5, 5, (1, 2, 3), patch=10), "patch_size 10"),
        (Hint(5, 5, (1, 2, 3), patch=0), "patch_size 0"),
    ],
)
def test_bad_hints_are_named(hint: Hint, needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate((hint,), height=100, width=200)
    assert needle in str(info.value)


def test_too_many_hints_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=str(MAX_HINTS)):
        validate(tuple(Hint(0, 0, (0, 0, 0)) for _ in range(MAX_HINTS + 1)), height=10, width=10)
