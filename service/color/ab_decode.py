"""From the colorizer's 313-bin ab logits to full-resolution ab planes, and L to the working size.

Annealed mean (Zhang, Isola, Efros, ECCV 2016, eq. 5): H(Z) = E[f_T(Z)] with f_T(z) ∝ exp(log z / T).
With z = softmax(logits), log z = logits - logsumexp(logits), so f_T(z) = softmax(logits / T): one
softmax over the bin axis, then the expectation of the bin centres (`contract/assets/pts_in_hull.npy`, in
its a-major row order, the order of the network's 313 output channels).

Resizing: ab goes up with PyTorch's `F.interpolate(size=..., mode="bilinear", align_corners=False)`
semantics (the upsampling upstream applies); L goes to the working size with PIL's bicubic filter, which
widens its support when shrinking (antialiased), the filter upstream resized its input with.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

import contract
from service.errors import InvalidArgument

# Below this temperature the annealed mean is the mode, decoded as the argmax bin's centre. At T = 1e-3 a
# bin whose logit is 0.03 below the maximum already weighs exp(-30) ~ 1e-13 of it, far under float32
# resolution, so the two agree except at near-ties; and 1/T stays a safe float32 factor.
ARGMAX_BELOW_T = 1e-3
# Pixels per annealed-mean block: 313 x 1024 float32 (1.3 MB) stays in L2 through its five passes, where
# the whole 64 x 64 map (5 MB) would stream from L3 on each (measured 2-3x slower).
_ANNEAL_BLOCK = 1024
_LOWEST_EXPONENT = np.float32(-80.0)


@functools.cache
def ab_bins() -> NDArray[np.float32]:
    """The 313 ab bin centres, `(313, 2)` float32, in the network's channel order (read once)."""
    bins = np.load(contract.asset_path("pts_in_hull.npy")).astype(np.float32)
    if bins.shape != (contract.NUM_AB_BINS, 2):
        raise ValueError(f"pts_in_hull.npy has shape {bins.shape}, expected ({contract.NUM_AB_BINS}, 2)")
    bins.flags.writeable = False
    return bins


@functools.cache
def _expectation_matrix() -> NDArray[np.float32]:
    """Rows a, b and 1: one matrix product gives both weighted sums and the softmax denominator."""
    bins = ab_bins()
    matrix = np.vstack([bins[:, 0], bins[:, 1], np.ones(len(bins), np.float32)])
    matrix.flags.writeable = False
    return matrix


def annealed_mean(logits: NDArray[Any], temperature: float) -> NDArray[np.float32]:
    """Decode 313-bin logits to ab by the annealed mean at temperature T.

    Args:
        logits: `(N, 313, h, w)` float16 or float32 (the unnormalised scores before the softmax).
        temperature: T in (0, 1]. T = 1 is the plain softmax mean; T -> 0 tends to the mode, and
            T < `ARGMAX_BELOW_T` returns the mode (argmax bin; ties go to the lower bin index).

    Returns:
        `(N, 2, h, w)` float32 a and b in Lab units.

    Raises:
        InvalidArgument: T outside (0, 1].
    """
    if not 0.0 < temperature <= 1.0:  # also refuses NaN
        raise InvalidArgument(f"temperature must be in (0, 1], got {temperature!r}")
    if logits.ndim != 4 or logits.shape[1] != contract.NUM_AB_BINS:
        raise ValueError(f"logits must have shape (N, {contract.NUM_AB_BINS}, h, w), got {logits.shape}")
    n, bins, h, w = logits.shape
    flat = logits.reshape(n, bins, h * w)
    if temperature < ARGMAX_BELOW_T:
        centres = ab_bins()[np.argmax(flat, axis=1)]  # (N, hw, 2)
        return np.ascontiguousarray(centres.transpose(0, 2, 1)).reshape(n, 2, h, w)
    # Shift by the per-pixel maximum first: every exponent is then <= 0, so exp cannot overflow, and the
    # largest weight is exactly 1, so the denominator cannot underflow. All in float32, in place.
    scale = np.float32(1.0 / temperature)
    matrix = _expectation_matrix()
    sums = np.empty((n, 3, h * w), np.float32)  # per pixel: sum w*a, sum w*b, sum w
    for item in range(n):
        for start in range(0, h * w, _ANNEAL_BLOCK):
            block = slice(start, start + _ANNEAL_BLOCK)
            weights = _float32_copy(flat[item, :, block])
            weights -= weights.max(axis=0)
            weights *= scale
            # exp of an exponent under -87 is a subnormal float32, which x86 computes ~100x slower:
            # a spread of 33 logits at T = 0.38 reached it and made the decode 2.6x slower. Below
            # e^-80 = 2e-35 a weight cannot move a sum whose largest term is 1, so floor it there.
            np.maximum(weights, _LOWEST_EXPONENT, out=weights)
            np.exp(weights, out=weights)
            sums[item, :, block] = matrix @ weights
    return np.divide(sums[:, :2], sums[:, 2:]).reshape(n, 2, h, w)


