"""sRGB (D65) <-> CIE Lab for the gateway: numpy only, vectorised, float32 where that is accurate enough.

Formulas and constants are scikit-image's `skimage.color.rgb2lab` / `lab2rgb` (illuminant D65, 2°
observer; `skimage/color/colorconv.py`, 0.26), which made the L the colorizers were trained on
(richzhang/colorization `colorizers/util.py`). The float paths agree with skimage to <= 1e-3.

Where the speed comes from:

- each piecewise curve is evaluated without masks: the smooth branch on max(x, knee) plus the linear
  branch's excess min(x, knee) - knee. skimage's constants leave the branches apart by at most 3.3e-7
  at a knee (the Lab f curve), i.e. <= 2e-4 in a* or b*; nothing else differs;
- powers are exp(p * log x), by cv2.log and cv2.exp: 2.9x faster than numpy's SIMD exp and log (within
  4e-7 of the exact power), which are 2-4x faster than float32 pow or cbrt;
- the knees' min and max are cv2 passes too: numpy 1.26's maximum and minimum against a scalar do not
  vectorise (3.3x slower than `cv2.max`; `cv2.threshold`'s truncation, for min and for the [0, 1] clamp,
  is 4.5x faster still). Together with the line above: Lab -> sRGB 10.7 -> 5.5 ms and sRGB -> Lab 14.0 ->
  8.5 ms (float32, 1024²). One trap: beside a scalar, the binding reads an array of 1 or 4 elements as a
  second scalar and answers wrongly, so arrays that small take numpy (`_raise_to`);
- integer images skip the sRGB curve with a lookup table, and the uint8 output quantises linear values
  against precomputed thresholds instead of raising every pixel to 1/2.4;
- Lab -> sRGB floats work interleaved: Lab -> f and XYZ -> linear RGB are one `cv2.transform` pass
  each, writing into the output (13.7 -> 10.8 ms at 1024², against nine scaled adds a matrix on planes
  and a strided gather); the uint8 path takes separate planes, and there the 3x3 matrix is nine scaled
  adds on contiguous planes;
- uint8 sRGB -> L (the gateway's decode path) takes Y's three per-channel lookups in one `cv2.LUT` and
  their sum in one `cv2.transform`: 1.3x faster than three `np.take` and two adds (bench/results/
  gateway_overhead.md), the same float32 sums. The same fusion of Lab -> uint8 sRGB (cv2.merge,
  cv2.transform, cv2.addWeighted) measured no faster than these numpy passes, so that path stays numpy.

Arrays are channel-last `(..., 3)`. float64 input is computed (and returned) in float64; float16/32 and
uint8/uint16 input in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

# sRGB primaries -> CIE XYZ (D65), from the sRGB specification: skimage `colorconv.xyz_from_rgb`.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# CIE XYZ of the D65 white point, 2° observer: skimage `_illuminants["D65"]["2"]`.
_WHITE = (0.95047, 1.0, 1.08883)
# XYZ / white straight from linear RGB: the white point folded into the matrix rows.
_XYZN_FROM_RGB = tuple(tuple(c / w for c in row) for row, w in zip(_XYZ_FROM_RGB, _WHITE, strict=True))

# sRGB transfer curve as skimage writes it (IEC 61966-2-1): linear below the knee, a 2.4 power above.
_SRGB_KNEE = 0.04045  # encoded value at the knee
_LINEAR_KNEE = 0.0031308  # linear value at the knee
_SRGB_SLOPE = 12.92
_SRGB_OFFSET = 0.055
_SRGB_GAMMA = 2.4

# CIE Lab companding f(t), skimage's constants: cube root above (6/29)^3, 7.787 t + 16/116 below.
_LAB_EPSILON = 0.008856
_LAB_KAPPA = 7.787
_LAB_OFFSET = 16.0 / 116.0
_LAB_F_KNEE = 0.2068966  # f at the knee (6/29), where lab2rgb switches from the cube to the line

# uint8 output: linear values are bucketed by floor(lin * 4096). A bucket (2.4e-4 wide) is narrower than
# the smallest gap between two uint8 decision thresholds (1/255/12.92 = 3.0e-4, in the linear segment),
# so it holds at most one threshold and one comparison finishes the rounding.
_QUANT_BUCKETS = 4096

# Pixels per block: big enough that the per-call overhead vanishes, small enough for temporaries in L2.
_BLOCK = 1 << 16

# cv2.max's per-channel scalar that clamps only the third channel of interleaved (n, 1, 3) f at 0.
_ZERO_FZ_ONLY = (-np.inf, -np.inf, 0.0, 0.0)

FloatArray = NDArray[np.floating[Any]]


def srgb_to_lab(rgb: NDArray[Any]) -> FloatArray:
    """sRGB (D65) to CIE Lab, as `skimage.color.rgb2lab`.

    Args:
        rgb: `(..., 3)`; float in [0, 1] (values outside are extrapolated, as skimage does), or uint8 /
            uint16 codes (full range, read through a lookup table).

    Returns:
        `(..., 3)` L in [0, 100], a and b roughly in [-128, 127]; float64 for float64 input, else float32.
    """
    pixels = _pixels(rgb, "rgb")
    lab = np.empty(pixels.shape, _work_dtype(rgb.dtype))
    for block in _blocks(len(pixels)):
        fx, fy, fz = _mix(_XYZN_FROM_RGB, *_linear_planes(pixels[block]))
        for f in (fx, fy, fz):
            _lab_f(f)
        out = lab[block]
        fx -= fy
        np.multiply(fx, 500.0, out=out[:, 1])
        fz -= fy
        np.multiply(fz, -200.0, out=out[:, 2])
        fy *= 116.0
        np.subtract(fy, 16.0, out=out[:, 0])
    return lab.reshape(rgb.shape)


def srgb_to_l(rgb: NDArray[Any]) -> FloatArray:
    """Only the L channel of `srgb_to_lab(rgb)`, from the luminance Y alone (one cube root per pixel).

    Args:
        rgb: `(..., 3)`, as for `srgb_to_lab`.

    Returns:
        `(...)` L in [0, 100].
    """
    if rgb.dtype == np.uint8 and rgb.ndim >= 2:
        return _srgb8_to_l(rgb)
    pixels = _pixels(rgb, "rgb")
    l = np.empty(len(pixels), _work_dtype(rgb.dtype))  # noqa: E741 (the channel's name)
    luts = _luminance_luts(_levels(rgb.dtype)) if rgb.dtype.kind == "u" else None
    for block in _blocks(len(pixels)):
        if luts is None:
            (y,) = _mix((_XYZN_FROM_RGB[1],), *_linear_planes(pixels[block]))
        else:
            y = np.take(luts[0], pixels[block, 0])
            y += np.take(luts[1], pixels[block, 1])
            y += np.take(luts[2], pixels[block, 2])
        l[block] = _l_from_y(y)
    return l.reshape(rgb.shape[:-1])


def _srgb8_to_l(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """`srgb_to_l` of uint8 sRGB: Y's three lookups in one `cv2.LUT`, their sum in one `cv2.transform`."""
    _check_channels(rgb, "rgb")
    pixels = rgb.reshape(-1, 1, 3)  # OpenCV's view: a column of 3-channel pixels
    l = np.empty(len(pixels), np.float32)  # noqa: E741
    shares = _luminance_lut3()
    for block in _blocks(len(pixels)):
        y = cv2.transform(cv2.LUT(pixels[block], shares), _ONES_ROW)
        l[block] = _l_from_y(np.asarray(y, np.float32).reshape(-1))
    return l.reshape(rgb.shape[:-1])


