"""The gateway's colour work as fused per-pixel kernels (numba): one pass per step instead of a chain
of numpy passes. Issue #19 ask 3 wants the gateway's own time within 2x the bare JPEG codec, so the
colour work must cost about what libjpeg-turbo's decode + encode cost: a few ns per pixel.

The numpy functions in `lab`, `ab_decode` and `hue_chroma` stay the specification; each kernel here
computes the same thing and is tested against them and against skimage / PIL / torch
(tests/service/color/test_fused.py):

- `srgb8_to_l`: uint8 sRGB -> L. Y from three 256-entry tables (as `lab._srgb8_to_l`), then L = 116 f(Y)
  - 16 from a 16,384-interval table of L(Y), linearly interpolated (within 4e-5 L of the cube root).
- `resize_l`: PIL's antialiased bicubic (the same coefficients, `Resample.c` `precompute_coeffs`),
  vertical pass first on whole rows, then horizontal; float32 sums (PIL sums in double: <= 1e-4 L).
- `annealed_mean`: the per-pixel softmax at 1/T and expectation over the bins, float16 logits read as
  their bits, the weights as powers of two (2^r by a degree-4 Chebyshev polynomial, relative error
  4e-6: within 3e-5 ab of degree 5's float32-exact weights, 6 % faster), eight bins a pass over whole rows.
- `lab_to_srgb8_upsampled`: bilinear ab upsample (PyTorch's `align_corners=False` rule: `resize_ab`'s
  taps), Lab -> XYZ -> linear RGB and the exact uint8 rounding of `lab.lab_planes_to_srgb_uint8` (the
  same bucket and threshold tables), writing the interleaved RGB the encoder takes.
- `lab_to_ycbcr420_upsampled`: the same sRGB values, then what libjpeg makes of them for a 4:2:0 JPEG
  (its fixed-point Y'CbCr and 2x2 chroma average, `service.codec.ycbcr420`), for the codec to encode
  from planes: libjpeg's own conversion and downsampling, and the interleaving, are skipped.

Table lookups sit in loops of their own, apart from the arithmetic around them: LLVM vectorises a loop
with a lookup by gathers only where its cost model finds gathers cheap (Intel with AVX-512), and
otherwise leaves the whole loop scalar. On an AMD EPYC (Zen 3, AVX2) that made the Lab -> sRGB pass
5x and sRGB -> L 2.4x the Intel host's time; split, the arithmetic vectorises everywhere and only the
lookups stay scalar there (bench/results/gateway_overhead_epyc_avx2.md).

One thread each (no `parallel=True`): the gateway runs many requests on few cores. The kernels are
compiled when this module is imported (`service.color.jit`: explicit signatures, cached on disk),
i.e. when the gateway starts, never on a request.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import cv2
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload
from numpy.typing import NDArray

import contract
from service.color import ab_decode, hue_chroma, lab
from service.color.jit import array, kernel, readonly_array

log = logging.getLogger(__name__)


def _float_from_bits_typing(typingctx, bits):
    """The float32 whose bits are the low 32 bits of an integer (numba widens int32 arithmetic to int64):
    a truncation and a bitcast, both of which LLVM vectorises."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if getattr(bits, "bitwidth", 32) > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


_float_from_bits: Any = intrinsic(_float_from_bits_typing)


# ---- sRGB -> L -------------------------------------------------------------------------------------

_L_INTERVALS = 1 << 14  # L(Y) table: Y in [0, 1] in 16,384 steps; interpolation error <= 4e-5 L


def _l_table() -> NDArray[np.float32]:
    """L(Y) = 116 f(Y) - 16 at Y = i / _L_INTERVALS, in float64 then rounded; two extra entries past 1."""
    y = np.arange(_L_INTERVALS + 2, dtype=np.float64) / _L_INTERVALS
    f = np.where(y > lab._LAB_EPSILON, np.cbrt(y), lab._LAB_KAPPA * y + lab._LAB_OFFSET)
    return (116.0 * f - 16.0).astype(np.float32)


# Tables are module globals: numba compiles them in as constant arrays, so LLVM knows a lookup cannot
# alias an output and vectorises the loop (with AVX-512 / AVX2 gathers); passed as arguments, it
# could not and left every loop with a lookup scalar (measured 2-4x slower).
_SHARE_R, _SHARE_G, _SHARE_B = (np.array(t) for t in lab._luminance_luts(256))
_L_TABLE = _l_table()


_L_CHUNK = 1024  # pixels per pass of `_srgb8_chunk_to_l`: its two scratch rows stay in L1


@kernel(inline=True)
def _srgb8_chunk_to_l(pixels, out, frac, index):
    """L of (n, 3) uint8 sRGB pixels into `out` (n), through the float32 and uint32 scratch `frac` and
    `index` (>= n). Three loops, not one: the luminance lookups, the table position (arithmetic only:
    it vectorises on every target) and the interpolated L(Y) lookup. Where LLVM gathers (AVX-512
    Intel) they all vectorise; where it will not (AMD Zen 3 at AVX2) one loop with lookups kept all
    of it scalar: 1.42 -> 0.75 ms at 768x512 there."""
    n = out.shape[0]
    for p in range(n):
        frac[p] = _SHARE_R[pixels[p, 0]] + _SHARE_G[pixels[p, 1]] + _SHARE_B[pixels[p, 2]]
    for p in range(n):
        s = frac[p] * np.float32(_L_INTERVALS)
        # Indices clamped as integers and made unsigned: numba then emits no negative-index wraparound,
        # which LLVM cannot see through; 32-bit, so gathers are 8-lane 32-bit ones, not 64-bit-index.
        i = min(
            np.uint32(np.int32(min(max(s, np.float32(0.0)), np.float32(_L_INTERVALS)))),
            np.uint32(_L_INTERVALS),
        )
        index[p] = i
        frac[p] = s - np.float32(i)
    for p in range(n):
        i = index[p]
        lo = _L_TABLE[i]
        out[p] = lo + frac[p] * (_L_TABLE[i + np.uint32(1)] - lo)


@kernel(types.void(readonly_array(types.uint8, 2), array(types.float32, 1)))
def _srgb8_to_l_kernel(rgb, out):
    frac = np.empty(_L_CHUNK, np.float32)
    index = np.empty(_L_CHUNK, np.uint32)
    for start in range(0, rgb.shape[0], _L_CHUNK):
        stop = min(start + _L_CHUNK, rgb.shape[0])
        _srgb8_chunk_to_l(rgb[start:stop], out[start:stop], frac, index)


