"""User colour hints for SIGGRAPH17: validation and the hint/mask tensors at the working size.

A hint is a point of the input image (after EXIF orientation) with an sRGB colour. The working
image is the input resized to an S x S square (aspect not kept, as upstream), so a point maps to
(floor(y S / H), floor(x S / W)); its colour becomes ab (the colour's own Lab ab, as ideepcolor's
colour picker gives) over a patch_size x patch_size square there, and the mask is 1 on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.color import hint_spread, lab
from service.errors import InvalidArgument

MAX_HINTS = 1024
MAX_PATCH = 9  # the largest patch of the authors' hint simulation (sample_Ps = 1..9)


@dataclass(frozen=True)
class Hint:
    x: int
    y: int
    rgb: tuple[int, int, int]
    patch: int = 1


def validate(hints: tuple[Hint, ...], height: int, width: int) -> None:
    """Every hint inside the image, colours in 0..255, sane patch sizes; errors name the hint."""
    if len(hints) > MAX_HINTS:
        raise InvalidArgument(f"{len(hints)} hints given; at most {MAX_HINTS} are accepted")
    for i, hint in enumerate(hints):
        if not (0 <= hint.x < width and 0 <= hint.y < height):
            raise InvalidArgument(
                f"hint {i} at (x={hint.x}, y={hint.y}) is outside the {width}x{height} image"
            )
        if any(not 0 <= c <= 255 for c in hint.rgb):
            raise InvalidArgument(f"hint {i} colour {hint.rgb} is not sRGB: components must be in 0..255")
        if not 1 <= hint.patch <= MAX_PATCH:
            raise InvalidArgument(f"hint {i} patch_size {hint.patch} is not in 1..{MAX_PATCH}")


def to_working(x: int, y: int, height: int, width: int, size: int) -> tuple[int, int]:
    """Input-image pixel -> (row, column) of the size x size working image."""
    return min(size - 1, y * size // height), min(size - 1, x * size // width)


def working_patches(hints: tuple[Hint, ...], height: int, width: int, size: int) -> list[hint_spread.Patch]:
    """Each hint's square on the size x size working image, with its colour's Lab ab."""
    validate(hints, height, width)
    if not hints:
        return []
    colours = lab.srgb_to_lab(np.array([h.rgb for h in hints], np.uint8))
    patches = []
    for hint, colour in zip(hints, colours, strict=True):
        row, col = to_working(hint.x, hint.y, height, width, size)
        # Centred patch as in ideepcolor's GUI: [p - P//2, p + P//2] for odd P, clipped at the edges.
        top, left = row - hint.patch // 2, col - hint.patch // 2
        bottom, right = min(size, top + hint.patch), min(size, left + hint.patch)
        patches.append(
            hint_spread.Patch(max(0, top), max(0, left), bottom, right, float(colour[1]), float(colour[2]))
        )
    return patches


def hint_tensors(
    hints: tuple[Hint, ...], height: int, width: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """-> ab hints (1, 2, S, S) in Lab units and the 0/1 mask (1, 1, S, S), float32; later hints
    overwrite earlier ones where their patches overlap."""
    ab = np.zeros((1, 2, size, size), np.float32)
    mask = np.zeros((1, 1, size, size), np.float32)
    for p in working_patches(hints, height, width, size):
        ab[0, 0, p.top : p.bottom, p.left : p.right] = p.a
        ab[0, 1, p.top : p.bottom, p.left : p.right] = p.b
        mask[0, 0, p.top : p.bottom, p.left : p.right] = 1.0
    return ab, mask
