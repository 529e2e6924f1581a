"""service.color.ab_decode against plain float64 references and PyTorch (tests may import torch)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image

import contract
from service.color import ab_decode
from service.errors import InvalidArgument


@pytest.fixture(scope="module")
def bins() -> NDArray[np.float64]:
    return np.load(contract.asset_path("pts_in_hull.npy")).astype(np.float64)


@pytest.fixture(scope="module")
def logits() -> NDArray[np.float32]:
    """Peaked like a trained head: a few strong bins per pixel over a noisy floor."""
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 2.0, (2, 313, 7, 9)).astype(np.float32)
    values[:, rng.integers(0, 313, 5)] += 6.0
    return values


def reference(logits: NDArray[Any], bins: NDArray[np.float64], temperature: float) -> NDArray[np.float64]:
    """The paper's definition in float64: z = softmax, f_T(z) = exp(log z / T) normalised, mean of bins."""
    x = logits.astype(np.float64)
    z = np.exp(x - x.max(axis=1, keepdims=True))
    z /= z.sum(axis=1, keepdims=True)
    f = np.exp(np.log(z) / temperature)
    f /= f.sum(axis=1, keepdims=True)
    return np.einsum("nkhw,kc->nchw", f, bins)


class TestAnnealedMean:
    def test_bins_are_pts_in_hull_in_row_order(self, bins: NDArray[np.float64]) -> None:
        np.testing.assert_array_equal(ab_decode.ab_bins(), bins)

    @pytest.mark.parametrize("temperature", [1.0, contract.ANNEALED_T_DEFAULT, 0.1, 0.02])
    @pytest.mark.parametrize("dtype", [np.float32, np.float16])
    def test_matches_float64_reference(
        self, logits: NDArray[np.float32], bins: NDArray[np.float64], temperature: float, dtype: Any
    ) -> None:
        values = logits.astype(dtype)
        out = ab_decode.annealed_mean(values, temperature)
        assert out.shape == (2, 2, 7, 9) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference(values, bins, temperature), rtol=0, atol=1e-3)

    def test_t1_is_the_softmax_mean_of_the_pytorch_head(
        self, logits: NDArray[np.float32], bins: NDArray[np.float64]
    ) -> None:
        # ECCVGenerator: softmax over the 313 logits, then a bias-free 1x1 conv holding bins / 110, x 110.
        weight = torch.from_numpy((bins.T / contract.AB_NORM).astype(np.float32))[:, :, None, None]
        expected = F.conv2d(torch.softmax(torch.from_numpy(logits), dim=1), weight) * contract.AB_NORM
        np.testing.assert_allclose(ab_decode.annealed_mean(logits, 1.0), expected.numpy(), atol=1e-3)

    def test_annealing_sharpens_towards_the_mode(
        self, logits: NDArray[np.float32], bins: NDArray[np.float64]
    ) -> None:
        mode = bins[np.argmax(logits, axis=1)].transpose(0, 3, 1, 2)
        errors = [np.abs(ab_decode.annealed_mean(logits, t) - mode).mean() for t in (1.0, 0.38, 0.1, 0.01)]
        assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5

    @pytest.mark.parametrize("temperature", [1e-9, 1e-6, ab_decode.ARGMAX_BELOW_T * 0.99])
    @pytest.mark.parametrize("dtype", [np.float32, np.float16])
    def test_tiny_t_is_the_argmax_bin(
        self, logits: NDArray[np.float32], bins: NDArray[np.float64], temperature: float, dtype: Any
    ) -> None:
        values = logits.astype(dtype)
        mode = bins[np.argmax(values, axis=1)].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(ab_decode.annealed_mean(values, temperature), mode)

    def test_each_bin_decodes_to_its_centre(self, bins: NDArray[np.float64]) -> None:
        one_hot = np.full((1, 313, 1, 313), -30.0, np.float32)
        one_hot[0, np.arange(313), 0, np.arange(313)] = 30.0
        out = ab_decode.annealed_mean(one_hot, 1.0)
        np.testing.assert_allclose(out[0, :, 0, :].T, bins, atol=1e-3)

    @pytest.mark.parametrize("temperature", [1.0, contract.ANNEALED_T_DEFAULT])
    def test_widely_spread_logits_match_the_reference(
        self, bins: NDArray[np.float64], temperature: float
    ) -> None:
        # Spreads of 100+ put most exponents under the floor the decode clamps them to (e^-80, to keep
        # exp out of subnormals): the floored weights must not move the mean.
        rng = np.random.default_rng(4)
        values = rng.uniform(-150.0, 0.0, (1, 313, 6, 6)).astype(np.float32)
        values[:, rng.integers(0, 313, 3)] += 140.0  # a few near-top bins, so the mean is not one bin
        out = ab_decode.annealed_mean(values, temperature)
        np.testing.assert_allclose(out, reference(values, bins, temperature), rtol=0, atol=1e-3)

    def test_huge_logits_stay_finite(self) -> None:
        values = np.random.default_rng(1).normal(0, 1e4, (1, 313, 4, 4)).astype(np.float32)
        out = ab_decode.annealed_mean(values, 0.002)  # filterwarnings=error turns overflow into a failure
        assert np.isfinite(out).all()

    @pytest.mark.parametrize("temperature", [0.0, -0.5, 1.0001, float("nan"), float("inf")])
    def test_rejects_temperature_outside_0_1(self, temperature: float) -> None:
        with pytest.raises(InvalidArgument, match=f"temperature must be in \\(0, 1\\], got {temperature}"):
            ab_decode.annealed_mean(np.zeros((1, 313, 2, 2), np.float32), temperature)

    @pytest.mark.parametrize("shape", [(313, 2, 2), (1, 312, 2, 2), (1, 529, 2, 2)])
    def test_rejects_wrong_shapes(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match=r"\(N, 313, h, w\)"):
            ab_decode.annealed_mean(np.zeros(shape, np.float32), 0.38)