def srgb8_to_l(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """`lab.srgb_to_l` of uint8 `(H, W, 3)` sRGB: `(H, W)` float32 L, within 1e-4 of it."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    pixels = np.ascontiguousarray(rgb).reshape(-1, 3)
    out = np.empty(len(pixels), np.float32)
    _srgb8_to_l_kernel(pixels, out)
    return out.reshape(rgb.shape[:2])


# ---- L to the working size: PIL's bicubic ----------------------------------------------------------

_BICUBIC_SUPPORT = 2.0


def _bicubic(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """PIL's bicubic kernel, a = -0.5 (`Resample.c` `bicubic_filter`)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def pil_bicubic_coeffs(size_in: int, size_out: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """PIL's `precompute_coeffs` for the bicubic filter: per output pixel its first input pixel and count
    (`(size_out, 2)` int32) and its normalised weights (`(size_out, ksize)` float32, zero past count)."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    ksize = math.ceil(support) * 2 + 1
    bounds = np.zeros((size_out, 2), np.int32)
    weights = np.zeros((size_out, ksize), np.float32)
    for out in range(size_out):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)  # C's (int) truncates, as Python's int() does
        stop = min(int(centre + support + 0.5), size_in)
        taps = _bicubic((np.arange(first, stop) - centre + 0.5) / filterscale)
        total = taps.sum()
        bounds[out] = first, stop - first
        weights[out, : stop - first] = taps / total if total != 0.0 else taps
    for table in (bounds, weights):
        table.flags.writeable = False
    return bounds, weights


@kernel(
    types.void(
        readonly_array(types.float32, 2),
        readonly_array(types.int32, 2),
        readonly_array(types.float32, 2),
        types.boolean,
        array(types.float32, 2),
    )
)
def _resize_kernel(src, bounds, weights, clip, out):
    """One separable pass down the rows: out[o] = sum_t weights[o, t] src[bounds[o, 0] + t], whole
    contiguous rows, four taps at a time (a quarter of the loads and stores of the accumulator row);
    clipped to [0, 100] if `clip`. The horizontal pass is this one on the transposed image: done
    directly, its per-pixel dot products of 9-33 taps took 0.26 of 0.31 ms at 512²."""
    width = src.shape[1]
    for o in range(out.shape[0]):
        first = bounds[o, 0]
        acc = out[o]
        for j in range(width):
            acc[j] = np.float32(0.0)
        count = bounds[o, 1]
        fours = count - count % 4
        for t in range(0, fours, 4):
            w0, w1, w2, w3 = weights[o, t], weights[o, t + 1], weights[o, t + 2], weights[o, t + 3]
            r0, r1, r2, r3 = src[first + t], src[first + t + 1], src[first + t + 2], src[first + t + 3]
            for j in range(width):
                acc[j] += (w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j])
        for t in range(fours, count):
            w = weights[o, t]
            row = src[first + t]
            for j in range(width):
                acc[j] += w * row[j]
        if clip:
            for j in range(width):
                acc[j] = min(max(acc[j], np.float32(0.0)), np.float32(100.0))


@kernel(
    types.void(
        readonly_array(types.uint8, 3),
        readonly_array(types.int32, 2),
        readonly_array(types.float32, 2),
        array(types.float32, 2),
        array(types.float32, 2),
    )
)
def _l_and_rows_kernel(rgb, bounds, weights, lightness, tmp):
    """`_srgb8_to_l_kernel` row by row, interleaved with `_resize_kernel`'s vertical pass: each output
    row's taps are computed just before it needs them, so they are read back from L2, not memory."""
    height, width = lightness.shape
    frac = np.empty(width, np.float32)
    index = np.empty(width, np.uint32)
    done = 0
    for o in range(tmp.shape[0] + 1):
        need = height if o == tmp.shape[0] else bounds[o, 0] + bounds[o, 1]
        while done < need:  # sRGB -> L of the rows this output row needs
            _srgb8_chunk_to_l(rgb[done], lightness[done], frac, index)
            done += 1
        if o == tmp.shape[0]:
            break
        first = bounds[o, 0]
        acc = tmp[o]
        for j in range(width):
            acc[j] = np.float32(0.0)
        count = bounds[o, 1]
        fours = count - count % 4
        for t in range(0, fours, 4):
            w0, w1, w2, w3 = weights[o, t], weights[o, t + 1], weights[o, t + 2], weights[o, t + 3]
            r0, r1 = lightness[first + t], lightness[first + t + 1]
            r2, r3 = lightness[first + t + 2], lightness[first + t + 3]
            for j in range(width):
                acc[j] += (w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j])
        for t in range(fours, count):
            w = weights[o, t]
            src = lightness[first + t]
            for j in range(width):
                acc[j] += w * src[j]


FUSED_L_PIXELS = 2048 * 2048  # where `srgb8_to_l_resized` measured faster than the two passes


