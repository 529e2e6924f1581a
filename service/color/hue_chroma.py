"""From Larsson16's hue and chroma distributions to ab planes at the network's resolution (numpy only).

The rules are gustavla/autocolorize `extraction.py` `calc_rgb_from_hue_chroma` and `color.py`
`match_lightness` (docs/colorization.md §4). Bin k of either 32-bin histogram is centred at
(k + 0.5) / 32 (hue in turns, chroma = max - min of RGB in [0, 1]).

- Chroma: `median` (default; the first bin whose CMF reaches 0.5), `q75` (reaches 0.75),
  `expectation` (mean of the bin centres), `mode` (the most likely bin's centre; upstream's mode
  drops the half-bin offset, here every rule returns a bin centre).
- Hue: `expectation-cf` (default): the circular expectation angle(Σ p_k e^{iθ_k}) / 2π mod 1 with
  chromatic fading, chroma x clip(|mean_k p_k e^{iθ_k}|, 0, 0.03) / 0.03, so an uncertain hue
  fades to gray; the mean over 32 bins is at most 1/32, so only a resultant length of 0.96 or
  more keeps the full chroma, as upstream. `expectation` is the same without fading; `mode` and
  `median` (linear, on [0, 1)) as for chroma.
- HSV with V = gray + c/2 and S = 2c / (2·gray + c) (so V - V(1 - S) = c), clipped to [0, 1],
  then `hsv2rgb`; finally the lightness is matched: rgb - mean_channels(rgb) + gray, clipped.

The gray level is upstream's network input, the sRGB value of the neutral colour with the pixel's
L (the graph converts L the same way, `colorizers/larsson16.py`). It is computed from the
working-size L and averaged over each stride x stride cell, since colour is decoded at H/4; the
result is converted to Lab and its ab recombined with the full-resolution L like the other models'.
"""

from __future__ import annotations

from typing import Any, Final

import cv2
import numpy as np
from numpy.typing import NDArray

from service.color import lab
from service.errors import InvalidArgument

HUE_METHODS: Final = ("expectation-cf", "expectation", "mode", "median")
CHROMA_METHODS: Final = ("median", "q75", "expectation", "mode")
HUE_DEFAULT: Final = "expectation-cf"  # upstream's defaults: c_method='median', h_method='expectation-cf'
CHROMA_DEFAULT: Final = "median"
FADING_LIMIT = 0.03  # upstream: factor = |mean p e^{iθ}|.clip(0, 0.03) / 0.03
_QUANTILE = {"median": 0.5, "q75": 0.75}

FloatArray = NDArray[np.float32]


def _normalised(hist: NDArray[Any], name: str) -> FloatArray:
    """(B, h, w) -> float32 with each pixel's distribution summing to 1 (FP16 leaves 1 ± 1e-3)."""
    if hist.ndim != 3:
        raise ValueError(f"{name} must have shape (bins, h, w), got {hist.shape}")
    out = _float32(hist)
    out /= np.maximum(out.sum(axis=0, keepdims=True), np.float32(1e-12))
    return out


def _float32(values: NDArray[Any]) -> FloatArray:
    """A float32 copy; float16 (the models' output) by OpenCV's F16C conversion, 20x numpy's."""
    if values.dtype == np.float16:
        return np.asarray(cv2.convertFp16(np.ascontiguousarray(values)), np.float32)
    return values.astype(np.float32)


def _centres(bins: int) -> FloatArray:
    return (np.arange(bins, dtype=np.float32) + np.float32(0.5)) / np.float32(bins)


def _quantile_bin(hist: FloatArray, q: float) -> NDArray[np.intp]:
    """Index of the first bin whose CMF reaches q (upstream: `(q > cumsum).sum(-1)`)."""
    # The CMF bin by bin, in cumsum's order (the same float32 sums): numpy's cumsum along the first
    # axis of (32, 64, 64) took 0.6 ms, this loop over whole planes 0.1 ms.
    threshold = np.float32(q)
    running = np.zeros(hist.shape[1:], np.float32)
    below = np.zeros(hist.shape[1:], np.intp)
    for plane in hist:
        running += plane
        below += running < threshold
    return np.minimum(below, hist.shape[0] - 1)


def chroma_from(hist: NDArray[Any], method: str = CHROMA_DEFAULT) -> FloatArray:
    """Chroma in [0, 1] per pixel from a `(32, h, w)` distribution, by `method` (CHROMA_METHODS)."""
    if method not in CHROMA_METHODS:
        raise InvalidArgument(f"chroma decode must be one of {list(CHROMA_METHODS)}, got {method!r}")
    p = _normalised(hist, "chroma")
    centres = _centres(p.shape[0])
    if method == "expectation":
        return np.tensordot(centres, p, axes=1)
    index = np.argmax(p, axis=0) if method == "mode" else _quantile_bin(p, _QUANTILE[method])
    return centres[index]


