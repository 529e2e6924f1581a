"""service.color.fused (the gateway's numba kernels) against the numpy specification in lab / ab_decode
and against the independent oracles: skimage (colour), PIL (resize), a float64 annealed mean, torch's
bilinear rule (through ab_decode.resize_ab, itself tested bit for bit against torch)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from skimage import color

import contract
from service import codec
from service.color import ab_decode, fused, hue_chroma, lab
from service.errors import InvalidArgument

L_TOL = 1e-4  # fused L vs lab.srgb_to_l (the table interpolation's bound is 4e-5)
SKIMAGE_TOL = 1e-3  # the gateway's contract with skimage (tests/service/color/test_lab.py)


def _skimage_l(rgb: NDArray[np.uint8]) -> NDArray[np.float64]:
    return color.rgb2lab(rgb.astype(np.float64) / 255.0)[..., 0]


def _lab2rgb(values: NDArray[Any]) -> NDArray[np.float64]:
    with warnings.catch_warnings():  # skimage warns when it clips negative Z
        warnings.simplefilter("ignore", UserWarning)
        return color.lab2rgb(np.asarray(values, np.float64))


@pytest.fixture(scope="module")
def photo_like() -> NDArray[np.uint8]:
    """Random colours, every gray level (where the sRGB curve is steepest) and the cube's corners."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 211, 3), dtype=np.uint8)
    rgb[0, :211] = np.arange(211)[:, None]
    rgb[1, :45] = np.arange(211, 256)[:, None]
    corners = np.array(np.meshgrid([0, 255], [0, 255], [0, 255], indexing="ij")).reshape(3, -1).T
    rgb[2, :8] = corners
    return rgb


class TestSrgb8ToL:
    def test_matches_lab_and_skimage(self, photo_like: NDArray[np.uint8]) -> None:
        out = fused.srgb8_to_l(photo_like)
        assert out.shape == photo_like.shape[:2] and out.dtype == np.float32
        np.testing.assert_allclose(out, lab.srgb_to_l(photo_like), rtol=0, atol=L_TOL)
        np.testing.assert_allclose(out, _skimage_l(photo_like), rtol=0, atol=SKIMAGE_TOL)

    def test_black_white_and_every_gray(self) -> None:
        gray = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
        out = fused.srgb8_to_l(gray)[0]
        assert abs(out[0]) <= L_TOL and abs(out[255] - 100.0) <= L_TOL
        np.testing.assert_allclose(out, lab.gray_to_l(np.arange(256, dtype=np.uint8)), rtol=0, atol=L_TOL)

    @pytest.mark.parametrize("shape", [(1, 1, 3), (1, 17, 3), (17, 1, 3), (3, 5, 3)])
    def test_odd_shapes_and_read_only_input(self, shape: tuple[int, ...]) -> None:
        rgb = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        rgb.flags.writeable = False  # as service.codec hands it over
        np.testing.assert_allclose(fused.srgb8_to_l(rgb), lab.srgb_to_l(rgb), rtol=0, atol=L_TOL)

    def test_non_contiguous_input(self, photo_like: NDArray[np.uint8]) -> None:
        view = photo_like[::2, ::3]
        np.testing.assert_allclose(fused.srgb8_to_l(view), lab.srgb_to_l(view), rtol=0, atol=L_TOL)

    def test_rejects_other_than_uint8_rgb(self) -> None:
        with pytest.raises(ValueError, match="uint8"):
            fused.srgb8_to_l(np.zeros((2, 2, 3), np.uint16))
        with pytest.raises(ValueError, match="uint8"):
            fused.srgb8_to_l(np.zeros((2, 2), np.uint8))