_ONES_ROW = np.ones((1, 3), np.float32)


@functools.cache
def _luminance_lut3() -> NDArray[np.float32]:
    """`_luminance_luts(256)` as one 256-entry, 3-channel table for `cv2.LUT`."""
    lut = np.ascontiguousarray(np.stack(_luminance_luts(256), axis=-1).reshape(1, 256, 3))
    lut.flags.writeable = False
    return lut


def gray_to_l(gray: NDArray[Any]) -> FloatArray:
    """L of neutral grays (R = G = B = gray), e.g. a grayscale image; uint8/uint16 via one lookup.

    Args:
        gray: `(...)` float in [0, 1], or uint8 / uint16 codes.

    Returns:
        `(...)` L in [0, 100], equal to `srgb_to_l` of the gray tiled to three channels.
    """
    if gray.dtype.kind == "u":
        return np.take(_gray_l_lut(_levels(gray.dtype)), gray)
    if gray.dtype.kind != "f":
        raise TypeError(f"gray must be float or uint8/uint16, got {gray.dtype}")
    dtype = _work_dtype(gray.dtype)
    values = gray.reshape(-1)
    l = np.empty(len(values), dtype)  # noqa: E741
    for block in _blocks(len(values)):
        # The Y row of the sRGB matrix sums to 1, so Y of a neutral gray is its linear value.
        l[block] = _l_from_y(_decode(np.array(values[block], dtype)))
    return l.reshape(gray.shape)


