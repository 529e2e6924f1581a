"""Tests for service.restore.padding."""

from __future__ import annotations

import numpy as np
import pytest

from service.restore.padding import Padding, as_float_image, padding_for


class TestPaddingFor:
    @pytest.mark.parametrize(
        ("h", "w", "want"),
        [
            (64, 96, (64, 96)),  # already fine: no padding
            (65, 97, (96, 128)),  # odd, just past a multiple
            (40, 33, (64, 64)),  # sides below 64 go up to the minimum
            (1, 7, (64, 64)),
            (200, 3, (224, 64)),
        ],
    )
    def test_padded_size(self, h: int, w: int, want: tuple[int, int]) -> None:
        p = padding_for(h, w, 32, 64)
        assert (h + p.top + p.bottom, w + p.left + p.right) == want

    def test_centred(self) -> None:
        p = padding_for(40, 33, 32, 64)
        assert (p.top, p.bottom, p.left, p.right) == (12, 12, 15, 16)

    def test_rejects_bad_multiple(self) -> None:
        with pytest.raises(ValueError, match="0"):
            padding_for(10, 10, 0, 64)


class TestPadding:
    @pytest.mark.parametrize("shape", [(40, 33, 3), (1, 5, 1), (5, 1, 3), (3, 70, 1), (64, 64, 3)])
    def test_apply_then_crop_is_identity(self, shape: tuple[int, int, int]) -> None:
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        p = padding_for(shape[0], shape[1], 32, 64)
        padded = p.apply(x)
        assert padded.shape[0] % 32 == 0 and padded.shape[1] % 32 == 0
        assert min(padded.shape[:2]) >= 64
        np.testing.assert_array_equal(p.crop(padded), x)

    def test_reflects(self) -> None:
        x = np.arange(5, dtype=np.float32)[None, :, None]  # one row 0..4
        row = Padding(0, 0, 2, 2).apply(x)[0, :, 0]
        np.testing.assert_array_equal(row, [2, 1, 0, 1, 2, 3, 4, 3, 2])

    def test_pad_wider_than_the_image_still_reflects(self) -> None:
        x = np.arange(3, dtype=np.float32)[None, :, None]
        row = Padding(0, 0, 0, 6).apply(x)[0, :, 0]
        np.testing.assert_array_equal(row, [0, 1, 2, 1, 0, 1, 2, 1, 0])

    def test_crop_with_scale(self) -> None:
        p = Padding(1, 2, 3, 4)
        out = np.zeros((4 * (5 + 3), 4 * (6 + 7), 3), np.float32)
        out[4:24, 12:36] = 1.0
        cropped = p.crop(out, scale=4)
        assert cropped.shape == (20, 24, 3) and cropped.min() == 1.0


class TestAsFloatImage:
    def test_uint8(self) -> None:
        x = np.array([[0, 128, 255]], np.uint8)
        np.testing.assert_allclose(as_float_image(x)[..., 0], [[0, 128 / 255, 1]], rtol=1e-6)

    def test_uint16(self) -> None:
        x = np.array([[0, 1, 65535]], np.uint16)
        out = as_float_image(x)
        assert out.dtype == np.float32 and out.shape == (1, 3, 1)
        np.testing.assert_allclose(out[..., 0], [[0, 1 / 65535, 1]], rtol=1e-6)

    def test_float_kept(self) -> None:
        x = np.random.default_rng(0).random((4, 5, 3))
        out = as_float_image(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, x, rtol=1e-6)

    def test_rejects_out_of_range(self) -> None:
        with pytest.raises(ValueError, match=r"\[-0.5, 1.0\]"):
            as_float_image(np.array([[-0.5, 1.0]]))

    @pytest.mark.parametrize("shape", [(4, 4, 4), (4, 4, 2), (4,), (2, 4, 4, 3)])
    def test_rejects_shapes(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
            as_float_image(np.zeros(shape, np.float32))

    def test_rejects_int32(self) -> None:
        with pytest.raises(ValueError, match="int32"):
            as_float_image(np.zeros((2, 2), np.int32))

    def test_rejects_nan(self) -> None:
        with pytest.raises(ValueError, match="NaN"):
            as_float_image(np.full((2, 2), np.nan))
