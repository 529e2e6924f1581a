"""Image quality against a reference: PSNR, for training, benchmarks and tests alike (numpy only).

* `psnr`    peak signal-to-noise ratio of two images of one shape, 8-bit or float
* `psnr_y`  the super-resolution papers' PSNR: luma (BT.601, studio range) only, a border shaved off
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

SR_BORDER = 4  # px shaved off each side by psnr_y: the DIP authors' x4 super-resolution protocol


def psnr(a: NDArray[np.generic], b: NDArray[np.generic], peak: float | None = None) -> float:
    """PSNR in dB: 10·log10(peak² / MSE), computed in float64; inf when the images are equal.

    `peak` is the largest value a pixel can take. Left out, it follows the dtype both images share:
    the dtype's maximum for integers (255 for uint8), 1.0 for floats of any width (images in
    [0, 1]). An integer image against an image of another dtype needs it given: nothing says which
    range they share.
    """
    if a.shape != b.shape:
        raise ValueError(f"PSNR of images of different shapes: {a.shape} and {b.shape}")
    if peak is None:
        peak = _peak(a.dtype, b.dtype)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10 * math.log10(peak * peak / mse)


def psnr_y(a: NDArray[np.generic], b: NDArray[np.generic], border: int = SR_BORDER) -> float:
    """PSNR of the luma of two (H, W, 3) RGB images, `border` px shaved off each side.

    Luma is Y of YCbCr as MATLAB's rgb2ycbcr computes it: BT.601 weights, studio range 16-235 of 255
    (peak 255 on that scale). This is what the super-resolution literature reports, so the DIP numbers
    compare with the papers'. Integer images are read as 0..dtype max, float images as 0..1.
    """
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"psnr_y needs two (H, W, 3) images of one shape, not {a.shape} and {b.shape}")
    crop = (slice(border, -border), slice(border, -border)) if border > 0 else (slice(None), slice(None))
    return psnr(_luma(a)[crop], _luma(b)[crop], peak=255.0)


def _luma(rgb: NDArray[np.generic]) -> NDArray[np.float64]:
    unit = rgb.astype(np.float64)
    if np.issubdtype(rgb.dtype, np.integer):
        unit /= np.iinfo(rgb.dtype.name).max
    full = unit[..., 0] * 0.299 + unit[..., 1] * 0.587 + unit[..., 2] * 0.114
    return 16.0 + 219.0 * full


def _peak(a: np.dtype[np.generic], b: np.dtype[np.generic]) -> float:
    if np.issubdtype(a, np.floating) and np.issubdtype(b, np.floating):
        return 1.0
    if a == b and np.issubdtype(a, np.integer):
        return float(np.iinfo(a.name).max)
    raise TypeError(f"PSNR of a {a} and a {b} image: give the peak value")