def lab_to_srgb(lab: NDArray[Any], *, clip: bool = True) -> FloatArray:
    """CIE Lab to sRGB (D65), as `skimage.color.lab2rgb` (without its warning about negative Z).

    Args:
        lab: `(..., 3)` float, L in [0, 100].
        clip: clamp to [0, 1] (the gamut clamp skimage applies); False keeps out-of-gamut values.

    Returns:
        `(..., 3)` sRGB; float64 for float64 input, else float32.
    """
    pixels = _pixels(lab, "lab")
    dtype = _work_dtype(lab.dtype)
    rgb = np.empty(pixels.shape, dtype)
    f_from_lab, rgb_from_f = _f_from_lab(), np.array(_rgb_from_xyzn())
    for block in _blocks(len(pixels)):
        # Interleaved, so each 3x3 (affine) step is one cv2.transform pass and the result lands in place.
        lab_block = np.ascontiguousarray(pixels[block], dtype).reshape(-1, 1, 3)
        f = np.asarray(cv2.transform(lab_block, f_from_lab), dtype)  # no copy: already `dtype`
        _clamp_fz(f)
        _lab_f_inverse(f.reshape(-1))
        linear = rgb[block].reshape(-1, 1, 3)
        cv2.transform(f, rgb_from_f, dst=linear)
        encoded = _encode(linear.reshape(-1))
        if clip:
            _clamp(encoded)
    return rgb.reshape(lab.shape)


def neutral_gray(l: NDArray[Any]) -> FloatArray:  # noqa: E741 (the channel's name)
    """The sRGB gray level of the neutral colour (L, 0, 0): `lab_to_srgb` of it, averaged over channels.

    With a = b = 0, X/Xn = Y/Yn = Z/Zn, so each linear channel is Y times its row of the matrix summed
    (each sum is 1 to 1e-6): no 3x3 product, and one L -> Y inversion instead of three.

    Args:
        l: `(...)` float L in [0, 100].

    Returns:
        `(...)` gray level in [0, 1]; float64 for float64 input, else float32.
    """
    dtype = _work_dtype(l.dtype)
    values = l.reshape(-1)
    gray = np.empty(len(values), dtype)
    row_sums = [sum(row) for row in _rgb_from_xyzn()]
    for block in _blocks(len(values)):
        y = np.add(values[block], 16.0, dtype=dtype)
        y *= 1.0 / 116.0
        _lab_f_inverse(y)
        total = np.zeros_like(y)
        for row_sum in row_sums:
            channel = _encode(y * row_sum)
            _clamp(channel)
            total += channel
        gray[block] = total / 3.0
    return gray.reshape(l.shape)


def lab_to_srgb_uint8(lab: NDArray[Any]) -> NDArray[np.uint8]:
    """CIE Lab `(..., 3)` to gamut-clamped uint8 sRGB: `round(255 * lab_to_srgb(lab))` (see below)."""
    _check_channels(lab, "lab")
    return lab_planes_to_srgb_uint8(lab[..., 0], lab[..., 1], lab[..., 2])


def lab_planes_to_srgb_uint8(
    l: NDArray[Any],  # noqa: E741 (the channel's name)
    a: NDArray[Any],
    b: NDArray[Any],
) -> NDArray[np.uint8]:
    """Separate L, a, b planes (the gateway's layout: full-res L, upsampled ab) to uint8 sRGB.

    Args:
        l, a, b: float arrays of one shape `(...)`.

    Returns:
        `(..., 3)` uint8: per channel, `round(255 * clip(srgb, 0, 1))` (half up) of the linear value
        computed in the input's float precision, exactly, with no power per pixel.
    """
    if not l.shape == a.shape == b.shape:
        raise ValueError(f"L, a and b planes must have one shape, got {l.shape}, {a.shape}, {b.shape}")
    dtype = _work_dtype(np.result_type(l, a, b))
    base, threshold = _uint8_quantizer(np.dtype(dtype).str)
    l_flat, a_flat, b_flat = l.reshape(-1), a.reshape(-1), b.reshape(-1)
    rgb = np.empty((len(l_flat), 3), np.uint8)
    for block in _blocks(len(l_flat)):
        planes = _linear_from_lab(l_flat[block], a_flat[block], b_flat[block], dtype)
        for channel, linear in enumerate(planes):
            # Bucket index; the float clamp first, so out-of-gamut values cannot overflow the cast.
            scaled = linear * float(_QUANT_BUCKETS)
            _clamp(scaled, _QUANT_BUCKETS - 1.0)
            bucket = scaled.astype(np.intp)
            np.add(np.take(base, bucket), linear >= np.take(threshold, bucket), out=rgb[block, channel])
    return rgb.reshape((*l.shape, 3))


