from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from colorizers import quantize


def _ab(a: float, b: float) -> torch.Tensor:
    return torch.tensor([a, b], dtype=torch.float32).reshape(1, 2, 1, 1)


class TestSoftEncode:
    def test_hand_computed_two_neighbours(self) -> None:
        centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [30.0, 30.0]])
        target = quantize.soft_encode(_ab(2, 0), centres, neighbours=2, sigma=5.0)[0, :, 0, 0]
        # d² = 4 and 64: weights exp(-4/50), exp(-64/50), normalised.
        near = 1 / (1 + math.exp(-60 / 50))
        torch.testing.assert_close(target, torch.tensor([near, 1 - near, 0.0, 0.0]))

    def test_real_bins_ten_neighbours_sum_to_one(self) -> None:
        centres = torch.from_numpy(quantize.bin_centres())
        ab = torch.randn(2, 2, 5, 7, generator=torch.Generator().manual_seed(0)) * 40
        target = quantize.soft_encode(ab, centres)
        assert target.shape == (2, 313, 5, 7)
        torch.testing.assert_close(target.sum(1), torch.ones(2, 5, 7))
        assert ((target > 0).sum(1) == 10).all()
        assert torch.equal(target.argmax(1), quantize.nearest_bin(ab, centres))

    def test_far_outside_gamut_stays_finite(self) -> None:
        centres = torch.from_numpy(quantize.bin_centres())
        target = quantize.soft_encode(_ab(500, -500), centres)
        assert torch.isfinite(target).all() and math.isclose(float(target.sum()), 1.0, rel_tol=1e-5)

    def test_rejects_bad_shapes(self) -> None:
        centres = torch.from_numpy(quantize.bin_centres())
        with pytest.raises(ValueError, match="shape"):
            quantize.soft_encode(torch.zeros(2, 5, 5), centres)
        with pytest.raises(ValueError, match="neighbours"):
            quantize.soft_encode(_ab(0, 0), centres, neighbours=0)