class TestResizeL:
    @pytest.mark.parametrize(
        ("shape", "size"),
        [
            ((512, 512), (256, 256)),  # the gateway's default, 2x down
            ((512, 768), (256, 256)),  # both axes, different ratios
            ((2048, 2048), (256, 256)),  # 8x down: 33-tap support
            ((100, 37), (256, 256)),  # up: the working square is larger than the image
            ((1, 1), (64, 64)),
            ((1, 300), (64, 64)),
            ((300, 1), (64, 64)),
            ((257, 255), (64, 64)),  # not multiples of the size
        ],
    )
    def test_is_pil_bicubic(self, shape: tuple[int, int], size: tuple[int, int]) -> None:
        rng = np.random.default_rng(2)
        l = rng.uniform(0, 100, shape).astype(np.float32)  # noqa: E741
        expected = ab_decode.resize_l(l, size)  # PIL's own resize
        out = fused.resize_l(l, size)
        assert out.shape == size and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-3)

    def test_same_size_is_a_copy_and_overshoot_is_clipped(self) -> None:
        step = np.zeros((16, 16), np.float32)
        step[:, 8:] = 100.0
        np.testing.assert_array_equal(fused.resize_l(step, (16, 16)), step)
        out = fused.resize_l(step, (16, 64))
        assert out.min() == 0.0 and out.max() == 100.0

    def test_coefficients_are_pils(self) -> None:
        # Against PIL on a unit impulse: each output pixel's weight on input pixel 5.
        impulse = np.zeros((1, 40), np.float32)
        impulse[0, 5] = 1.0
        pil = np.asarray(Image.fromarray(impulse).resize((9, 1), Image.Resampling.BICUBIC))[0]
        bounds, weights = fused.pil_bicubic_coeffs(40, 9)
        ours = np.array(
            [weights[o, 5 - b[0]] if b[0] <= 5 < b[0] + b[1] else 0.0 for o, b in enumerate(bounds)]
        )
        np.testing.assert_allclose(ours, pil, rtol=0, atol=1e-6)

    def test_rejects_bad_sizes(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            fused.resize_l(np.zeros((4, 4), np.float32), (0, 4))
        with pytest.raises(ValueError, match=r"\(H, W\)"):
            fused.resize_l(np.zeros((4, 4, 1), np.float32), (2, 2))


@pytest.fixture(scope="module")
def logits() -> NDArray[np.float32]:
    """Peaked like a trained head: a few strong bins per pixel over a noisy floor; two images."""
    rng = np.random.default_rng(4)
    values = rng.normal(0.0, 2.0, (2, contract.NUM_AB_BINS, 13, 11)).astype(np.float32)
    values[:, rng.integers(0, contract.NUM_AB_BINS, 5)] += 6.0
    return values


def _float64_annealed_mean(logits: NDArray[Any], temperature: float) -> NDArray[np.float64]:
    bins = ab_decode.ab_bins().astype(np.float64)
    x = logits.astype(np.float64) / temperature
    z = np.exp(x - x.max(axis=1, keepdims=True))
    z /= z.sum(axis=1, keepdims=True)
    return np.einsum("nkhw,kc->nchw", z, bins)


class TestAnnealedMean:
    @pytest.mark.parametrize("temperature", [1.0, contract.ANNEALED_T_DEFAULT, 0.1, 0.002])
    @pytest.mark.parametrize("dtype", [np.float16, np.float32])
    def test_matches_the_reference_and_float64(
        self, logits: NDArray[np.float32], temperature: float, dtype: Any
    ) -> None:
        values = logits.astype(dtype)
        out = fused.annealed_mean(values, temperature)
        assert out.shape == (2, 2, 13, 11) and out.dtype == np.float32
        np.testing.assert_allclose(out, ab_decode.annealed_mean(values, temperature), rtol=0, atol=1e-3)
        np.testing.assert_allclose(out, _float64_annealed_mean(values, temperature), rtol=0, atol=1e-3)

    def test_widely_spread_and_extreme_float16_logits(self) -> None:
        rng = np.random.default_rng(5)
        values = rng.uniform(-60000, 60000, (1, contract.NUM_AB_BINS, 4, 4)).astype(np.float16)
        values[0, :, 0, 0] = 0.0  # a flat distribution: the plain mean of the bins
        out = fused.annealed_mean(values, 0.38)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, ab_decode.annealed_mean(values, 0.38), rtol=0, atol=1e-3)
        np.testing.assert_allclose(out[0, :, 0, 0], ab_decode.ab_bins().mean(axis=0), atol=1e-3)

    def test_each_bin_decodes_to_its_centre(self) -> None:
        onehot = np.full((1, contract.NUM_AB_BINS, 1, contract.NUM_AB_BINS), -50.0, np.float16)
        onehot[0, np.arange(contract.NUM_AB_BINS), 0, np.arange(contract.NUM_AB_BINS)] = 50.0
        out = fused.annealed_mean(onehot, 1.0)[0, :, 0].T
        np.testing.assert_allclose(out, ab_decode.ab_bins(), rtol=0, atol=1e-3)

    def test_tiny_t_is_the_argmax_bin_and_bad_t_is_refused(self, logits: NDArray[np.float32]) -> None:
        np.testing.assert_array_equal(
            fused.annealed_mean(logits, 1e-4), ab_decode.annealed_mean(logits, 1e-4)
        )
        for temperature in (0.0, 1.5, float("nan")):
            with pytest.raises(InvalidArgument):
                fused.annealed_mean(logits, temperature)