def srgb8_to_l_resized(
    rgb: NDArray[np.uint8], size: tuple[int, int]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(`srgb8_to_l(rgb)`, `resize_l(that, size)`) in one pass over the image: the L rows are resized
    while they are still in cache. Both results are identical to the two calls'. It pays only where L
    does not fit in L2 (thread CPU, this host: 2048² 10.4 -> 9.8 ms, 4096x2048 26.3 -> 24.9; 1448²
    4.77 -> 4.95, 512² 0.62 -> 0.66: per-row loops cost more than one flat loop), so the gateway calls
    it from `FUSED_L_PIXELS` pixels up."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if rgb.shape[:2] == (height, width):
        lightness = srgb8_to_l(rgb)
        return lightness, lightness.copy()
    pixels = np.ascontiguousarray(rgb)
    lightness = np.empty(rgb.shape[:2], np.float32)
    rows_bounds, rows_weights = pil_bicubic_coeffs(rgb.shape[0], height)
    cols_bounds, cols_weights = pil_bicubic_coeffs(rgb.shape[1], width)
    tmp = np.empty((height, rgb.shape[1]), np.float32)
    _l_and_rows_kernel(pixels, rows_bounds, rows_weights, lightness, tmp)
    turned = np.empty((width, height), np.float32)
    _resize_kernel(cv2.transpose(tmp), cols_bounds, cols_weights, True, turned)
    return lightness, np.asarray(cv2.transpose(turned), np.float32)


def resize_l(l: NDArray[Any], size: tuple[int, int]) -> NDArray[np.float32]:  # noqa: E741
    """`ab_decode.resize_l`: L `(H, W)` to `size = (h, w)` by PIL's bicubic filter, clipped to [0, 100]."""
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if l.ndim != 2:
        raise ValueError(f"L must have shape (H, W), got {l.shape}")
    if l.shape == (height, width):
        return np.array(l, np.float32)
    src = np.ascontiguousarray(l, np.float32)
    rows_bounds, rows_weights = pil_bicubic_coeffs(src.shape[0], height)
    cols_bounds, cols_weights = pil_bicubic_coeffs(src.shape[1], width)
    # vertical first (PIL goes horizontal first: within 1e-4 either way), then the horizontal pass as
    # a vertical one between two transposes (OpenCV's SIMD transpose, ~0.1 ns a value)
    tmp = np.empty((height, src.shape[1]), np.float32)
    _resize_kernel(src, rows_bounds, rows_weights, False, tmp)
    turned = np.empty((width, height), np.float32)
    _resize_kernel(cv2.transpose(tmp), cols_bounds, cols_weights, True, turned)
    return np.asarray(cv2.transpose(turned), np.float32)


# ---- the annealed mean -----------------------------------------------------------------------------

_LOG2E = np.float32(1.4426950408889634)


def _exp2_coefficients(degree: int = 4) -> tuple[float, ...]:
    """2^r on [-1/2, 1/2]: the power-series coefficients (constant first) of the Chebyshev interpolant
    of that degree, near-minimax: relative error 4e-6 at degree 4, 1e-7 (float32's own rounding) at 5."""
    chebyshev = np.polynomial.chebyshev.Chebyshev.interpolate(
        lambda r: np.exp2(r), degree, domain=[-0.5, 0.5]
    )
    return tuple(float(c) for c in chebyshev.convert(kind=np.polynomial.Polynomial).coef)


_E0, _E1, _E2, _E3, _E4 = _exp2_coefficients()


@kernel()
def _exp2_nonpositive(t):
    """2^t for float32 t in [-116, 0]: 2^n 2^r with n = round(t), r = t - n in [-1/2, 1/2] (exact), 2^r
    by a degree-4 polynomial (`_exp2_coefficients`), 2^n by building the float's exponent bits."""
    n = np.int32(t - np.float32(0.5))  # t <= 0: truncation rounds to the nearest
    r = t - np.float32(n)
    p = np.float32(_E4)
    p = p * r + np.float32(_E3)
    p = p * r + np.float32(_E2)
    p = p * r + np.float32(_E1)
    p = p * r + np.float32(_E0)
    return p * _float_from_bits((n + np.int32(127)) << np.int32(23))


def _half_to_float_typing(typingctx, bits):
    """A float16's value (as float32) from its uint16 bits: LLVM's fpext, i.e. F16C's vcvtph2ps."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


_half_to_float: Any = intrinsic(_half_to_float_typing)


def _value(x):
    """A logit's float32 value: from float16 bits (uint16) or as it is (float32); numba only."""
    raise NotImplementedError("numba overloads this")


@overload(_value)
def _value_overload(x):
    if x == types.uint16:
        return lambda x: _half_to_float(x)
    if x == types.float32:
        return lambda x: x
    return None


@kernel(
    [
        types.void(
            readonly_array(dtype, 2),
            readonly_array(types.float32, 1),
            readonly_array(types.float32, 1),
            types.float32,
            array(types.float32, 1),
            array(types.float32, 1),
        )
        for dtype in (types.uint16, types.float32)
    ]
)
def _anneal_kernel(logits, centre_a, centre_b, scale, out_a, out_b):
    # Whole rows of the (bins, pixels) map, eight bins per pass over the per-pixel sums (an eighth of
    # their loads and stores; four a pass: 0.57 ms at 64x64, eight: 0.53). Blocks of pixels measured
    # 4x slower: the offset index defeats numba's proof that it is non-negative, and the loop no
    # longer vectorises.
    bins, pixels = logits.shape
    floor = np.float32(-80.0 * math.log2(math.e))  # e^-80 as a power of two
    scale = scale * _LOG2E  # weights as 2^((x - max) scale log2 e)
    top = np.empty(pixels, np.float32)
    sum_a = np.zeros(pixels, np.float32)
    sum_b = np.zeros(pixels, np.float32)
    total = np.zeros(pixels, np.float32)
    for p in range(pixels):
        top[p] = _value(logits[0, p])
    rest = 1 + (bins - 1) // 8 * 8
    for k in range(1, rest, 8):  # eight bins a pass here too: 0.48 -> 0.45 ms at 64x64
        for p in range(pixels):
            m01 = max(_value(logits[k, p]), _value(logits[k + 1, p]))
            m23 = max(_value(logits[k + 2, p]), _value(logits[k + 3, p]))
            m45 = max(_value(logits[k + 4, p]), _value(logits[k + 5, p]))
            m67 = max(_value(logits[k + 6, p]), _value(logits[k + 7, p]))
            top[p] = max(top[p], max(max(m01, m23), max(m45, m67)))
    for k in range(rest, bins):
        for p in range(pixels):
            top[p] = max(top[p], _value(logits[k, p]))
    for p in range(pixels):
        top[p] *= scale  # the max, scaled: each exponent is then one fused multiply-add
    quads = bins - bins % 8
    for k in range(0, quads, 8):
        a0, a1, a2, a3 = centre_a[k], centre_a[k + 1], centre_a[k + 2], centre_a[k + 3]
        a4, a5, a6, a7 = centre_a[k + 4], centre_a[k + 5], centre_a[k + 6], centre_a[k + 7]
        b0, b1, b2, b3 = centre_b[k], centre_b[k + 1], centre_b[k + 2], centre_b[k + 3]
        b4, b5, b6, b7 = centre_b[k + 4], centre_b[k + 5], centre_b[k + 6], centre_b[k + 7]
        for p in range(pixels):
            m = top[p]
            # floored at e^-80 (no subnormal weights), as ab_decode.annealed_mean does
            w0 = _exp2_nonpositive(max(_value(logits[k, p]) * scale - m, floor))
            w1 = _exp2_nonpositive(max(_value(logits[k + 1, p]) * scale - m, floor))
            w2 = _exp2_nonpositive(max(_value(logits[k + 2, p]) * scale - m, floor))
            w3 = _exp2_nonpositive(max(_value(logits[k + 3, p]) * scale - m, floor))
            w4 = _exp2_nonpositive(max(_value(logits[k + 4, p]) * scale - m, floor))
            w5 = _exp2_nonpositive(max(_value(logits[k + 5, p]) * scale - m, floor))
            w6 = _exp2_nonpositive(max(_value(logits[k + 6, p]) * scale - m, floor))
            w7 = _exp2_nonpositive(max(_value(logits[k + 7, p]) * scale - m, floor))
            sum_a[p] += ((w0 * a0 + w1 * a1) + (w2 * a2 + w3 * a3)) + (
                (w4 * a4 + w5 * a5) + (w6 * a6 + w7 * a7)
            )
            sum_b[p] += ((w0 * b0 + w1 * b1) + (w2 * b2 + w3 * b3)) + (
                (w4 * b4 + w5 * b5) + (w6 * b6 + w7 * b7)
            )
            total[p] += ((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7))
    for k in range(quads, bins):
        ca = centre_a[k]
        cb = centre_b[k]
        for p in range(pixels):
            w = _exp2_nonpositive(max(_value(logits[k, p]) * scale - top[p], floor))
            sum_a[p] += w * ca
            sum_b[p] += w * cb
            total[p] += w
    for p in range(pixels):
        out_a[p] = sum_a[p] / total[p]
        out_b[p] = sum_b[p] / total[p]


def annealed_mean(logits: NDArray[Any], temperature: float) -> NDArray[np.float32]:
    """`ab_decode.annealed_mean`: `(N, 313, h, w)` float16/float32 logits -> `(N, 2, h, w)` ab."""
    if not 0.0 < temperature <= 1.0 or temperature < ab_decode.ARGMAX_BELOW_T:
        return ab_decode.annealed_mean(logits, temperature)  # refusals and the argmax mode
    if logits.ndim != 4 or logits.shape[1] != contract.NUM_AB_BINS:
        raise ValueError(f"logits must have shape (N, {contract.NUM_AB_BINS}, h, w), got {logits.shape}")
    n, bins, h, w = logits.shape
    matrix = ab_decode._expectation_matrix()
    out = np.empty((n, 2, h * w), np.float32)
    scale = np.float32(1.0 / temperature)
    for item in range(n):
        flat = np.ascontiguousarray(logits[item]).reshape(bins, h * w)
        if flat.dtype == np.float16:
            _anneal_kernel(flat.view(np.uint16), matrix[0], matrix[1], scale, out[item, 0], out[item, 1])
        else:
            values = flat.astype(np.float32, copy=False)
            _anneal_kernel(values, matrix[0], matrix[1], scale, out[item, 0], out[item, 1])
    return out.reshape(n, 2, h, w)


# ---- ab upsample + Lab -> uint8 sRGB -------------------------------------------------------------


_BLOCK_BYTES = 192 << 10


@functools.lru_cache(maxsize=64)
def bilinear_taps(
    size_in: int, size_out: int
) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]:
    """PyTorch's `align_corners=False` taps (lower, upper, weight of upper) per output pixel: the
    non-zeros of `ab_decode._bilinear_weights`, rounded the same way."""
    matrix = ab_decode._bilinear_weights(size_in, size_out)
    scale = np.float32(size_in) / np.float32(size_out)
    centres = np.arange(size_out, dtype=np.float32) + np.float32(0.5)
    src = np.maximum((np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32), np.float32(0))
    lower = src.astype(np.int32)
    upper = np.minimum(lower + 1, size_in - 1).astype(np.int32)
    frac = np.float32(1.0) - matrix[np.arange(size_out), lower]  # the upper tap's weight (0 when equal)
    frac[upper == lower] = np.float32(0.0)
    for table in (lower, upper, frac):
        table.flags.writeable = False
    return lower, upper, frac