class TestNearestCentres:
    """The grid search against brute force in float64 (an independent oracle): the same centres at the
    same distances, for points inside the gamut, next to its gaps, far outside it, and on grid points."""

    @staticmethod
    def _brute_force(
        points: torch.Tensor, centres: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d2 = ((points.double()[:, None, :] - centres.double()[None]) ** 2).sum(-1)
        return d2.topk(k, dim=-1, largest=False)

    @pytest.mark.parametrize("k", [1, 10, 40])
    def test_matches_brute_force_on_the_bins(self, k: int) -> None:
        centres = torch.from_numpy(quantize.bin_centres())
        g = torch.Generator().manual_seed(k)
        points = torch.cat([
            torch.rand(20_000, 2, generator=g) * 300 - 150,  # in, around and outside the gamut
            torch.tensor([[500.0, -500.0], [0.0, 0.0], [-110.0, 110.0], [-115.0, 115.0], [30.0, 40.0]]),
        ])  # fmt: skip
        d2, index = quantize.nearest_centres(points, centres, k)
        expected_d2, _ = self._brute_force(points, centres, k)
        assert d2.shape == index.shape == (len(points), k) and index.dtype == torch.int64
        torch.testing.assert_close(d2.double(), expected_d2, rtol=1e-5, atol=1e-2)
        # Each pick is at the distance the oracle gives for that rank (ties may swap equals).
        picked = ((points.double()[:, None, :] - centres.double()[index]) ** 2).sum(-1)
        torch.testing.assert_close(picked, expected_d2, rtol=1e-6, atol=1e-6)

    def test_centres_off_the_grid_are_searched_in_full(self) -> None:
        centres = torch.tensor([[0.5, 0.0], [3.0, 4.0], [-7.0, 1.0], [12.0, -5.0]])
        points = torch.tensor([[0.0, 0.0], [10.0, -4.0], [-100.0, 100.0]])
        d2, index = quantize.nearest_centres(points, centres, 2)
        expected_d2, expected_index = self._brute_force(points, centres, 2)
        torch.testing.assert_close(d2.double(), expected_d2)
        assert torch.equal(index, expected_index)

    def test_rejects_a_bad_k(self) -> None:
        with pytest.raises(ValueError, match="k must be in"):
            quantize.nearest_centres(torch.zeros(3, 2), torch.from_numpy(quantize.bin_centres()), 0)


class TestRebalance:
    def test_hand_computed_weights(self) -> None:
        # λ = 1/2 over the 3 seen bins: mix = (5/12, 7/24, 7/24), 1/mix = (12/5, 24/7, 24/7),
        # E_p = 102/35, so w = (14/17, 20/17, 20/17); the unseen bin takes the largest, 20/17.
        w = quantize.rebalance_weights(np.array([0.5, 0.25, 0.25, 0.0]), 0.5)
        np.testing.assert_allclose(w, [14 / 17, 20 / 17, 20 / 17, 20 / 17])

    def test_lambda_one_is_no_rebalancing(self) -> None:
        np.testing.assert_allclose(quantize.rebalance_weights(np.array([0.7, 0.2, 0.1, 0.0]), 1.0), 1.0)

    def test_lambda_zero_is_inverse_frequency(self) -> None:
        # w = 1/p = (2, 4, 4), E_p = 3: (2/3, 4/3, 4/3); the unseen bin takes the largest.
        w = quantize.rebalance_weights(np.array([0.5, 0.25, 0.25, 0.0]), 0.0)
        np.testing.assert_allclose(w, [2 / 3, 4 / 3, 4 / 3, 4 / 3])

    def test_authors_prior_matches_reference_span(self) -> None:
        prior = quantize.authors_prior()
        w = quantize.rebalance_weights(prior, 0.5)
        assert math.isclose(float((prior * w).sum()), 1.0, rel_tol=1e-9)
        assert round(float(w.min()), 3) == 0.097 and round(float(w.max()), 2) == 6.17  # colorization.md §2
        assert int(w.argmin()) == int(prior.argmax())

    def test_rejects_bad_lambda(self) -> None:
        with pytest.raises(ValueError, match="lambda"):
            quantize.rebalance_weights(np.ones(3), 1.5)


class TestPrior:
    def test_histogram_counts_nearest_bins(self) -> None:
        centres = quantize.bin_centres()
        ab = np.array([[0.0, 0.0], [1.0, -2.0], [60.0, 40.0]])
        counts = quantize.bin_histogram(ab, centres)
        assert counts.sum() == 3
        zero = int(np.flatnonzero((centres == [0, 0]).all(1))[0])
        far = int(np.flatnonzero((centres == [60, 40]).all(1))[0])
        assert counts[zero] == 2 and counts[far] == 1

    def test_smoothing_keeps_mass_and_spreads_it(self) -> None:
        centres = quantize.bin_centres()
        counts = np.zeros(313, dtype=np.int64)
        counts[100] = 7
        plain = quantize.smooth_prior(counts, centres, sigma=0)
        np.testing.assert_allclose(plain, counts / 7)
        smooth = quantize.smooth_prior(counts, centres)
        assert math.isclose(smooth.sum(), 1.0) and smooth[100] < 1 and (smooth > 0).sum() > 1
        # a neighbour 10 units away gets exp(-100/50) of the centre's mass
        neighbour = int(np.flatnonzero((centres == centres[100] + [10, 0]).all(1))[0])
        assert math.isclose(smooth[neighbour] / smooth[100], math.exp(-2), rel_tol=1e-9)

    def test_compare_with_itself_is_zero_divergence(self) -> None:
        prior = quantize.authors_prior()
        report = quantize.compare_priors(prior, prior)
        assert abs(report["kl_ours_authors"]) < 1e-9 and report["total_variation"] == 0
        assert report["top_bins_ours"][0][:2] == [0.0, 0.0]


class TestLoss:
    def test_uniform_logits_give_log_q(self) -> None:
        target = torch.softmax(torch.randn(2, 4, 3, 3), 1)
        loss, plain = quantize.rebalanced_cross_entropy(
            torch.zeros(2, 4, 3, 3), target, torch.full((2, 3, 3), 2.0)
        )
        assert math.isclose(float(plain), math.log(4), rel_tol=1e-6)
        assert math.isclose(float(loss), 2 * math.log(4), rel_tol=1e-6)

    def test_weight_scales_each_pixels_gradient(self) -> None:
        logits = torch.randn(1, 4, 1, 2, requires_grad=True)
        target = torch.softmax(torch.randn(1, 4, 1, 2), 1)
        quantize.rebalanced_cross_entropy(logits, target, torch.ones(1, 1, 2))[0].backward()
        plain_grad = logits.grad.clone()  # type: ignore[union-attr]
        logits.grad = None
        quantize.rebalanced_cross_entropy(logits, target, torch.tensor([[[3.0, 0.0]]]))[0].backward()
        torch.testing.assert_close(logits.grad[..., 0], 3 * plain_grad[..., 0])  # type: ignore[index]
        assert torch.all(logits.grad[..., 1] == 0)  # type: ignore[index]

    def test_nongray_mask_threshold(self) -> None:
        ab = torch.zeros(3, 2, 4, 4)
        ab[1, 0, 2, 2] = 5.0  # exactly at the threshold: still gray
        ab[2, 1, 0, 3] = -5.5
        assert quantize.nongray_mask(ab).tolist() == [0.0, 0.0, 1.0]


class TestAnnealedMean:
    def test_hand_computed_temperatures(self) -> None:
        centres = torch.tensor([[0.0, 0.0], [40.0, 0.0]])
        logits = torch.log(torch.tensor([0.75, 0.25])).reshape(1, 2, 1, 1)
        # T = 1: the mean, 0.25·40 = 10; T = 1/2: p² renormalised = (0.9, 0.1) -> 4.
        assert math.isclose(float(quantize.annealed_mean(logits, centres, 1.0)[0, 0]), 10.0, rel_tol=1e-5)
        assert math.isclose(float(quantize.annealed_mean(logits, centres, 0.5)[0, 0]), 4.0, rel_tol=1e-5)
        assert float(quantize.annealed_mean(logits, centres, 0.01)[0, 0]) < 1e-6  # the mode

    def test_rejects_nonpositive_temperature(self) -> None:
        with pytest.raises(ValueError, match="temperature"):
            quantize.annealed_mean(torch.zeros(1, 2, 1, 1), torch.zeros(2, 2), 0.0)