# ---- internals -------------------------------------------------------------------------------------


def _blocks(n: int) -> Iterator[slice]:
    """Row blocks small enough that a block's temporaries stay in cache (most steps are memory-bound)."""
    for start in range(0, n, _BLOCK):
        yield slice(start, min(start + _BLOCK, n))


def _pixels(array: NDArray[Any], name: str) -> NDArray[Any]:
    _check_channels(array, name)
    return array.reshape(-1, 3)


def _work_dtype(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    return np.float64 if dtype == np.float64 else np.float32


def _check_channels(array: NDArray[Any], name: str) -> None:
    if array.ndim < 1 or array.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3), got {array.shape}")


def _levels(dtype: np.dtype[Any]) -> int:
    if dtype == np.uint8:
        return 256
    if dtype == np.uint16:
        return 65536
    raise TypeError(f"integer images must be uint8 or uint16, got {dtype}")


def _linear_planes(rgb: NDArray[Any]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Linear R, G, B as three contiguous arrays."""
    if rgb.dtype.kind == "u":
        lut = _linear_lut(_levels(rgb.dtype))
        return np.take(lut, rgb[..., 0]), np.take(lut, rgb[..., 1]), np.take(lut, rgb[..., 2])
    if rgb.dtype.kind != "f":
        raise TypeError(f"rgb must be float or uint8/uint16, got {rgb.dtype}")
    dtype = _work_dtype(rgb.dtype)
    # Contiguous copies first: numpy's SIMD loops only run on contiguous operands.
    return tuple(_decode(np.array(rgb[..., c], dtype)) for c in range(3))  # type: ignore[return-value]


def _decode(encoded: FloatArray) -> FloatArray:
    """In place, sRGB curve encoded -> linear: ((x + 0.055) / 1.055)^2.4 above the knee, x / 12.92 below."""
    below = _min(encoded, _SRGB_KNEE)
    below -= _SRGB_KNEE
    below *= 1.0 / _SRGB_SLOPE
    _raise_to(encoded, _SRGB_KNEE)
    encoded += _SRGB_OFFSET
    encoded *= 1.0 / (1.0 + _SRGB_OFFSET)
    _power(encoded, _SRGB_GAMMA)
    encoded += below
    return encoded


def _encode(linear: FloatArray) -> FloatArray:
    """In place, sRGB curve linear -> encoded: 1.055 x^(1/2.4) - 0.055 above the knee, 12.92 x below."""
    below = _min(linear, _LINEAR_KNEE)
    _raise_to(linear, _LINEAR_KNEE)
    _power(linear, 1.0 / _SRGB_GAMMA)
    # 1.055 p - 0.055 + 12.92 (min(x, knee) - knee): the two branches, mask-free, in one pass.
    cv2.addWeighted(
        linear, 1.0 + _SRGB_OFFSET, below, _SRGB_SLOPE, -_SRGB_OFFSET - _SRGB_SLOPE * _LINEAR_KNEE, dst=linear
    )
    return linear


def _lab_f(t: FloatArray) -> None:
    """In place: CIE f(t) = t^(1/3) above epsilon, 7.787 t + 16/116 below."""
    below = _min(t, _LAB_EPSILON)
    below -= _LAB_EPSILON
    below *= _LAB_KAPPA
    _raise_to(t, _LAB_EPSILON)
    _power(t, 1.0 / 3.0)
    t += below


def _lab_f_inverse(f: FloatArray) -> None:
    """In place: f^3 above 6/29, (f - 16/116) / 7.787 below."""
    below = _min(f, _LAB_F_KNEE)
    _raise_to(f, _LAB_F_KNEE)
    cube = f * f
    cube *= f
    # max(f, knee)^3 + (min(f, knee) - knee) / kappa: both branches, mask-free, in one pass.
    cv2.addWeighted(cube, 1.0, below, 1.0 / _LAB_KAPPA, -_LAB_F_KNEE / _LAB_KAPPA, dst=f)


def _power(x: FloatArray, exponent: float) -> None:
    """In place x^p for x > 0, as exp(p log x) (see the module docstring for why)."""
    cv2.log(x, dst=x)
    x *= exponent
    cv2.exp(x, dst=x)


def _clamp_fz(f: FloatArray) -> None:
    """In place, f_z (only f_z) of interleaved (n, 1, 3) f clamped at 0, as skimage does before inverting."""
    if f.size > 4:
        # One contiguous pass, 2x faster than numpy's on the strided f_z (the stubs leave scalars out).
        cv2.max(f, _ZERO_FZ_ONLY, dst=f)  # type: ignore[call-overload]
    else:  # see `_raise_to`
        np.maximum(f[..., 2], 0.0, out=f[..., 2])


def _raise_to(x: FloatArray, bound: float) -> None:
    """In place max(x, bound) of a 1-D float array."""
    if x.size > 4:
        cv2.max(x, bound, dst=x)  # type: ignore[call-overload]  # the stubs leave scalars out
    else:  # cv2's binding takes a 1- or 4-element array beside a scalar for two scalars: wrong answers
        np.maximum(x, bound, out=x)


def _min(x: FloatArray, bound: float) -> FloatArray:
    """A new array min(x, bound) of a 1-D float array (cv2's truncating threshold, one input: no trap)."""
    below = cv2.threshold(x, bound, 0.0, cv2.THRESH_TRUNC)[1]
    return np.asarray(below, x.dtype).reshape(x.shape)


def _clamp(x: FloatArray, upper: float = 1.0) -> None:
    """In place, clamp a 1-D float array to [0, upper]: truncate at upper, then zero what is not above 0."""
    cv2.threshold(x, upper, 0.0, cv2.THRESH_TRUNC, dst=x)
    cv2.threshold(x, 0.0, 0.0, cv2.THRESH_TOZERO, dst=x)


def _l_from_y(y: FloatArray) -> FloatArray:
    """L = 116 f(Y) - 16, with f's two branches and the affine map folded into one `cv2.addWeighted`:
    116 max(Y, eps)^(1/3) + 116 kappa (min(Y, eps) - eps) - 16 (the mask-free form of `_lab_f`)."""
    below = _min(y, _LAB_EPSILON)
    _raise_to(y, _LAB_EPSILON)
    _power(y, 1.0 / 3.0)
    slope = 116.0 * _LAB_KAPPA
    cv2.addWeighted(y, 116.0, below, slope, -16.0 - slope * _LAB_EPSILON, dst=y)
    return y


def _mix(
    matrix: tuple[tuple[float, ...], ...], p0: FloatArray, p1: FloatArray, p2: FloatArray
) -> tuple[FloatArray, ...]:
    """Rows of `matrix @ (p0, p1, p2)` for planes: a 3x3 product as scaled adds on contiguous arrays."""
    rows = []
    scratch = np.empty_like(p0)
    for c0, c1, c2 in matrix:
        row = p0 * c0
        np.multiply(p1, c1, out=scratch)
        row += scratch
        np.multiply(p2, c2, out=scratch)
        row += scratch
        rows.append(row)
    return tuple(rows)


def _linear_from_lab(
    l: NDArray[Any],  # noqa: E741
    a: NDArray[Any],
    b: NDArray[Any],
    dtype: type[np.floating[Any]],
) -> tuple[FloatArray, ...]:
    """Linear R, G, B planes of Lab planes (before any gamut clamp)."""
    fy = np.add(l, 16.0, dtype=dtype)
    fy *= 1.0 / 116.0
    fx = np.multiply(a, 1.0 / 500.0, dtype=dtype)
    fx += fy
    fz = np.multiply(b, -1.0 / 200.0, dtype=dtype)
    fz += fy
    # skimage clamps f_z (only f_z) at 0 before inverting, and so do we.
    cv2.threshold(fz, 0.0, 0.0, cv2.THRESH_TOZERO, dst=fz)
    for f in (fx, fy, fz):
        _lab_f_inverse(f)
    return _mix(_rgb_from_xyzn(), fx, fy, fz)


@functools.cache
def _f_from_lab() -> NDArray[np.float64]:
    """(L, a, b) -> (f_x, f_y, f_z) as one affine map: f_y = (L + 16) / 116, f_x = f_y + a / 500,
    f_z = f_y - b / 200 (a 3x4 matrix for cv2.transform)."""
    offset = 16.0 / 116.0
    return np.array(
        [
            [1.0 / 116.0, 1.0 / 500.0, 0.0, offset],
            [1.0 / 116.0, 0.0, 0.0, offset],
            [1.0 / 116.0, 0.0, -1.0 / 200.0, offset],
        ]
    )


@functools.cache
def _rgb_from_xyzn() -> tuple[tuple[float, ...], ...]:
    """inv(xyz_from_rgb) @ diag(white): linear RGB from XYZ / white (skimage inverts the same matrix)."""
    matrix = np.linalg.inv(np.array(_XYZ_FROM_RGB)) * np.array(_WHITE)
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in matrix)


def _decode_exact(encoded: NDArray[np.float64]) -> NDArray[np.float64]:
    """skimage's sRGB curve in float64, branch by branch: for the lookup tables."""
    above = ((np.maximum(encoded, _SRGB_KNEE) + _SRGB_OFFSET) / (1.0 + _SRGB_OFFSET)) ** _SRGB_GAMMA
    return np.where(encoded > _SRGB_KNEE, above, encoded / _SRGB_SLOPE)


@functools.cache
def _linear_lut(levels: int) -> NDArray[np.float32]:
    """Linear value of every integer code (full range: code / (levels - 1))."""
    lut = _decode_exact(np.arange(levels) / (levels - 1)).astype(np.float32)
    lut.flags.writeable = False
    return lut


@functools.cache
def _luminance_luts(levels: int) -> tuple[NDArray[np.float32], ...]:
    """Each channel's share of Y per code: Y = lut_r[r] + lut_g[g] + lut_b[b]."""
    linear = _decode_exact(np.arange(levels) / (levels - 1))
    luts = tuple((linear * weight).astype(np.float32) for weight in _XYZ_FROM_RGB[1])
    for lut in luts:
        lut.flags.writeable = False
    return luts


@functools.cache
def _gray_l_lut(levels: int) -> NDArray[np.float32]:
    y = _decode_exact(np.arange(levels) / (levels - 1))
    l = np.where(y > _LAB_EPSILON, np.cbrt(y), _LAB_KAPPA * y + _LAB_OFFSET) * 116.0 - 16.0  # noqa: E741
    lut = l.astype(np.float32)
    lut.flags.writeable = False
    return lut


@functools.cache
def _uint8_quantizer(dtype: str) -> tuple[NDArray[np.uint8], FloatArray]:
    """Per bucket of linear values: the uint8 code at its start, and the threshold inside it (or inf).

    Code k is the number of decision thresholds <= the linear value, where threshold k is the linear
    value that encodes to (k - 0.5) / 255: rounding half up, exact for values of `dtype`.
    """
    encoded = (np.arange(1, 256) - 0.5) / 255.0
    above = ((encoded + _SRGB_OFFSET) / (1.0 + _SRGB_OFFSET)) ** _SRGB_GAMMA
    thresholds = np.where(encoded > _SRGB_SLOPE * _LINEAR_KNEE, above, encoded / _SRGB_SLOPE)
    if dtype != np.dtype(np.float64).str:
        # Round each threshold up to float32: for a float32 x, x >= t exactly when x >= ceil32(t).
        rounded = thresholds.astype(np.float32)
        thresholds = np.where(rounded < thresholds, np.nextafter(rounded, np.float32(np.inf)), rounded)
    starts = np.arange(_QUANT_BUCKETS) / _QUANT_BUCKETS
    base = np.searchsorted(thresholds, starts, side="right")  # thresholds <= start
    inside = np.append(thresholds, np.inf)[base]  # the next threshold, if the bucket holds it
    inside[inside >= (np.arange(1, _QUANT_BUCKETS + 1) / _QUANT_BUCKETS)] = np.inf
    tables = (base.astype(np.uint8), inside.astype(dtype))
    for table in tables:
        table.flags.writeable = False
    return tables