@kernel(
    types.void(
        readonly_array(types.float32, 3),
        readonly_array(types.int32, 1),
        readonly_array(types.int32, 1),
        readonly_array(types.float32, 1),
        array(types.float32, 3),
    )
)
def _widen_kernel(ab, lower, upper, frac, out):
    """Horizontal bilinear pass: (2, h, w) -> (2, h, W)."""
    for c in range(ab.shape[0]):
        for i in range(ab.shape[1]):
            row = ab[c, i]
            dst = out[c, i]
            for j in range(out.shape[2]):
                f = frac[j]
                dst[j] = (np.float32(1.0) - f) * row[lower[j]] + f * row[upper[j]]


_M = np.array(lab._rgb_from_xyzn(), np.float32)  # linear RGB from XYZ / white
_M00, _M01, _M02 = (float(v) for v in _M[0])
_M10, _M11, _M12 = (float(v) for v in _M[1])
_M20, _M21, _M22 = (float(v) for v in _M[2])
_KNEE = lab._LAB_F_KNEE
_KNEE_CUBE = lab._LAB_F_KNEE**3
_INV_KAPPA = 1.0 / lab._LAB_KAPPA


_FRACTION_ONE = 1 << 24  # a bucket's position in 24-bit fixed point


def _packed_quantizer() -> NDArray[np.uint32]:
    """`lab._uint8_quantizer` (float32) as one uint32 per bucket: the code at the bucket's start in the
    top 8 bits, the threshold's position inside the bucket in the low 24 (fixed point), so one lookup
    and one integer compare replace two lookups. Exact: `_QUANT_BUCKETS` is a power of two, so
    `s = x * buckets` and `s - k` are exact, and every float32 threshold's `(t * buckets - k) * 2**24`
    is an integer (checked here); a bucket with no threshold stores (code - 1, 0): always + 1."""
    base, threshold = lab._uint8_quantizer(np.dtype(np.float32).str)
    buckets = lab._QUANT_BUCKETS
    if buckets & (buckets - 1):
        raise AssertionError(f"_QUANT_BUCKETS must be a power of two, got {buckets}")
    k = np.arange(buckets)
    inside = np.isfinite(threshold)
    position = (threshold.astype(np.float64) * buckets - k) * _FRACTION_ONE
    if not np.all(position[inside] == np.floor(position[inside])) or not np.all(base[~inside] >= 1):
        raise AssertionError("the float32 thresholds do not fit the packed quantizer")
    fraction = np.where(inside, position, 0).astype(np.uint32)
    code = np.where(inside, base.astype(np.uint32), base.astype(np.uint32) - 1)
    return (code << np.uint32(24)) | fraction


_QUANT_PACKED = _packed_quantizer()


