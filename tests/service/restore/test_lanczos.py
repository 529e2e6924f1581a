"""Tests for service.restore.lanczos, against an independent float64 evaluation of the docs/dip.md formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.restore.lanczos import Lanczos2Downsampler, lanczos2_kernel


def _oracle_kernel(factor: int) -> np.ndarray:
    """docs/dip.md §1.3, literally: 1-based i, j over 4·factor taps, L(x) = 2 sin(πx) sin(πx/2) / (π²x²)."""

    def lanczos(x: float) -> float:
        if x == 0.0:
            return 1.0
        return 2.0 * math.sin(math.pi * x) * math.sin(math.pi * x / 2.0) / (math.pi**2 * x**2)

    kernel_width = 4 * factor + 1
    center = (kernel_width + 1) / 2.0
    n = 4 * factor
    k = np.empty((n, n), dtype=np.float64)
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            di = abs(i + 0.5 - center) / factor
            dj = abs(j + 0.5 - center) / factor
            k[i - 1, j - 1] = lanczos(di) * lanczos(dj)
    return k / k.sum()


class TestLanczos2Kernel:
    @pytest.mark.parametrize("factor", [2, 4, 8])
    def test_matches_definition(self, factor: int) -> None:
        np.testing.assert_allclose(lanczos2_kernel(factor), _oracle_kernel(factor), rtol=0, atol=1e-15)

    @pytest.mark.parametrize(("factor", "side"), [(4, 16), (8, 32)])
    def test_size_from_reference(self, factor: int, side: int) -> None:
        # docs/dip.md §1.3: 16x16 for x4 and 32x32 for x8.
        assert lanczos2_kernel(factor).shape == (side, side)

    def test_sums_to_one_and_is_symmetric(self) -> None:
        k = lanczos2_kernel(4)
        assert k.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(k, k.T)
        np.testing.assert_allclose(k, k[::-1, ::-1])

    def test_has_negative_lobes(self) -> None:
        # Lanczos-2 is not a box/Gaussian: its outer taps are negative.
        assert lanczos2_kernel(4).min() < 0

    def test_rejects_bad_factor(self) -> None:
        with pytest.raises(ValueError, match="0"):
            lanczos2_kernel(0)


class TestLanczos2Downsampler:
    @pytest.mark.parametrize("factor", [2, 4, 8])
    def test_shape(self, factor: int) -> None:
        down = Lanczos2Downsampler(factor, 3)
        assert down(torch.rand(1, 3, 64, 96)).shape == (1, 3, 64 // factor, 96 // factor)

    def test_matches_explicit_sum(self) -> None:
        # One output pixel computed by hand: replicate-pad by (16 - 4) / 2 = 6, then the kernel window
        # starting at 4·row, 4·col of the padded plane (stride 4).
        rng = np.random.default_rng(0)
        x = rng.random((2, 32, 40))
        down = Lanczos2Downsampler(4, 2)
        got = down(torch.from_numpy(x).float()[None])[0].double().numpy()
        padded = np.pad(x, ((0, 0), (6, 6), (6, 6)), mode="edge")
        k = _oracle_kernel(4)
        for c, r, q in [(0, 0, 0), (1, 3, 5), (0, 7, 9)]:
            want = (padded[c, 4 * r : 4 * r + 16, 4 * q : 4 * q + 16] * k).sum()
            assert got[c, r, q] == pytest.approx(want, abs=1e-5)

    def test_constant_stays_constant(self) -> None:
        out = Lanczos2Downsampler(8, 1)(torch.full((1, 1, 64, 64), 0.3))
        torch.testing.assert_close(out, torch.full_like(out, 0.3))

    def test_kernel_is_not_a_parameter(self) -> None:
        assert list(Lanczos2Downsampler(4, 3).parameters()) == []

    def test_rejects_non_multiple(self) -> None:
        with pytest.raises(ValueError, match="multiples of 4"):
            Lanczos2Downsampler(4, 3)(torch.rand(1, 3, 30, 32))