def _exact(lightness: NDArray[np.float32], ab: NDArray[np.float32]) -> NDArray[np.uint8]:
    """The specification: resize_ab (torch's bilinear rule) then the exact uint8 rounding."""
    up = ab_decode.resize_ab(ab, (lightness.shape[0], lightness.shape[1]))
    return lab.lab_planes_to_srgb_uint8(lightness, up[0], up[1])


class TestLabToSrgb8Upsampled:
    @pytest.mark.parametrize(
        ("shape", "small"),
        [
            ((512, 768), (64, 64)),  # eccv16 / larsson16: H/4 of the working square
            ((512, 512), (256, 256)),  # siggraph17: the working square
            ((37, 53), (64, 64)),  # smaller than the working grid: bilinear down, no antialias
            ((1, 1), (64, 64)),
            ((1, 300), (64, 64)),
            ((300, 1), (1, 1)),
            ((257, 129), (64, 64)),
        ],
    )
    def test_matches_the_exact_rounding_reference(
        self, shape: tuple[int, int], small: tuple[int, int]
    ) -> None:
        rng = np.random.default_rng(6)
        lightness = rng.uniform(0, 100, shape).astype(np.float32)
        ab = rng.uniform(-110, 110, (2, *small)).astype(np.float32)  # well outside the gamut too
        out = fused.lab_to_srgb8_upsampled(lightness, ab)
        assert out.shape == (*shape, 3) and out.dtype == np.uint8
        diff = np.abs(out.astype(np.int64) - _exact(lightness, ab))
        assert diff.max() <= 1
        assert np.mean(diff.max(axis=-1) == 0) >= 0.999

    def test_against_skimage(self) -> None:
        rng = np.random.default_rng(7)
        lightness = rng.uniform(0, 100, (64, 64)).astype(np.float32)
        ab = rng.uniform(-100, 100, (2, 64, 64)).astype(np.float32)  # same size: no interpolation
        out = fused.lab_to_srgb8_upsampled(lightness, ab)
        expected = _lab2rgb(np.stack([lightness, ab[0], ab[1]], axis=-1)) * 255.0
        assert np.abs(out - np.round(expected)).max() <= 1

    def test_black_white_gray_and_saturated_clipping(self) -> None:
        lightness = np.array([[0.0, 100.0, 50.0, 100.0, 0.0, 60.0]], np.float32)
        a = np.array([[0.0, 0.0, 0.0, 127.0, -128.0, 127.0]], np.float32)
        b = np.array([[0.0, 0.0, 0.0, 127.0, -128.0, -128.0]], np.float32)
        out = fused.lab_to_srgb8_upsampled(lightness, np.stack([a, b]))
        np.testing.assert_array_equal(out[0, :3], [[0, 0, 0], [255, 255, 255], [119, 119, 119]])
        np.testing.assert_array_equal(out, lab.lab_planes_to_srgb_uint8(lightness, a, b))

    def test_float16_ab_and_read_only_inputs(self) -> None:
        rng = np.random.default_rng(8)
        lightness = rng.uniform(0, 100, (40, 30)).astype(np.float32)
        ab = rng.uniform(-80, 80, (2, 16, 16)).astype(np.float16)
        for array in (lightness, ab):
            array.flags.writeable = False
        diff = fused.lab_to_srgb8_upsampled(lightness, ab).astype(np.int64) - _exact(
            lightness, ab.astype(np.float32)
        )
        assert np.abs(diff).max() <= 1

    def test_packed_quantizer_is_the_two_table_one_exactly(self) -> None:
        """One packed lookup (code + 24-bit threshold position) gives `lab._uint8_quantizer`'s code for
        every float32 at and next to each threshold and bucket edge, and far outside the gamut."""
        base, threshold = lab._uint8_quantizer(np.dtype(np.float32).str)
        finite = threshold[np.isfinite(threshold)].astype(np.float32)
        edges = (np.arange(lab._QUANT_BUCKETS + 1) / lab._QUANT_BUCKETS).astype(np.float32)
        points = np.concatenate(
            [finite, edges, np.array([-1e30, -1.0, -1e-30, 0.0, 1e-40, 1.0, 1.5, 1e30], np.float32)]
        )
        values = np.concatenate(
            [points, np.nextafter(points, np.float32(-np.inf)), np.nextafter(points, np.float32(np.inf))]
        )
        values = np.concatenate(
            [values, np.random.default_rng(9).uniform(-0.1, 1.1, 20_000).astype(np.float32)]
        )
        bucket = np.clip(values * np.float32(lab._QUANT_BUCKETS), 0, lab._QUANT_BUCKETS - 1).astype(np.intp)
        expected = base[bucket] + (values >= threshold[bucket])
        got = np.array([fused._quantize(v) for v in values], np.int64)
        np.testing.assert_array_equal(got, expected)

    def test_bilinear_taps_are_resize_abs_weights(self) -> None:
        for size_in, size_out in ((64, 512), (64, 1), (1, 5), (256, 100), (7, 7)):
            lower, upper, frac = fused.bilinear_taps(size_in, size_out)
            matrix = np.zeros((size_out, size_in), np.float32)
            rows = np.arange(size_out)
            matrix[rows, lower] += 1 - frac
            matrix[rows, upper] += frac
            np.testing.assert_allclose(matrix, ab_decode._bilinear_weights(size_in, size_out), atol=1e-7)

    def test_rejects_bad_shapes(self) -> None:
        with pytest.raises(ValueError, match=r"\(2, h, w\)"):
            fused.lab_to_srgb8_upsampled(np.zeros((4, 4), np.float32), np.zeros((3, 4, 4), np.float32))