class TestResizeAb:
    def test_hand_computed_2x2_to_4x4(self) -> None:
        # Half-pixel centres: output i samples input (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25,
        # clamped at both ends, so one axis [0, 1] -> [0, 0.25, 0.75, 1].
        ab = np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32)
        axis = np.array([0.0, 0.25, 0.75, 1.0])
        expected = 2.0 * axis[:, None] + axis[None, :]
        np.testing.assert_allclose(ab_decode.resize_ab(ab, (4, 4))[0], expected, atol=1e-6)

    @pytest.mark.parametrize(
        ("size_in", "size_out"),
        [
            ((64, 64), (256, 256)),
            ((64, 48), (1000, 751)),
            ((7, 5), (7, 5)),
            ((30, 40), (11, 13)),
            ((1, 1), (3, 2)),
        ],
    )
    def test_matches_torch_interpolate(self, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        ab = np.random.default_rng(2).uniform(-110, 110, (2, 2, *size_in)).astype(np.float32)
        expected = F.interpolate(torch.from_numpy(ab), size=size_out, mode="bilinear", align_corners=False)
        out = ab_decode.resize_ab(ab, size_out)
        assert out.shape == (2, 2, *size_out) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=1e-4)

    @pytest.mark.parametrize(("size_in", "size_out"), [(64, 1000), (48, 751), (30, 11), (64, 256)])
    def test_weights_equal_torch_bit_for_bit(self, size_in: int, size_out: int) -> None:
        # Interpolating an identity matrix along one axis yields the interpolation matrix itself.
        eye = torch.eye(size_in)[None, None]
        expected = F.interpolate(eye, size=(size_out, size_in), mode="bilinear", align_corners=False)[0, 0]
        eye_np = np.eye(size_in, dtype=np.float32)
        np.testing.assert_array_equal(ab_decode.resize_ab(eye_np, (size_out, size_in)), expected.numpy())

    def test_rejects_empty_size(self) -> None:
        with pytest.raises(ValueError, match=r"\(0, 4\)"):
            ab_decode.resize_ab(np.zeros((2, 3, 3), np.float32), (0, 4))