def _float32_copy(values: NDArray[Any]) -> NDArray[np.float32]:
    """A float32 copy to work in. float16 goes through OpenCV's F16C conversion: numpy 1.26 converts
    half floats one at a time, 5x slower (float16 arithmetic in numpy is slower still)."""
    if values.dtype == np.float16:
        return np.asarray(cv2.convertFp16(values))
    return values.astype(np.float32)


def resize_ab(ab: NDArray[Any], size: tuple[int, int]) -> NDArray[np.float32]:
    """Bilinear resize of `(..., h, w)` planes to `size = (H, W)`.

    Same result as `torch.nn.functional.interpolate(ab, size=(H, W), mode="bilinear",
    align_corners=False)` (no antialiasing, also when shrinking), done as two dense weight-matrix
    products, `Wy @ ab @ Wx.T`, each matrix holding at most two non-zeros per row.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if ab.ndim < 2:
        raise ValueError(f"ab must have shape (..., h, w), got {ab.shape}")
    rows = _bilinear_weights(ab.shape[-2], height)
    cols = _bilinear_weights(ab.shape[-1], width)
    return rows @ (ab.astype(np.float32, copy=False) @ cols.T)


def upsample_ab(ab: NDArray[Any], size: tuple[int, int]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """`resize_ab` of `(2, h, w)` a and b planes by OpenCV's bilinear resize: the gateway's path.

    `cv2.INTER_LINEAR` uses the same half-pixel rule (src = (i + 0.5) * in / out - 0.5, clamped at the
    edges) but computes each source coordinate in float32, so it agrees with `resize_ab` (and torch) to
    ~1e-3 Lab units, not bit for bit; it is 4-5x faster, one pass over the output instead of two dense
    matrix products.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if ab.ndim != 3 or ab.shape[0] != 2:
        raise ValueError(f"ab must have shape (2, h, w), got {ab.shape}")
    planes = np.ascontiguousarray(ab, np.float32)
    a, b = (cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in planes)
    # OpenCV drops a length-1 axis it was asked for (e.g. (1, W) comes back as (W,)): restore it.
    return np.asarray(a).reshape(height, width), np.asarray(b).reshape(height, width)


@functools.lru_cache(maxsize=64)
def _bilinear_weights(size_in: int, size_out: int) -> NDArray[np.float32]:
    """`(size_out, size_in)` interpolation matrix, PyTorch's half-pixel rule (align_corners=False).

    Output pixel i samples the input at src = (i + 0.5) * in / out - 0.5, clamped at 0, between
    floor(src) and the next pixel (clamped to the last), with weight src - floor(src) on the latter
    (aten `area_pixel_compute_source_index`, `compute_source_index_and_lambda`). Rounded as aten's
    compiled CPU kernel rounds for float tensors, so the weights agree bit for bit: the scale is a
    float32 quotient, and `scale * (i + 0.5) - 0.5` is one fused multiply-add (a single rounding).
    """
    scale = np.float32(size_in) / np.float32(size_out)
    centres = np.arange(size_out, dtype=np.float32) + np.float32(0.5)
    # float32 x float32 is exact in float64, so this rounds once, like the FMA.
    src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32)
    np.maximum(src, np.float32(0.0), out=src)
    lower = src.astype(np.intp)  # src >= 0: truncation is floor
    upper = np.minimum(lower + 1, size_in - 1)
    frac = np.minimum(src - lower.astype(np.float32), np.float32(1.0))
    matrix = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    matrix[rows, lower] = np.float32(1.0) - frac
    matrix[rows, upper] += frac  # upper == lower at the last input pixel: the weights add to 1
    matrix.flags.writeable = False
    return matrix


def resize_l(l: NDArray[Any], size: tuple[int, int]) -> NDArray[np.float32]:  # noqa: E741
    """L plane `(H, W)` to `size = (h, w)` with PIL's bicubic filter, clipped back to [0, 100].

    Upstream (richzhang/colorization `util.py`) resizes the uint8 RGB input with PIL bicubic and then
    converts; resizing L itself avoids a second colour conversion, and the filter is the same (on an
    'F' image: float32, no rounding). Bicubic overshoots at edges, hence the clip. When shrinking, PIL
    widens the kernel by the scale factor, so fine detail is averaged, not aliased.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if l.ndim != 2:
        raise ValueError(f"L must have shape (H, W), got {l.shape}")
    if l.shape == (height, width):
        return np.array(l, np.float32)
    image = Image.fromarray(np.ascontiguousarray(l, np.float32))
    resized = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return np.clip(resized, 0.0, 100.0)
