"""Input normalisation and reflection padding to the network's size multiple (numpy only).

The reference crops images to a multiple of 32 and crashes below 64 px (REF issue #57); we pad instead,
by reflection (repeated when the pad exceeds the side), centred, and crop the same box off the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_T = TypeVar("_T", bound=np.generic)


def as_float_image(image: NDArray[np.generic]) -> NDArray[np.float32]:
    """(H, W) or (H, W, C), C in {1, 3}: uint8, uint16, or float in [0, 1] -> float32 (H, W, C) in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(
            f"image must be (H, W), (H, W, 1) or (H, W, 3); got shape {np.asarray(image).shape} "
            "(carry an alpha channel around the engine)"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image is empty, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image dtype must be uint8, uint16 or float in [0, 1], got {arr.dtype}")
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError("image contains NaN or inf")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"float image must be in [0, 1], got values in [{lo}, {hi}]")
    return out


@dataclass(frozen=True)
class Padding:
    """Rows/columns added before and after each side of an (H, W) image."""

    top: int
    bottom: int
    left: int
    right: int

    def apply(self, arr: NDArray[_T]) -> NDArray[_T]:
        """Reflect-pad the first two axes of (H, W, ...) `arr`."""
        for axis, (before, after) in enumerate(((self.top, self.bottom), (self.left, self.right))):
            widths = [(0, 0)] * arr.ndim
            widths[axis] = (before, after)
            # A 1-px side has nothing to reflect about; repeating it is the only sensible extension.
            arr = np.pad(arr, widths, mode="symmetric" if arr.shape[axis] == 1 else "reflect")
        return arr

    def crop(self, arr: NDArray[_T], scale: int = 1) -> NDArray[_T]:
        """Undo `apply` on (H', W', ...) `arr`, whose sides are `scale` times the padded ones."""
        h = arr.shape[0] - scale * (self.top + self.bottom)
        w = arr.shape[1] - scale * (self.left + self.right)
        return arr[scale * self.top : scale * self.top + h, scale * self.left : scale * self.left + w]


def _split(size: int, multiple: int, minimum: int) -> tuple[int, int]:
    target = max(minimum, -(-size // multiple) * multiple)
    total = target - size
    return total // 2, total - total // 2


def padding_for(height: int, width: int, multiple: int, minimum: int) -> Padding:
    """The centred padding that takes (height, width) to multiples of `multiple`, each side >= `minimum`.

    >>> padding_for(40, 33, 32, 64)
    Padding(top=12, bottom=12, left=15, right=16)
    """
    if multiple < 1 or minimum < 1:
        raise ValueError(f"multiple and minimum must be positive, got {multiple}, {minimum}")
    top, bottom = _split(height, multiple, minimum)
    left, right = _split(width, multiple, minimum)
    return Padding(top, bottom, left, right)