class TestUpsampleAb:
    """The gateway's OpenCV path against `resize_ab`, the torch-exact reference."""

    @pytest.mark.parametrize(
        ("size_in", "size_out"),
        [((64, 64), (512, 768)), ((64, 64), (2048, 2048)), ((64, 48), (1000, 751)), ((30, 40), (11, 13)),
         ((1, 1), (3, 2)), ((64, 64), (1, 200)), ((64, 64), (64, 64))],
    )  # fmt: skip
    def test_matches_resize_ab(self, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        ab = np.random.default_rng(3).uniform(-110, 110, (2, *size_in)).astype(np.float32)
        a, b = ab_decode.upsample_ab(ab, size_out)
        assert a.shape == b.shape == size_out and a.dtype == b.dtype == np.float32
        # 2e-3 Lab units, looser than resize_ab's 1e-4 to torch: OpenCV computes each output pixel's
        # source coordinate in float32 (~1e-5 px at 2048 px), times ab steps of up to 220 between
        # neighbouring random pixels. Real ab is smooth; 2e-3 moves no uint8 code except at a tie.
        np.testing.assert_allclose(np.stack([a, b]), ab_decode.resize_ab(ab, size_out), rtol=0, atol=2e-3)

    def test_hand_computed_2x2_to_4x4(self) -> None:
        ab = np.array([[[0.0, 1.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
        axis = np.array([0.0, 0.25, 0.75, 1.0])
        np.testing.assert_allclose(ab_decode.upsample_ab(ab, (4, 4))[0], 2 * axis[:, None] + axis, atol=1e-6)

    @pytest.mark.parametrize("shape", [(3, 4, 4), (4, 4), (1, 2, 4, 4)])
    def test_rejects_other_than_two_planes(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match="must have shape"):
            ab_decode.upsample_ab(np.zeros(shape, np.float32), (8, 8))

    def test_rejects_empty_size(self) -> None:
        with pytest.raises(ValueError, match=r"\(4, 0\)"):
            ab_decode.upsample_ab(np.zeros((2, 3, 3), np.float32), (4, 0))


class TestResizeL:
    def test_shape_dtype_and_constant(self) -> None:
        out = ab_decode.resize_l(np.full((300, 200), 42.0, np.float64), (256, 128))
        assert out.shape == (256, 128) and out.dtype == np.float32
        np.testing.assert_allclose(out, 42.0, atol=1e-4)

    def test_downscaling_is_antialiased(self) -> None:
        # A one-pixel checkerboard shrunk 4x: an antialiased filter averages it to ~50; point sampling
        # (or a fixed-support kernel) would return the 0/100 pattern.
        checker = (np.indices((256, 256)).sum(axis=0) % 2 * 100.0).astype(np.float32)
        np.testing.assert_allclose(ab_decode.resize_l(checker, (64, 64)), 50.0, atol=0.5)

    def test_bicubic_overshoot_is_clipped(self) -> None:
        step = np.zeros((16, 16), np.float32)
        step[:, 8:] = 100.0
        out = ab_decode.resize_l(step, (16, 64))
        assert out.min() == 0.0 and out.max() == 100.0

    def test_is_pil_bicubic_on_the_float_image(self) -> None:
        l = np.random.default_rng(3).uniform(20, 80, (50, 70)).astype(np.float32)  # noqa: E741
        expected = np.asarray(Image.fromarray(l).resize((33, 21), Image.Resampling.BICUBIC))
        np.testing.assert_allclose(ab_decode.resize_l(l, (21, 33)), np.clip(expected, 0, 100), atol=1e-5)
