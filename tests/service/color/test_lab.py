"""service.color.lab against scikit-image, the library that made the colorizers' training L (D65, 2°)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from skimage import color

from service.color import lab

TOL = 1e-3  # max abs error in Lab units or sRGB [0, 1], the gateway's contract with skimage


def _rgb2lab(rgb: NDArray[Any]) -> NDArray[np.float64]:
    return color.rgb2lab(rgb)


def _lab2rgb(lab_values: NDArray[Any]) -> NDArray[np.float64]:
    with warnings.catch_warnings():  # skimage warns when it clips negative Z; we clip silently
        warnings.simplefilter("ignore", UserWarning)
        return color.lab2rgb(np.asarray(lab_values, np.float64))


def _edge_colours() -> NDArray[np.float64]:
    """Cube corners and edges, both sides of the sRGB knee, near-black and near-white."""
    levels = np.array([0.0, 1e-6, 0.01, 0.04045 - 1e-7, 0.04045, 0.04045 + 1e-7, 0.5, 0.999999, 1.0])
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3)


@pytest.fixture(scope="module")
def random_rgb() -> NDArray[np.float32]:
    return np.random.default_rng(0).random((64, 96, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def random_lab() -> NDArray[np.float64]:
    """Lab values well outside the sRGB gamut too: L in [0, 100], a and b in [-128, 128]."""
    rng = np.random.default_rng(1)
    return np.stack(
        [rng.uniform(0, 100, 20_000), rng.uniform(-128, 128, 20_000), rng.uniform(-128, 128, 20_000)], axis=-1
    )


class TestSrgbToLab:
    @pytest.mark.parametrize("shape", [(3,), (7, 3), (4, 5, 3), (2, 3, 4, 3), (0, 3)])
    def test_shapes(self, shape: tuple[int, ...]) -> None:
        out = lab.srgb_to_lab(np.full(shape, 0.5, np.float32))
        assert out.shape == shape
        assert out.dtype == np.float32

    @pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
    def test_random_colours_match_skimage(self, random_rgb: NDArray[np.float32], dtype: Any) -> None:
        rgb = random_rgb.astype(dtype)
        out = lab.srgb_to_lab(rgb)
        assert out.dtype == (np.float64 if dtype == np.float64 else np.float32)
        np.testing.assert_allclose(out, _rgb2lab(rgb.astype(np.float64)), rtol=0, atol=TOL)

    def test_gamut_edges_match_skimage(self) -> None:
        rgb = _edge_colours()
        np.testing.assert_allclose(lab.srgb_to_lab(rgb.astype(np.float32)), _rgb2lab(rgb), rtol=0, atol=TOL)

    def test_black_and_white(self) -> None:
        rgb = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
        out = lab.srgb_to_lab(rgb)
        np.testing.assert_allclose(out[:, 0], [0, 100], atol=1e-4)
        # skimage's white is not exactly neutral either (its matrix rows and white point are rounded).
        np.testing.assert_allclose(out, _rgb2lab(rgb.astype(np.float64)), atol=1e-4)

    def test_uint8_every_level_and_random(self) -> None:
        rng = np.random.default_rng(2)
        levels = np.arange(256, dtype=np.uint8)
        rgb = np.concatenate(
            [
                np.stack([levels, np.roll(levels, 85), np.roll(levels, 170)], -1),
                rng.integers(0, 256, (5000, 3)),
            ]
        ).astype(np.uint8)
        out = lab.srgb_to_lab(rgb)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, _rgb2lab(rgb), rtol=0, atol=TOL)

    def test_uint16_matches_skimage(self) -> None:
        rgb = np.random.default_rng(3).integers(0, 65536, (40, 50, 3)).astype(np.uint16)
        rgb[0, :3] = [[0, 0, 0], [65535, 65535, 65535], [65535, 0, 0]]
        np.testing.assert_allclose(lab.srgb_to_lab(rgb), _rgb2lab(rgb), rtol=0, atol=TOL)

    def test_non_contiguous_input(self, random_rgb: NDArray[np.float32]) -> None:
        view = random_rgb[::2, ::3]
        np.testing.assert_allclose(lab.srgb_to_lab(view), _rgb2lab(view.astype(np.float64)), atol=TOL)

    def test_spans_several_blocks(self) -> None:
        rgb = np.random.default_rng(4).random((3 * lab._BLOCK + 17, 3), dtype=np.float32)
        np.testing.assert_allclose(lab.srgb_to_lab(rgb), _rgb2lab(rgb.astype(np.float64)), atol=TOL)

    def test_rejects_wrong_channel_count(self) -> None:
        with pytest.raises(ValueError, match=r"\(\.\.\., 3\), got \(2, 4\)"):
            lab.srgb_to_lab(np.zeros((2, 4), np.float32))

    def test_rejects_signed_integers(self) -> None:
        with pytest.raises(TypeError, match="int32"):
            lab.srgb_to_lab(np.zeros((2, 3), np.int32))


class TestSrgbToL:
    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
    def test_matches_skimage_l(self, dtype: Any) -> None:
        rng = np.random.default_rng(5)
        if np.dtype(dtype).kind == "u":
            rgb = rng.integers(0, np.iinfo(dtype).max + 1, (30, 40, 3)).astype(dtype)
        else:
            rgb = rng.random((30, 40, 3)).astype(dtype)
        out = lab.srgb_to_l(rgb)
        assert out.shape == (30, 40)
        assert out.dtype == (np.float64 if dtype == np.float64 else np.float32)
        np.testing.assert_allclose(out, _rgb2lab(rgb)[..., 0], rtol=0, atol=TOL)

    def test_edges(self) -> None:
        rgb = _edge_colours()
        np.testing.assert_allclose(lab.srgb_to_l(rgb), _rgb2lab(rgb)[..., 0], rtol=0, atol=TOL)


class TestGrayToL:
    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
    def test_every_code_matches_skimage(self, dtype: Any) -> None:
        gray = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
        expected = _rgb2lab(np.repeat(gray[:, None], 3, axis=1))[:, 0]
        out = lab.gray_to_l(gray)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=TOL)

    def test_float_gray_equals_tiled_rgb(self) -> None:
        gray = np.random.default_rng(6).random((20, 30), dtype=np.float32)
        tiled = np.repeat(gray[..., None], 3, axis=-1)
        np.testing.assert_allclose(lab.gray_to_l(gray), _rgb2lab(tiled.astype(np.float64))[..., 0], atol=TOL)
        np.testing.assert_allclose(lab.gray_to_l(gray), lab.srgb_to_l(tiled), atol=1e-4)


class TestLabToSrgb:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_matches_skimage_in_and_out_of_gamut(self, random_lab: NDArray[np.float64], dtype: Any) -> None:
        out = lab.lab_to_srgb(random_lab.astype(dtype))
        assert out.dtype == dtype
        np.testing.assert_allclose(out, _lab2rgb(random_lab), rtol=0, atol=TOL)

    def test_gamut_edges_match_skimage(self) -> None:
        edges = _rgb2lab(_edge_colours())
        np.testing.assert_allclose(lab.lab_to_srgb(edges.astype(np.float32)), _lab2rgb(edges), atol=TOL)

    def test_round_trip(self, random_rgb: NDArray[np.float32]) -> None:
        back = lab.lab_to_srgb(lab.srgb_to_lab(random_rgb))
        np.testing.assert_allclose(back, random_rgb, rtol=0, atol=1e-4)

    def test_float16_computes_in_float32(self) -> None:
        out = lab.lab_to_srgb(np.array([[50.0, 10.0, -10.0]], np.float16))
        assert out.dtype == np.float32

    def test_unclipped_matches_plain_formula(self, random_lab: NDArray[np.float64]) -> None:
        # skimage always clips; the unclipped oracle is skimage's XYZ plus the sRGB curve written out.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            xyz = color.lab2xyz(random_lab)
        linear = xyz @ np.linalg.inv(color.colorconv.xyz_from_rgb).T
        safe = np.maximum(linear, 0.0031308)
        expected = np.where(linear > 0.0031308, 1.055 * safe ** (1 / 2.4) - 0.055, 12.92 * linear)
        out = lab.lab_to_srgb(random_lab, clip=False)
        assert out.min() < -0.1 and out.max() > 1.1  # the sample does leave the gamut
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)  # knee joins: <= 2e-6
        np.testing.assert_array_equal(np.clip(out, 0, 1), lab.lab_to_srgb(random_lab))


class TestLabToSrgbUint8:
    @staticmethod
    def _check_against_skimage(out: NDArray[np.uint8], lab_values: NDArray[Any], tie: float) -> None:
        """Equal to skimage's round(255 x), except by one code where skimage lies within `tie` of x.5."""
        scaled = _lab2rgb(lab_values) * 255.0
        diff = out.astype(np.int64) - np.round(scaled)
        assert np.abs(diff).max() <= 1
        near_tie = np.abs(scaled - np.floor(scaled) - 0.5) < tie
        assert not np.any(diff[~near_tie]), (
            f"{np.count_nonzero(diff[~near_tie])} codes differ away from a tie"
        )

    def test_float64_is_exact_rounding(self, random_lab: NDArray[np.float64]) -> None:
        out = lab.lab_to_srgb_uint8(random_lab)
        assert out.dtype == np.uint8 and out.shape == random_lab.shape
        # 1e-4 of a code: the branches of skimage's piecewise curves are up to 4e-7 apart at their knees.
        self._check_against_skimage(out, random_lab, tie=1e-4)

    def test_float32_within_float32_error(self, random_lab: NDArray[np.float64]) -> None:
        values = random_lab.astype(np.float32)
        self._check_against_skimage(lab.lab_to_srgb_uint8(values), values, tie=2e-3)

    def test_every_uint8_colour_round_trips(self) -> None:
        rgb = np.random.default_rng(7).integers(0, 256, (200_000, 3)).astype(np.uint8)
        rgb[:256] = np.arange(256)[:, None]  # every gray level, where the sRGB curve is steepest
        np.testing.assert_array_equal(lab.lab_to_srgb_uint8(lab.srgb_to_lab(rgb)), rgb)

    def test_gamut_clamp(self) -> None:
        values = np.array([[100.0, 127.0, 127.0], [0.0, -128.0, -128.0], [100.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        out = lab.lab_to_srgb_uint8(values)
        np.testing.assert_array_equal(out[2:], [[255, 255, 255], [0, 0, 0]])
        self._check_against_skimage(out, values, tie=1e-4)

    def test_planes_equal_interleaved(self, random_lab: NDArray[np.float64]) -> None:
        values = random_lab.astype(np.float32).reshape(100, 200, 3)
        planes = lab.lab_planes_to_srgb_uint8(
            values[..., 0].copy(), values[..., 1].copy(), values[..., 2].copy()
        )
        np.testing.assert_array_equal(planes, lab.lab_to_srgb_uint8(values))

    def test_planes_must_share_a_shape(self) -> None:
        with pytest.raises(ValueError, match=r"\(2, 2\), \(2, 3\)"):
            lab.lab_planes_to_srgb_uint8(np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 2)))


class TestNeutralGray:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_is_the_channel_mean_of_lab_to_srgb(self, dtype: Any) -> None:
        lightness = np.linspace(0.0, 100.0, 70_007).astype(dtype).reshape(7, 10_001)  # spans two blocks
        neutral = np.stack([lightness, np.zeros_like(lightness), np.zeros_like(lightness)], axis=-1)
        out = lab.neutral_gray(lightness)
        assert out.shape == lightness.shape and out.dtype == dtype
        # Y x (row sum) vs the 3x3 product of (Y, Y, Y): one rounding apart in the working precision.
        atol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, lab.lab_to_srgb(neutral).mean(axis=-1), rtol=0, atol=atol)

    def test_matches_skimage(self) -> None:
        lightness = np.linspace(0.0, 100.0, 1001)
        neutral = np.stack([lightness, np.zeros_like(lightness), np.zeros_like(lightness)], axis=-1)
        np.testing.assert_allclose(lab.neutral_gray(lightness), _lab2rgb(neutral).mean(axis=-1), atol=TOL)


