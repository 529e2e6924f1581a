from __future__ import annotations

import numpy as np
import pytest
import torch

from colorizers import hint_sim
from contract import asset_path


def test_number_of_hints_is_geometric_with_p_one_eighth() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([len(hint_sim.draw_patches(rng, 64, 64)) for _ in range(20000)])
    # P(N = 0) = p = 1/8 and E[N] = (1 - p) / p = 7; s.e. of the mean is √56/√20000 ≈ 0.05.
    assert abs(np.mean(counts == 0) - 1 / 8) < 0.01
    assert abs(counts.mean() - 7) < 0.25
    assert abs(np.mean(counts == 1) - 7 / 64) < 0.01  # (1 - p) p


def test_patches_have_sizes_one_to_nine_and_stay_inside_centred() -> None:
    rng = np.random.default_rng(1)
    patches = [patch for _ in range(3000) for patch in hint_sim.draw_patches(rng, 40, 56)]
    ys, xs, sizes = (np.array(v) for v in zip(*patches, strict=True))
    assert set(sizes.tolist()) == set(range(1, 10))
    assert np.all(ys >= 0) and np.all(ys + sizes <= 40) and np.all(xs >= 0) and np.all(xs + sizes <= 56)
    # Corners ~ N((H - P + 1)/2, (H - P + 1)/4) truncated by int(): patch centres average ≈ (H - 1)/2.
    assert abs(np.mean(ys + (sizes - 1) / 2) - 19.5) < 0.3 and abs(np.mean(xs + (sizes - 1) / 2) - 27.5) < 0.3
    assert 5 < np.std(ys + sizes / 2) < 11  # std ≈ H/4 = 10 before clipping


def test_fixed_count_gives_exactly_that_many_patches_of_the_given_size() -> None:
    rng = np.random.default_rng(2)
    for count in (0, 1, 5, 100):
        patches = hint_sim.draw_patches(rng, 32, 32, count=count, sizes=(6,))
        assert len(patches) == count and all(size == 6 for _, _, size in patches)


def test_hint_colour_is_the_patch_mean_and_the_mask_covers_only_patches() -> None:
    g = torch.Generator().manual_seed(0)
    ab = torch.randn(2, 2, 16, 16, generator=g) * 30
    patches = [[(2, 3, 4), (10, 10, 1)], []]
    hint, mask = hint_sim.paint_hints(ab, patches)
    expected = ab[0, :, 2:6, 3:7].mean(dim=(1, 2))
    assert torch.allclose(hint[0, :, 2:6, 3:7], expected[:, None, None].expand(2, 4, 4))
    assert torch.equal(hint[0, :, 10, 10], ab[0, :, 10, 10])
    assert mask[0].sum() == 16 + 1 and torch.all(mask[0, :, 2:6, 3:7] == 1) and mask[0, 0, 10, 10] == 1
    assert torch.all(hint[0][:, mask[0, 0] == 0] == 0)
    assert torch.all(mask[1] == 0) and torch.all(hint[1] == 0)


def test_sample_hints_is_reproducible_with_a_seed() -> None:
    ab = torch.randn(4, 2, 24, 24) * 20
    a = hint_sim.sample_hints(ab, np.random.default_rng(5))
    b = hint_sim.sample_hints(ab, np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("a", "b", "index"),
    [
        (-110, -110, 0),
        (-110, -100, 1),  # b is the fast axis
        (-100, -110, 23),  # a is the slow axis (b-major would give 1)
        (0, 0, 11 * 23 + 11),
        (110, 110, 528),
        (23, -41, 13 * 23 + 7),  # round(13.3) = 13, round(6.9) = 7
        (200, -300, 22 * 23 + 0),  # clipped to the grid
    ],
)
def test_class_index_is_a_major(a: float, b: float, index: int) -> None:
    ab = torch.tensor([a, b], dtype=torch.float32).view(1, 2, 1, 1)
    assert int(hint_sim.ab_class_index(ab)[0, 0, 0]) == index


def test_class_index_matches_the_grid_asset() -> None:
    grid = torch.from_numpy(np.load(asset_path("pts_grid.npy"))).float()  # (529, 2) a-major
    ab = grid.T.reshape(1, 2, 23, 23)
    assert torch.equal(hint_sim.ab_class_index(ab).flatten(), torch.arange(529))


def test_grayscale_filter_uses_the_sum_of_ab_ranges() -> None:
    ab = torch.zeros(3, 2, 8, 8)
    ab[1, 0, 0, 0], ab[1, 1, 0, 0] = 2.5, -2.5  # ranges 2.5 + 2.5 = 5: kept
    ab[2, 0, 0, 0] = 4.9  # range 4.9: dropped
    assert hint_sim.colourful(ab).tolist() == [False, True, False]