@kernel()
def _bucket(linear):
    """The quantizer's table index and fixed-point position inside the bucket for a float32 linear
    value: arithmetic only, so a loop of it vectorises on every target (`_quantize`)."""
    s = linear * np.float32(lab._QUANT_BUCKETS)
    bucket = np.int32(min(max(s, np.float32(0.0)), np.float32(lab._QUANT_BUCKETS - 1)))
    # s - k is exact; clamped to [-1, 1] so the conversion cannot overflow (out of gamut)
    inside = min(max(s - np.float32(bucket), np.float32(-1.0)), np.float32(1.0))
    return bucket, np.int32(inside * np.float32(_FRACTION_ONE))


@kernel()
def _code(bucket, position):
    """The uint8 code from `_bucket`'s pair: one lookup in the packed table and one compare."""
    entry = _QUANT_PACKED[np.uint32(bucket) & np.uint32(lab._QUANT_BUCKETS - 1)]
    return np.uint8(
        (entry >> np.uint32(24)) + (1 if position >= np.int32(entry & np.uint32(0xFFFFFF)) else 0)
    )


@kernel()
def _quantize(linear):
    """uint8 code of a float32 linear value: `lab._uint8_quantizer`'s bucket and threshold, packed in one
    table entry (`_packed_quantizer`): one gather instead of two."""
    bucket, position = _bucket(linear)
    return _code(bucket, position)


@kernel()
def _f_inverse(f):
    """CIE f^-1: the cube above the knee, the line below (`lab._lab_f_inverse`)."""
    line = (f - np.float32(_KNEE)) * np.float32(_INV_KAPPA) + np.float32(_KNEE_CUBE)
    return f * f * f if f > np.float32(_KNEE) else line


@kernel(inline=True)
def _lab_row_to_srgb8(row, a_lo, a_hi, b_lo, b_hi, f, scratch, r8, g8, b8):
    """One output row: vertical bilinear of the widened ab rows (weight `f` on the upper one), Lab ->
    linear RGB, exact uint8 rounding, into three planes (interleaved stores kept LLVM from vectorising
    the loop: 5x slower). `scratch`: int32 (6, >= W), the quantizer's buckets and positions.

    Two loops, not one: the first is arithmetic only (Lab -> linear RGB -> `_bucket`) and vectorises on
    every x86 target; the second holds the table lookup (`_code`), which LLVM turns into gathers where
    they are cheap (AVX-512 Intel) and leaves scalar where its cost model says they are not (AMD Zen 3
    at AVX2). In one loop the lookup kept all the arithmetic scalar there: 12.8 ns a pixel (Intel:
    2.2); with the lookup alone scalar the pass takes 0.38-0.52x that time
    (bench/results/gateway_overhead_epyc_avx2.md)."""
    g = np.float32(1.0) - f
    for j in range(row.shape[0]):
        a = g * a_lo[j] + f * a_hi[j]
        b = g * b_lo[j] + f * b_hi[j]
        fy = (row[j] + np.float32(16.0)) * np.float32(1.0 / 116.0)
        fx = fy + a * np.float32(1.0 / 500.0)
        fz = max(fy - b * np.float32(1.0 / 200.0), np.float32(0.0))  # skimage clamps f_z (only) at 0
        x = _f_inverse(fx)
        y = _f_inverse(fy)
        z = _f_inverse(fz)
        scratch[0, j], scratch[3, j] = _bucket(
            np.float32(_M00) * x + np.float32(_M01) * y + np.float32(_M02) * z
        )
        scratch[1, j], scratch[4, j] = _bucket(
            np.float32(_M10) * x + np.float32(_M11) * y + np.float32(_M12) * z
        )
        scratch[2, j], scratch[5, j] = _bucket(
            np.float32(_M20) * x + np.float32(_M21) * y + np.float32(_M22) * z
        )
    for j in range(row.shape[0]):
        r8[j] = _code(scratch[0, j], scratch[3, j])
        g8[j] = _code(scratch[1, j], scratch[4, j])
        b8[j] = _code(scratch[2, j], scratch[5, j])


@kernel(
    types.void(
        readonly_array(types.float32, 2),
        readonly_array(types.float32, 3),
        readonly_array(types.int32, 1),
        readonly_array(types.int32, 1),
        readonly_array(types.float32, 1),
        array(types.int32, 2),
        array(types.uint8, 2),
        array(types.uint8, 2),
        array(types.uint8, 2),
    )
)
def _lab_to_srgb8_kernel(lightness, ab_rows, lower, upper, frac, scratch, red, green, blue):
    """Per output row: `_lab_row_to_srgb8` into three planes (`scratch`: its (6, W) int32 rows)."""
    for i in range(lightness.shape[0]):
        lo, hi = lower[i], upper[i]
        _lab_row_to_srgb8(
            lightness[i], ab_rows[0, lo], ab_rows[0, hi], ab_rows[1, lo], ab_rows[1, hi], frac[i],
            scratch, red[i], green[i], blue[i],
        )  # fmt: skip


# libjpeg's RGB -> Y'CbCr (jccolor.c: JFIF's full-range BT.601 in 16-bit fixed point, FIX(x) =
# round(x * 65536)); Y' rounds with ONE_HALF, Cb and Cr with ONE_HALF - 1 so 255 never rounds to 256.
_FIX_Y = (19595, 38470, 7471)  # FIX(0.29900), FIX(0.58700), FIX(0.11400)
_FIX_CB = (-11059, -21709, 32768)  # -FIX(0.16874), -FIX(0.33126), FIX(0.5)
_FIX_CR = (32768, -27439, -5329)  # FIX(0.5), -FIX(0.41869), -FIX(0.08131)
_Y_ROUND = 1 << 15
_C_ROUND = (128 << 16) + (1 << 15) - 1


@kernel(inline=True)
def _ycc_row(r8, g8, b8, luma, cb, cr):
    """libjpeg's fixed-point Y'CbCr of one row of uint8 sRGB: Y' into `luma`, Cb and Cr (full
    resolution, for the 2x2 sums) into int32 rows. In float32, exactly: every product and partial
    sum is an integer below 2^24 in magnitude (the largest, Cb or Cr of 255 with its rounding term,
    is 2^24 - 1) and 2^-16 is a power of two, so the truncation is the C code's shift; numba would
    promote int32 arithmetic to int64, which vectorises worse."""
    for j in range(r8.shape[0]):
        r = np.float32(r8[j])
        g = np.float32(g8[j])
        b = np.float32(b8[j])
        y = np.float32(_FIX_Y[0]) * r + np.float32(_FIX_Y[1]) * g + np.float32(_FIX_Y[2]) * b
        u = np.float32(_FIX_CB[0]) * r + np.float32(_FIX_CB[1]) * g + np.float32(_FIX_CB[2]) * b
        v = np.float32(_FIX_CR[0]) * r + np.float32(_FIX_CR[1]) * g + np.float32(_FIX_CR[2]) * b
        luma[j] = np.uint8(np.int32((y + np.float32(_Y_ROUND)) * np.float32(1.0 / 65536.0)))
        cb[j] = np.int32((u + np.float32(_C_ROUND)) * np.float32(1.0 / 65536.0))
        cr[j] = np.int32((v + np.float32(_C_ROUND)) * np.float32(1.0 / 65536.0))