class TestTinyInputs:
    """cv2's binding reads a 1- or 4-element array beside a scalar as two scalars (a wrong max, nothing
    written in place): every path, on 1 to 5 pixels and on a last block of that size, against skimage."""

    @pytest.mark.parametrize("pixels", [1, 2, 3, 4, 5, (1 << 16) + 1, (1 << 16) + 4])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_every_path_matches_skimage(self, pixels: int, dtype: Any) -> None:
        rng = np.random.default_rng(pixels)
        rgb = rng.random((pixels, 3)).astype(dtype)
        rgb[0] = (0.01, 0.5, 0.002)  # both sides of the sRGB knee in the first pixel
        np.testing.assert_allclose(lab.srgb_to_lab(rgb), _rgb2lab(rgb), atol=TOL)
        np.testing.assert_allclose(lab.srgb_to_l(rgb), _rgb2lab(rgb)[:, 0], atol=TOL)
        values = rng.uniform((0, -128, -128), (100, 128, 128), (pixels, 3)).astype(dtype)
        values[0] = (1.0, 0.0, 120.0)  # f below its knee, and f_z below 0
        np.testing.assert_allclose(lab.lab_to_srgb(values), _lab2rgb(values), atol=TOL)
        codes = lab.lab_to_srgb_uint8(values).astype(np.int64)
        assert np.abs(codes - np.round(_lab2rgb(values) * 255.0)).max() <= 1
        neutral = np.stack([values[:, 0], np.zeros(pixels), np.zeros(pixels)], axis=-1)
        np.testing.assert_allclose(lab.neutral_gray(values[:, 0]), _lab2rgb(neutral).mean(axis=-1), atol=TOL)