class TestLabToYCbCr420Upsampled:
    """The same pass to the planes a 4:2:0 JPEG stores: exactly `codec.ycbcr420` (itself tested
    against libjpeg's own conversion, tests/service/test_codec.py) of `lab_to_srgb8_upsampled`."""

    @pytest.mark.parametrize(
        ("shape", "small"),
        [((512, 768), (64, 64)), ((512, 512), (256, 256)), ((37, 53), (64, 64)), ((1, 1), (64, 64)),
         ((1, 300), (64, 64)), ((300, 1), (1, 1)), ((257, 129), (64, 64)), ((2, 2), (3, 5))],
    )  # fmt: skip
    def test_is_the_codecs_planes_of_the_srgb(self, shape: tuple[int, int], small: tuple[int, int]) -> None:
        rng = np.random.default_rng(16)
        lightness = rng.uniform(0, 100, shape).astype(np.float32)
        ab = rng.uniform(-110, 110, (2, *small)).astype(np.float32)  # well outside the gamut too
        expected = codec.ycbcr420(fused.lab_to_srgb8_upsampled(lightness, ab))
        for got, want in zip(
            fused.lab_to_ycbcr420_upsampled(lightness, ab),
            (expected.luma, expected.cb, expected.cr),
            strict=True,
        ):
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, want)

    def test_against_the_exact_rounding_reference(self) -> None:
        rng = np.random.default_rng(17)
        lightness = rng.uniform(0, 100, (96, 80)).astype(np.float32)
        ab = rng.uniform(-80, 80, (2, 24, 20)).astype(np.float16)
        for array in (lightness, ab):
            array.flags.writeable = False
        expected = codec.ycbcr420(_exact(lightness, ab.astype(np.float32)))
        got = fused.lab_to_ycbcr420_upsampled(lightness, ab)
        for plane, want in zip(got, (expected.luma, expected.cb, expected.cr), strict=True):
            assert np.abs(plane.astype(np.int64) - want).max() <= 1  # the sRGB's own <= 1

    def test_the_gateway_writes_jpeg_from_planes_and_the_rest_from_rgb(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A JPEG without alpha from the planes, byte for byte what encoding the sRGB gives (the width
        is a multiple of 16); PNG and JPEG with alpha from the sRGB."""
        from service.gateway import colorize

        spec = contract.MODELS["siggraph17"]
        rgb = np.random.default_rng(18).integers(0, 256, (40, 64, 3), dtype=np.uint8)
        data = codec.encode(rgb, None, "PNG")
        ab = np.random.default_rng(19).uniform(-60, 60, (2, 32, 32)).astype(np.float32)
        calls: list[str] = []

        def counted(name: str) -> Any:
            real = getattr(fused, name)

            def call(*args: Any) -> Any:
                calls.append(name)
                return real(*args)

            return call

        for name in ("lab_to_srgb8_upsampled", "lab_to_ycbcr420_upsampled"):
            monkeypatch.setattr(fused, name, counted(name))
        for fmt, alpha, kernel in (
            ("JPEG", None, "lab_to_ycbcr420_upsampled"),
            ("PNG", None, "lab_to_srgb8_upsampled"),
            ("JPEG", np.full((40, 64), 200, np.uint8), "lab_to_srgb8_upsampled"),
        ):
            options = colorize.ColorizeOptions("siggraph17", None, 32, fmt, 90)
            prepared = colorize.prepare(data, spec, options, max_pixels=1 << 20, max_bytes=1 << 22)
            prepared = dataclasses.replace(prepared, alpha=alpha)
            calls.clear()
            encoded, out_fmt = colorize.finish(prepared, ab, options)
            assert calls == [kernel] and out_fmt == fmt
            srgb = fused.lab_to_srgb8_upsampled(prepared.lightness, ab)
            assert encoded == codec.encode(srgb, alpha, fmt, 90)


class TestL8AndResized:
    @pytest.mark.parametrize(
        ("shape", "size"),
        [((64, 96), (16, 16)), ((37, 53), (8, 8)), ((1, 40), (4, 4)), ((20, 20), (40, 40)), ((9, 9), (9, 9))],
    )
    def test_identical_to_the_two_passes(self, shape: tuple[int, int], size: tuple[int, int]) -> None:
        rgb = np.random.default_rng(14).integers(0, 256, (*shape, 3), dtype=np.uint8)
        lightness, small = fused.srgb8_to_l_resized(rgb, size)
        np.testing.assert_array_equal(lightness, fused.srgb8_to_l(rgb))
        np.testing.assert_array_equal(small, fused.resize_l(fused.srgb8_to_l(rgb), size))

    def test_the_gateway_takes_it_for_large_images_only(self) -> None:
        from service.gateway import colorize

        spec = contract.MODELS["eccv16"]
        options = colorize.ColorizeOptions("eccv16", None, 32, "", 90)
        for side, fused_stage in ((64, False), (2048, True)):
            rgb = np.random.default_rng(15).integers(0, 256, (side, side, 3), dtype=np.uint8)
            data = codec.encode(rgb, None, "JPEG", 90)
            stages: list[str] = []
            prepared = colorize.prepare(
                data, spec, options, max_pixels=1 << 23, max_bytes=1 << 26, lap=stages.append
            )
            assert ("sRGB→L + resize L" in stages) == fused_stage
            decoded: Any = codec.decode(data, max_pixels=1 << 23, max_bytes=1 << 26).pixels
            np.testing.assert_array_equal(prepared.lightness, fused.srgb8_to_l(decoded))


class TestCompilation:
    def test_kernels_are_compiled_at_import(self) -> None:
        # Explicit signatures: compiled (or loaded from the cache) when the module is imported, i.e.
        # at gateway start; a call with other types would raise rather than compile on a request.
        kernels: tuple[Any, ...] = (
            fused._srgb8_to_l_kernel,
            fused._resize_kernel,
            fused._anneal_kernel,
            fused._widen_kernel,
            fused._lab_to_srgb8_kernel,
            fused._lab_to_ycc420_kernel,
            fused._neutral_gray_kernel,
            fused._hue_chroma_kernel,
            fused._l_and_rows_kernel,
        )
        for kernel in kernels:
            assert kernel.signatures, kernel
            assert not kernel._can_compile, kernel


class TestNeutralGray:
    def test_matches_lab_and_skimage(self) -> None:
        lightness = np.linspace(0.0, 100.0, 20_001).astype(np.float32).reshape(1, -1)
        out = fused.neutral_gray(lightness)
        assert out.shape == lightness.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, lab.neutral_gray(lightness), rtol=0, atol=2e-5)
        neutral = np.stack([lightness[0], np.zeros(20_001), np.zeros(20_001)], axis=-1)
        np.testing.assert_allclose(out[0], _lab2rgb(neutral).mean(axis=-1), rtol=0, atol=SKIMAGE_TOL)
        assert out[0, 0] == 0.0 and abs(out[0, -1] - 1.0) < 1e-5

    def test_gray_hook_of_hue_chroma_decode(self) -> None:
        from service.color import hue_chroma

        rng = np.random.default_rng(9)
        hue, chroma = rng.random((2, 32, 8, 8)).astype(np.float16)
        lightness = rng.uniform(0, 100, (32, 32)).astype(np.float32)
        expected = hue_chroma.decode_ab(hue, chroma, lightness)
        out = hue_chroma.decode_ab(hue, chroma, lightness, gray=fused.neutral_gray(lightness))
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3)


class TestHueChromaAb:
    """larsson16's decode in one kernel against `hue_chroma.decode_ab` (the numpy specification)."""

    @staticmethod
    def _inputs(seed: int, dtype: Any = np.float16) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.float32]]:
        rng = np.random.default_rng(seed)
        # peaked and flat distributions, as a network gives them
        centres = rng.integers(0, 32, (2, 1, 16, 16))
        bins = np.arange(32)[None, :, None, None]
        peaked = np.exp(-0.5 * ((bins - centres) / rng.uniform(0.5, 8.0, (2, 1, 16, 16))) ** 2)
        hists = (peaked + rng.uniform(0, 0.05, peaked.shape)).astype(dtype)
        lightness = rng.uniform(0, 100, (64, 64)).astype(np.float32)
        return hists[0], hists[1], lightness

    @pytest.mark.parametrize("hue_method", hue_chroma.HUE_METHODS)
    @pytest.mark.parametrize("chroma_method", hue_chroma.CHROMA_METHODS)
    @pytest.mark.parametrize("dtype", [np.float16, np.float32])
    def test_matches_the_numpy_decode(self, hue_method: str, chroma_method: str, dtype: Any) -> None:
        hue, chroma, lightness = self._inputs(10, dtype)
        expected = hue_chroma.decode_ab(
            hue, chroma, lightness, hue_method=hue_method, chroma_method=chroma_method
        )
        out = fused.hue_chroma_ab(hue, chroma, lightness, hue_method=hue_method, chroma_method=chroma_method)
        assert out.shape == (2, 16, 16) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3)

    def test_the_quantile_bin_is_numpys_at_exact_ties(self) -> None:
        # Flat chroma: the CMF is exactly 0.5 after 16 bins and 0.75 after 24; numpy's divisions
        # decide which bin is first to reach it, and the kernel must agree bit for bit.
        hue, _, lightness = self._inputs(11)
        flat = np.ones_like(hue)
        for method, quantile in (("median", 0.5), ("q75", 0.75)):
            out = fused.hue_chroma_ab(hue, flat, lightness, hue_method="mode", chroma_method=method)
            expected = hue_chroma.decode_ab(hue, flat, lightness, hue_method="mode", chroma_method=method)
            np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3)
            assert hue_chroma._quantile_bin(hue_chroma._normalised(flat, "c"), quantile)[0, 0] in (
                15,
                16,
                23,
                24,
            )

    def test_black_white_and_zero_histograms(self) -> None:
        hue, chroma, _ = self._inputs(12)
        for level in (0.0, 100.0):
            lightness = np.full((64, 64), level, np.float32)
            for h, c in ((hue, chroma), (np.zeros_like(hue), np.zeros_like(chroma))):
                out = fused.hue_chroma_ab(
                    h, c, lightness, hue_method="expectation-cf", chroma_method="median"
                )
                expected = hue_chroma.decode_ab(h, c, lightness)
                assert np.isfinite(out).all()
                np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3)

    def test_a_size_that_does_not_pool_is_refused(self) -> None:
        hue, chroma, _ = self._inputs(13)
        with pytest.raises(ValueError, match="pool"):
            fused.hue_chroma_ab(
                hue,
                chroma,
                np.zeros((60, 64), np.float32),
                hue_method="expectation-cf",
                chroma_method="median",
            )
