from __future__ import annotations

import numpy as np
import pytest

from contract import asset_path
from service.color.suggest import SOFTEN, grid_bins, softened, suggest


def grid_index(a: int, b: int) -> int:
    """a-major: index = 23 (a + 110) / 10 + (b + 110) / 10 (pts_grid.npy, not ideepcolor's meshgrid)."""
    return 23 * (a + 110) // 10 + (b + 110) // 10


def logits_for(probabilities: dict[tuple[int, int], float]) -> np.ndarray:
    """Logits whose softened distribution is exactly `probabilities` (elsewhere ~0)."""
    logits = np.full(529, -1e4)
    for (a, b), p in probabilities.items():
        logits[grid_index(a, b)] = np.log(p) / SOFTEN
    return logits


def test_grid_is_the_vendored_a_major_table() -> None:
    bins = grid_bins()
    np.testing.assert_array_equal(bins, np.load(asset_path("pts_grid.npy")))
    assert tuple(bins[grid_index(40, -20)]) == (40, -20)


def test_a_peaked_distribution_suggests_its_bin_with_full_confidence() -> None:
    (only,) = suggest(logits_for({(40, -20): 1.0}), k=5, seed=0)
    assert only.ab == (40.0, -20.0)  # a and b not swapped
    assert only.confidence == pytest.approx(1.0)


def test_two_modes_are_ranked_by_occupancy() -> None:
    found = suggest(logits_for({(60, 50): 0.7, (-30, 30): 0.3}), k=5, seed=1)
    assert [s.ab for s in found] == [(60.0, 50.0), (-30.0, 30.0)]
    assert found[0].confidence == pytest.approx(0.7, abs=0.02)
    assert found[1].confidence == pytest.approx(0.3, abs=0.02)


def test_same_seed_same_answer_and_k_is_honoured() -> None:
    logits = np.random.default_rng(3).normal(0, 10, 529)
    a, b = suggest(logits, k=4, seed=7), suggest(logits, k=4, seed=7)
    assert a == b and len(a) == 4
    assert sum(s.confidence for s in a) == pytest.approx(1.0)
    assert [s.confidence for s in a] == sorted((s.confidence for s in a), reverse=True)


def test_softening_is_softmax_of_a_fifth_of_the_logits() -> None:
    logits = np.random.default_rng(0).normal(0, 5, 529)
    z = np.exp(0.2 * logits)
    np.testing.assert_allclose(softened(logits), z / z.sum(), rtol=1e-12)


@pytest.mark.parametrize(("shape", "k"), [((313,), 5), ((529,), 0)])
def test_bad_arguments(shape: tuple[int, ...], k: int) -> None:
    with pytest.raises(ValueError):
        suggest(np.zeros(shape), k=k, seed=0)


def test_softening_factor_is_a_parameter() -> None:
    logits = np.random.default_rng(0).normal(0, 5, 529)
    z = np.exp(2.0 * logits - (2.0 * logits).max())
    np.testing.assert_allclose(softened(logits, 2.0), z / z.sum(), rtol=1e-12)
    np.testing.assert_allclose(softened(logits), softened(logits, SOFTEN))
    with pytest.raises(ValueError):
        softened(logits, 0.0)


def test_a_flat_network_is_flattened_to_the_quadrants_by_the_authors_softening() -> None:
    """Issue #15: logits that rise only 3 nats over a broad bump (a less peaked network than the
    authors') are nearly uniform at 0.2: the top suggestion is a quadrant centre far from the bump,
    whatever the pixel's colour; a larger factor puts it on the bump."""
    grid = grid_bins()

    def pixel(a: float, b: float) -> np.ndarray:  # 3 nats at (a, b), σ = 20 ab units
        return 3.0 * np.exp(-((grid - (a, b)) ** 2).sum(1) / (2 * 20.0**2))

    for colour in ((0, -40), (-40, 40)):
        (flat, *_) = suggest(pixel(*colour), k=5, seed=0)
        (sharp, *_) = suggest(pixel(*colour), k=5, seed=0, soften=3.0)
        assert np.hypot(*np.subtract(flat.ab, colour)) > 40
        assert np.hypot(*np.subtract(sharp.ab, colour)) < 10