def hue_from(hist: NDArray[Any], method: str = HUE_DEFAULT) -> tuple[FloatArray, FloatArray]:
    """(hue in [0, 1), chroma factor in [0, 1]) per pixel from a `(32, h, w)` distribution.

    The factor is the chromatic fading of `expectation-cf` and 1 for every other method.
    """
    if method not in HUE_METHODS:
        raise InvalidArgument(f"hue decode must be one of {list(HUE_METHODS)}, got {method!r}")
    p = _normalised(hist, "hue")
    bins = p.shape[0]
    centres = _centres(bins)
    ones = np.ones(p.shape[1:], np.float32)
    if method == "mode":
        return centres[np.argmax(p, axis=0)], ones
    if method == "median":
        return centres[_quantile_bin(p, 0.5)], ones
    angles = np.float32(2 * np.pi) * centres
    resultant = np.tensordot(np.stack([np.cos(angles), np.sin(angles)]), p, axes=1)  # (2, h, w)
    hue = np.mod(np.arctan2(resultant[1], resultant[0]) / np.float32(2 * np.pi), np.float32(1.0))
    hue[hue >= 1.0] = 0.0  # mod of a tiny negative angle rounds up to 1.0 in float32
    if method == "expectation":
        return hue, ones
    length = np.hypot(resultant[0], resultant[1]) / np.float32(bins)  # |mean_k p_k e^{iθ_k}|
    return hue, np.clip(length, 0.0, FADING_LIMIT) / np.float32(FADING_LIMIT)


def hsv_to_rgb(hue: FloatArray, saturation: FloatArray, value: FloatArray) -> FloatArray:
    """HSV planes in [0, 1] -> `(h, w, 3)` RGB, the sector formula of skimage `hsv2rgb`."""
    sector = np.floor(hue * 6)
    f = hue * 6 - sector
    sector = sector.astype(np.intp) % 6
    p = value * (1 - saturation)
    q = value * (1 - f * saturation)
    t = value * (1 - (1 - f) * saturation)
    candidates = np.stack([value, t, p, q])  # indices 0..3 = v, t, p, q
    # Per sector (0..5), which candidate each channel takes: R = v q p p t v, G = t v v q p p, ...
    table = np.array([[0, 3, 2, 2, 1, 0], [1, 0, 0, 3, 2, 2], [2, 2, 1, 0, 0, 3]])
    rgb = [np.take_along_axis(candidates, table[c][sector][None], axis=0)[0] for c in range(3)]
    return np.stack(rgb, axis=-1).astype(np.float32, copy=False)


def decode_rgb(
    hue_hist: NDArray[Any],
    chroma_hist: NDArray[Any],
    gray: NDArray[Any],
    *,
    hue_method: str = HUE_DEFAULT,
    chroma_method: str = CHROMA_DEFAULT,
) -> FloatArray:
    """Distributions `(32, h, w)` x 2 and gray `(h, w)` in [0, 1] -> `(h, w, 3)` sRGB in [0, 1]."""
    if gray.shape != hue_hist.shape[1:] or gray.shape != chroma_hist.shape[1:]:
        raise ValueError(
            f"hue {hue_hist.shape}, chroma {chroma_hist.shape} and gray {gray.shape} must share (h, w)"
        )
    gray = np.asarray(gray, np.float32)
    hue, factor = hue_from(hue_hist, hue_method)
    chroma = chroma_from(chroma_hist, chroma_method) * factor
    value = gray + chroma / 2
    denominator = 2 * gray + chroma
    # 0/0 at black with no chroma: no saturation (upstream would produce NaN there).
    saturation = np.divide(2 * chroma, denominator, out=np.zeros_like(chroma), where=denominator > 0)
    rgb = hsv_to_rgb(np.clip(hue, 0, 1), np.clip(saturation, 0, 1), np.clip(value, 0, 1))
    np.clip(rgb, 0, 1, out=rgb)
    rgb += (gray - rgb.mean(axis=-1))[..., None]  # match_lightness
    return np.clip(rgb, 0, 1, out=rgb)


def l_to_gray(lightness: NDArray[Any]) -> FloatArray:
    """L `(H, W)` in [0, 100] -> the sRGB gray level in [0, 1] of the neutral colour (L, 0, 0)."""
    return lab.neutral_gray(np.asarray(lightness, np.float32))


def pool_to(plane: FloatArray, size: tuple[int, int]) -> FloatArray:
    """Mean over each stride x stride cell of `(H, W)`, giving `size` = (H // stride, W // stride)."""
    height, width = size
    stride = plane.shape[0] // height
    if stride < 1 or plane.shape[1] // width != stride:
        raise ValueError(f"cannot pool {plane.shape} to {size} with one integer stride")
    cells = plane[: height * stride, : width * stride].reshape(height, stride, width, stride)
    return cells.mean(axis=(1, 3), dtype=np.float32)


def decode_ab(
    hue_hist: NDArray[Any],
    chroma_hist: NDArray[Any],
    lightness: NDArray[Any],
    *,
    hue_method: str = HUE_DEFAULT,
    chroma_method: str = CHROMA_DEFAULT,
    gray: NDArray[Any] | None = None,
) -> FloatArray:
    """Larsson16's `(32, h, w)` hue and chroma distributions and the working-size L `(S, S')` it
    saw -> `(2, h, w)` float32 a and b in Lab units, at the distributions' resolution.

    `gray`, if given, is `l_to_gray(lightness)` computed elsewhere (the gateway's fused kernel)."""
    full_gray = l_to_gray(lightness) if gray is None else gray
    gray = pool_to(full_gray, (hue_hist.shape[1], hue_hist.shape[2]))
    rgb = decode_rgb(hue_hist, chroma_hist, gray, hue_method=hue_method, chroma_method=chroma_method)
    return np.ascontiguousarray(lab.srgb_to_lab(rgb)[..., 1:].transpose(2, 0, 1))