@kernel(
    types.void(
        readonly_array(types.float32, 2),
        readonly_array(types.float32, 3),
        readonly_array(types.int32, 1),
        readonly_array(types.int32, 1),
        readonly_array(types.float32, 1),
        array(types.uint8, 2),
        array(types.uint8, 2),
        array(types.uint8, 2),
        array(types.uint8, 2),
        array(types.int32, 2),
        array(types.int32, 2),
    )
)
def _lab_to_ycc420_kernel(
    lightness, ab_rows, lower, upper, frac, luma, cb, cr, rgb_rows, chroma_rows, scratch
):
    """Per pair of output rows: `_lab_row_to_srgb8` of each into small row buffers (L1), libjpeg's
    Y'CbCr of them (`_ycc_row`), then Cb and Cr averaged over 2x2 as jcsample.c's h2v2_downsample
    does: (sum of four + bias) >> 2, the bias alternating 1, 2 along the row. An odd last row or
    column is its own neighbour (libjpeg replicates it before downsampling), and Y' gets that
    padding too: TurboJPEG reads Y' to even width and height. (Y'CbCr in the Lab loop itself, no
    row buffers: the same time; a helper returning the (R, G, B) tuple stopped LLVM vectorising.)"""
    height, width = lightness.shape
    even_width = luma.shape[1]
    for k in range(cb.shape[0]):
        for t in range(2):
            i = min(2 * k + t, height - 1)
            lo, hi = lower[i], upper[i]
            _lab_row_to_srgb8(
                lightness[i], ab_rows[0, lo], ab_rows[0, hi], ab_rows[1, lo], ab_rows[1, hi], frac[i],
                scratch, rgb_rows[0, :width], rgb_rows[1, :width], rgb_rows[2, :width],
            )  # fmt: skip
            _ycc_row(
                rgb_rows[0, :width], rgb_rows[1, :width], rgb_rows[2, :width],
                luma[2 * k + t, :width], chroma_rows[2 * t, :width], chroma_rows[2 * t + 1, :width],
            )  # fmt: skip
            if even_width > width:
                luma[2 * k + t, width] = luma[2 * k + t, width - 1]
                chroma_rows[2 * t, width] = chroma_rows[2 * t, width - 1]
                chroma_rows[2 * t + 1, width] = chroma_rows[2 * t + 1, width - 1]
        u0, v0, u1, v1 = chroma_rows[0], chroma_rows[1], chroma_rows[2], chroma_rows[3]
        cb_row, cr_row = cb[k], cr[k]
        for m in range(cb.shape[1]):
            bias = 1 + (m & 1)
            cb_row[m] = np.uint8((u0[2 * m] + u0[2 * m + 1] + u1[2 * m] + u1[2 * m + 1] + bias) >> 2)
            cr_row[m] = np.uint8((v0[2 * m] + v0[2 * m + 1] + v1[2 * m] + v1[2 * m + 1] + bias) >> 2)


def _upsample_inputs(
    lightness: NDArray[Any], ab: NDArray[Any]
) -> tuple[
    NDArray[np.float32], NDArray[np.float32], tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]
]:
    """(L as float32, ab widened to L's width, the vertical taps) for the Lab kernels."""
    if lightness.ndim != 2 or ab.ndim != 3 or ab.shape[0] != 2:
        raise ValueError(f"need L (H, W) and ab (2, h, w), got {lightness.shape} and {ab.shape}")
    height, width = lightness.shape
    if height < 1 or width < 1 or ab.shape[1] < 1 or ab.shape[2] < 1:
        raise ValueError(f"empty planes: L {lightness.shape}, ab {ab.shape}")
    small = np.ascontiguousarray(ab, np.float32)
    widened = np.empty((2, small.shape[1], width), np.float32)
    _widen_kernel(small, *bilinear_taps(small.shape[2], width), widened)
    light = np.ascontiguousarray(lightness, np.float32)
    return light, widened, bilinear_taps(small.shape[1], height)


