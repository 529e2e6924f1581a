"""service.color.quality against scikit-image's PSNR, the independent oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio

from service.color.quality import psnr, psnr_y

RNG = np.random.default_rng(7)


def _noisy_pair(dtype: type, shape: tuple[int, ...] = (24, 32, 3)) -> tuple[np.ndarray, np.ndarray]:
    clean = RNG.random(shape)
    noisy = np.clip(clean + RNG.normal(0, 0.05, shape), 0, 1)
    if np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max
        return np.round(clean * top).astype(dtype), np.round(noisy * top).astype(dtype)
    return clean.astype(dtype), noisy.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_psnr_matches_skimage_with_the_dtype_peak(dtype: type) -> None:
    a, b = _noisy_pair(dtype)
    data_range = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    expected = peak_signal_noise_ratio(a, b, data_range=data_range)  # float32: its MSE in float32
    assert psnr(a, b) == pytest.approx(expected, abs=1e-6)
    assert psnr(b, a) == pytest.approx(expected, abs=1e-6)


def test_psnr_mixed_float_widths_and_a_given_peak() -> None:
    a, b = _noisy_pair(np.float64, (16, 16))
    expected = peak_signal_noise_ratio(a, b, data_range=1.0)
    assert psnr(a.astype(np.float32), b) == pytest.approx(expected, abs=1e-5)
    assert psnr(a * 255, b * 255, peak=255.0) == pytest.approx(
        peak_signal_noise_ratio(a * 255, b * 255, data_range=255.0), abs=1e-9
    )


def test_psnr_by_hand_and_equal_images() -> None:
    a = np.full((4, 4, 3), 100, np.uint8)
    assert math.isclose(psnr(np.full_like(a, 101), a), 20 * math.log10(255))
    assert psnr(a, a) == math.inf
    assert psnr(a.astype(np.float32), a.astype(np.float32)) == math.inf


def test_psnr_refuses_what_it_cannot_judge() -> None:
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="shapes"):
        psnr(a, np.zeros((4, 5), np.uint8))
    with pytest.raises(TypeError, match="peak"):
        psnr(a, a.astype(np.float32))  # 0..255 or 0..1: the caller must say
    assert psnr(a, a.astype(np.float32) + 1, peak=255.0) == pytest.approx(20 * math.log10(255))


@pytest.mark.parametrize("border", [0, 4])
def test_psnr_y_is_skimage_luma_psnr_with_the_border_shaved(border: int) -> None:
    a, b = _noisy_pair(np.float32, (40, 36, 3))

    def luma(x: np.ndarray) -> np.ndarray:  # skimage: Y in [16, 235] for float RGB in [0, 1]
        y = rgb2ycbcr(x.astype(np.float64))[..., 0]
        return y[border:-border, border:-border] if border else y

    expected = peak_signal_noise_ratio(luma(a), luma(b), data_range=255.0)
    assert psnr_y(a, b, border) == pytest.approx(expected, abs=1e-6)


def test_psnr_y_reads_8_bit_images_as_their_float_values() -> None:
    a, b = _noisy_pair(np.uint8, (20, 20, 3))
    assert psnr_y(a, b) == pytest.approx(psnr_y(a / 255.0, b / 255.0), abs=1e-9)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr_y(a[..., 0], b[..., 0])