def lab_to_srgb8_upsampled(lightness: NDArray[Any], ab: NDArray[Any]) -> NDArray[np.uint8]:
    """Full-resolution L `(H, W)` and ab `(2, h, w)` -> `(H, W, 3)` uint8 sRGB: `resize_ab` of ab to
    (H, W), then `lab.lab_planes_to_srgb_uint8` (the same gamut clamp and rounding), in one pass; the
    three planes are interleaved by `cv2.merge` (SIMD, 0.13 ns a pixel)."""
    light, widened, (lower, upper, frac) = _upsample_inputs(lightness, ab)
    height, width = light.shape
    out = np.empty((height, width, 3), np.uint8)
    # In blocks of rows whose three planes stay in L2 (~192 KiB), merged straight into the output's
    # rows: 12 MB less to allocate at 2048² (page faults where the heap was trimmed) and to write and
    # read back (micro, warm heap: 9.35 -> 9.17 ms at 2048², 0.57 at 512² either way).
    rows = max(1, _BLOCK_BYTES // (3 * width))
    planes = [np.empty((min(rows, height), width), np.uint8) for _ in range(3)]
    scratch = np.empty((6, width), np.int32)
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        block = [plane[: stop - start] for plane in planes]
        _lab_to_srgb8_kernel(
            light[start:stop],
            widened,
            lower[start:stop],
            upper[start:stop],
            frac[start:stop],
            scratch,
            *block,
        )
        cv2.merge(block, dst=out[start:stop])
    return out


def lab_to_ycbcr420_upsampled(
    lightness: NDArray[Any], ab: NDArray[Any]
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """What libjpeg makes of `lab_to_srgb8_upsampled`'s pixels for a 4:2:0 JPEG, in the same pass:
    `service.codec.ycbcr420` of them (the numpy statement), the planes of a `service.codec.YCbCr420`.
    Y' is `(H + H % 2, W + W % 2)`, an odd last row or column repeated; Cb and Cr are
    `((H + 1) // 2, (W + 1) // 2)`; uint8."""
    light, widened, taps = _upsample_inputs(lightness, ab)
    height, width = light.shape
    luma = np.empty((height + height % 2, width + width % 2), np.uint8)
    cb = np.empty((luma.shape[0] // 2, luma.shape[1] // 2), np.uint8)
    cr = np.empty_like(cb)
    rgb_rows = np.empty((3, width), np.uint8)
    chroma_rows = np.empty((4, luma.shape[1]), np.int32)
    scratch = np.empty((6, width), np.int32)
    _lab_to_ycc420_kernel(light, widened, *taps, luma, cb, cr, rgb_rows, chroma_rows, scratch)
    return luma, cb, cr


# ---- larsson16: the neutral gray of L --------------------------------------------------------------

_GRAY_INTERVALS = 1 << 12  # gray(L) table over L in [0, 100]; interpolation error < 1e-6


def _gray_table() -> NDArray[np.float32]:
    """`lab.neutral_gray` in float64 at L = 100 i / _GRAY_INTERVALS, one extra entry past 100."""
    lightness = np.arange(_GRAY_INTERVALS + 2, dtype=np.float64) * (100.0 / _GRAY_INTERVALS)
    return np.asarray(lab.neutral_gray(np.minimum(lightness, 100.0)), np.float32)


_GRAY_TABLE = _gray_table()


@kernel(types.void(readonly_array(types.float32, 1), array(types.float32, 1)))
def _neutral_gray_kernel(lightness, out):
    scale = np.float32(_GRAY_INTERVALS / 100.0)
    for p in range(lightness.shape[0]):
        s = lightness[p] * scale
        i = np.uint64(min(max(np.int64(s), np.int64(0)), np.int64(_GRAY_INTERVALS)))
        f = min(max(s - np.float32(i), np.float32(0.0)), np.float32(1.0))
        lo = _GRAY_TABLE[i]
        out[p] = lo + f * (_GRAY_TABLE[i + np.uint64(1)] - lo)


def neutral_gray(lightness: NDArray[Any]) -> NDArray[np.float32]:
    """`lab.neutral_gray` (the sRGB gray level of (L, 0, 0)) of L in [0, 100], within 1e-5 of it."""
    flat = np.ascontiguousarray(lightness, np.float32).reshape(-1)
    out = np.empty(len(flat), np.float32)
    _neutral_gray_kernel(flat, out)
    return out.reshape(np.shape(lightness))


# ---- larsson16: hue and chroma distributions -> sRGB, in one kernel ----------------------------------

_HC_BINS = 32
_HC_CENTRES = (np.arange(_HC_BINS, dtype=np.float32) + np.float32(0.5)) / np.float32(_HC_BINS)
_HC_COS = np.cos(np.float32(2 * np.pi) * _HC_CENTRES)
_HC_SIN = np.sin(np.float32(2 * np.pi) * _HC_CENTRES)
_HC_TWO_PI = np.float32(2 * np.pi)
_FADING_LIMIT = hue_chroma.FADING_LIMIT

(_XN00, _XN01, _XN02), (_XN10, _XN11, _XN12), (_XN20, _XN21, _XN22) = (
    [np.float32(c) for c in row] for row in lab._XYZN_FROM_RGB
)


_CURVE_INTERVALS = 1 << 12  # sRGB decode curve over [0, 1], interpolated: within 3e-8 of it


def _curve_table() -> NDArray[np.float32]:
    """skimage's sRGB decode curve at i / _CURVE_INTERVALS, in float64 then rounded (16 KiB: it stays
    in cache; with a 2^16-interval one, 256 KiB, cold after the image's passes, the larsson16 decode
    took 0.82 ms in the pipeline at 512², 0.46 in a loop; now 0.56)."""
    x = np.arange(_CURVE_INTERVALS + 2, dtype=np.float64) / _CURVE_INTERVALS
    return lab._decode_exact(x).astype(np.float32)


_LINEAR_CURVE = _curve_table()


@kernel()
def _srgb_to_linear(encoded):
    """skimage's sRGB curve of x in [0, 1] (`lab._decode_exact`), from its table."""
    s = encoded * np.float32(_CURVE_INTERVALS)
    i = min(
        np.uint32(np.int32(min(max(s, np.float32(0.0)), np.float32(_CURVE_INTERVALS)))),
        np.uint32(_CURVE_INTERVALS),
    )
    lo = _LINEAR_CURVE[i]
    return lo + (s - np.float32(i)) * (_LINEAR_CURVE[i + np.uint32(1)] - lo)


@kernel()
def _lab_f(t):
    """CIE f(t) of t in [0, 1] (`lab._lab_f`, skimage's constants) from sRGB -> L's L(Y) table, which
    the gateway's sRGB -> L keeps warm: f = (L + 16) / 116, within 4e-7."""
    s = t * np.float32(_L_INTERVALS)
    i = min(
        np.uint32(np.int32(min(max(s, np.float32(0.0)), np.float32(_L_INTERVALS)))), np.uint32(_L_INTERVALS)
    )
    lo = _L_TABLE[i]
    return (lo + (s - np.float32(i)) * (_L_TABLE[i + np.uint32(1)] - lo) + np.float32(16.0)) * np.float32(
        1.0 / 116.0
    )


@kernel(
    [
        types.void(
            readonly_array(dtype, 2),
            readonly_array(dtype, 2),
            readonly_array(types.float32, 2),
            types.int64,
            types.boolean,
            types.float32,
            array(types.float32, 2),
        )
        for dtype in (types.uint16, types.float32)
    ],
    fast=False,
)
def _hue_chroma_kernel(hue, chroma, gray_full, stride, fading, quantile, out):
    """`hue_chroma.decode_ab` with hue `expectation(-cf)` and chroma by a quantile (`median`, `q75`):
    the gray pooled over stride x stride cells of `gray_full`; the normalising sums and the CMF in
    numpy's order (so the quantile bin is the same), the circular resultant in float32 (numpy's
    tensordot sums in BLAS's order: within 1e-6); sRGB -> Lab by skimage's formulas in float64.
    out: (2, pixels) a and b."""
    bins, pixels = hue.shape
    width = gray_full.shape[1] // stride
    cell = np.float32(stride * stride)
    hue_sum = np.zeros(pixels, np.float32)
    chroma_sum = np.zeros(pixels, np.float32)
    for k in range(bins):
        for p in range(pixels):
            hue_sum[p] += _value(hue[k, p])
            chroma_sum[p] += _value(chroma[k, p])
    tiny = np.float32(1e-12)
    for p in range(pixels):
        hue_sum[p] = max(hue_sum[p], tiny)
        chroma_sum[p] = max(chroma_sum[p], tiny)
    rx = np.zeros(pixels, np.float32)
    ry = np.zeros(pixels, np.float32)
    running = np.zeros(pixels, np.float32)
    below = np.zeros(pixels, np.int32)
    # Divisions per bin cost 0.8 ns each (4x a multiply): one reciprocal per pixel instead. The hue
    # needs no more (numpy's tensordot sums in another order anyway); the chroma CMF by reciprocals is
    # within 32 x 2 ulp of numpy's, so pixels whose CMF comes within 1e-5 of the quantile are redone
    # below with numpy's divisions, and the quantile bin stays numpy's exactly.
    inverse = np.empty(pixels, np.float32)
    for p in range(pixels):
        inverse[p] = np.float32(1.0) / hue_sum[p]
    for k in range(bins):
        c, s = _HC_COS[k], _HC_SIN[k]
        for p in range(pixels):
            weight = _value(hue[k, p]) * inverse[p]
            rx[p] += weight * c
            ry[p] += weight * s
    for p in range(pixels):
        inverse[p] = np.float32(1.0) / chroma_sum[p]
    margin = np.full(pixels, np.float32(1.0))
    for k in range(bins):
        for p in range(pixels):
            running[p] += _value(chroma[k, p]) * inverse[p]
            below[p] += np.int32(running[p] < quantile)
            margin[p] = min(margin[p], abs(running[p] - quantile))
    for p in range(pixels):
        if margin[p] < np.float32(1e-5):
            exact = np.float32(0.0)
            count = 0
            for k in range(bins):
                exact += _value(chroma[k, p]) / chroma_sum[p]
                count += 1 if exact < quantile else 0
            below[p] = count
    six = np.float32(6.0)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for p in range(pixels):
        h = np.float32(np.arctan2(ry[p], rx[p])) / _HC_TWO_PI
        h = h - np.float32(np.floor(h))  # numpy's mod 1 (h in (-1/2, 1/2])
        if h >= one:
            h = zero
        factor = one
        if fading:
            length = np.float32(np.hypot(rx[p], ry[p])) / np.float32(bins)
            factor = min(max(length, zero), np.float32(_FADING_LIMIT)) / np.float32(_FADING_LIMIT)
        row, col = (p // width) * stride, (p % width) * stride
        total = zero
        for u in range(stride):
            for v in range(stride):
                total += gray_full[row + u, col + v]
        g = total / cell
        ch = _HC_CENTRES[min(below[p], bins - 1)] * factor
        value = g + ch / np.float32(2.0)
        denominator = np.float32(2.0) * g + ch
        sat = np.float32(2.0) * ch / denominator if denominator > zero else zero
        h = min(max(h, zero), one)
        sat = min(max(sat, zero), one)
        value = min(max(value, zero), one)
        sector_f = np.floor(h * six)
        f = h * six - sector_f
        sector = np.int64(sector_f) % 6
        pp = value * (one - sat)
        q = value * (one - f * sat)
        t = value * (one - (one - f) * sat)
        if sector == 0:
            r, gg, b = value, t, pp
        elif sector == 1:
            r, gg, b = q, value, pp
        elif sector == 2:
            r, gg, b = pp, value, t
        elif sector == 3:
            r, gg, b = pp, q, value
        elif sector == 4:
            r, gg, b = t, pp, value
        else:
            r, gg, b = value, pp, q
        r = min(max(r, zero), one)
        gg = min(max(gg, zero), one)
        b = min(max(b, zero), one)
        shift = g - (r + gg + b) / np.float32(3.0)  # match_lightness
        x = _srgb_to_linear(min(max(r + shift, zero), one))
        y = _srgb_to_linear(min(max(gg + shift, zero), one))
        z = _srgb_to_linear(min(max(b + shift, zero), one))
        fx = _lab_f(_XN00 * x + _XN01 * y + _XN02 * z)
        fy = _lab_f(_XN10 * x + _XN11 * y + _XN12 * z)
        fz = _lab_f(_XN20 * x + _XN21 * y + _XN22 * z)
        out[0, p] = np.float32(500.0) * (fx - fy)
        out[1, p] = np.float32(200.0) * (fy - fz)


_KERNEL_HUE = {"expectation-cf": True, "expectation": False}  # method -> chromatic fading
_KERNEL_CHROMA = {"median": 0.5, "q75": 0.75}


def hue_chroma_ab(
    hue: NDArray[Any], chroma: NDArray[Any], lightness: NDArray[Any], *, hue_method: str, chroma_method: str
) -> NDArray[np.float32]:
    """`hue_chroma.decode_ab(hue, chroma, lightness, ...)`: the distributions `(32, h, w)` (float16 or
    float32) to `(2, h, w)` ab. The default methods (and `expectation`, `q75`) in one kernel; the
    others by the numpy decode, with the gray from `neutral_gray`."""
    gray_full = neutral_gray(lightness)
    if (
        hue_method not in _KERNEL_HUE
        or chroma_method not in _KERNEL_CHROMA
        or hue.shape != chroma.shape
        or hue.ndim != 3
        or hue.shape[0] != _HC_BINS
        or hue.dtype != chroma.dtype
        or hue.dtype not in (np.float16, np.float32)
    ):
        return hue_chroma.decode_ab(
            hue, chroma, lightness, hue_method=hue_method, chroma_method=chroma_method, gray=gray_full
        )
    bins, h, w = hue.shape
    stride = gray_full.shape[0] // h
    if stride < 1 or gray_full.shape[1] // w != stride:
        hue_chroma.pool_to(gray_full, (h, w))  # raises its ValueError
    ab = np.empty((2, h * w), np.float32)
    flat_hue = np.ascontiguousarray(hue).reshape(bins, h * w)
    flat_chroma = np.ascontiguousarray(chroma).reshape(bins, h * w)
    if hue.dtype == np.float16:
        flat_hue, flat_chroma = flat_hue.view(np.uint16), flat_chroma.view(np.uint16)
    hue_fading, quantile = _KERNEL_HUE[hue_method], np.float32(_KERNEL_CHROMA[chroma_method])
    _hue_chroma_kernel(flat_hue, flat_chroma, gray_full, stride, hue_fading, quantile, ab)
    return ab.reshape(2, h, w)
