"""SIGGRAPH17 training data: simulated user hints, the 529-class targets and the grayscale filter.

Follows colorization-pytorch @66a1cb2e `util/util.py` (`add_color_patches_rand_gt`, `encode_ab_ind`,
`get_colorization_data`), docs/colorization.md §3.2:

- number of hints: `while rand() < 1 - p: add a hint`, a geometric count with P(N = k) = (1-p)^k p;
  training uses p = 1/8 (P(no hints) = 1/8, E[N] = 7), evaluation a fixed count;
- patch size P uniform over `sizes` (1..9 in training, 6 in the PSNR-vs-hints protocol);
- patch corner y ~ N((H-P+1)/2, (H-P+1)/4) clipped to [0, H-P], likewise x;
- hint colour: the mean ground-truth ab over the PxP patch, written to every pixel of the patch,
  mask 1 there (0 elsewhere; the network subtracts its checkpoint's mask offset itself).

Later patches overwrite earlier ones where they overlap, as upstream.
"""

from __future__ import annotations

import numpy as np
import torch

HINT_P = 1 / 8  # sample_p of the regression stages
TRAIN_PATCH_SIZES = tuple(range(1, 10))  # sample_Ps = [1..9]
AB_THRESH = 5.0  # ab_thresh: an image needs Σ_channels (max - min of ab) ≥ 5 Lab units
AB_MAX, AB_QUANT = 110.0, 10.0
GRID_SIDE = int(2 * AB_MAX / AB_QUANT) + 1  # 23, so 23 x 23 = 529 classes

Patch = tuple[int, int, int]  # (y, x, size) of a patch's top-left corner


def draw_patches(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    count: int | None = None,
    p: float = HINT_P,
    sizes: tuple[int, ...] = TRAIN_PATCH_SIZES,
) -> list[Patch]:
    """Hint patches for one image: exactly `count` of them, or a geometric number (parameter `p`)."""
    patches: list[Patch] = []
    while (len(patches) < count) if count is not None else (rng.random() < 1 - p):
        size = int(sizes[rng.integers(len(sizes))])
        y, x = (
            int(np.clip(rng.normal((side - size + 1) / 2, (side - size + 1) / 4), 0, side - size))
            for side in (height, width)
        )
        patches.append((y, x, size))
    return patches


def paint_hints(ab: torch.Tensor, patches: list[list[Patch]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,2,H,W) ground-truth ab and each image's patches -> (ab hints (N,2,H,W), 0/1 mask (N,1,H,W))."""
    n, _, h, w = ab.shape
    hint, mask = ab.new_zeros((n, 2, h, w)), ab.new_zeros((n, 1, h, w))
    for i, image_patches in enumerate(patches):
        for y, x, size in image_patches:
            region = ab[i, :, y : y + size, x : x + size]
            hint[i, :, y : y + size, x : x + size] = region.mean(dim=(1, 2), keepdim=True)
            mask[i, :, y : y + size, x : x + size] = 1
    return hint, mask


def sample_hints(
    ab: torch.Tensor,
    rng: np.random.Generator,
    *,
    count: int | None = None,
    p: float = HINT_P,
    sizes: tuple[int, ...] = TRAIN_PATCH_SIZES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulated hints for a (N,2,H,W) ab batch -> (ab hints, 0/1 mask)."""
    _, _, h, w = ab.shape
    patches = [draw_patches(rng, h, w, count=count, p=p, sizes=sizes) for _ in range(ab.shape[0])]
    return paint_hints(ab, patches)


def ab_class_index(ab: torch.Tensor) -> torch.Tensor:
    """(N,2,H,W) ab in Lab units -> (N,H,W) int64 index into the a-major 23x23 grid (`pts_grid.npy`).

    23·round((a+110)/10) + round((b+110)/10), each coordinate clipped to the grid first.
    """
    q = torch.round((ab.clamp(-AB_MAX, AB_MAX) + AB_MAX) / AB_QUANT).long()
    return q[:, 0] * GRID_SIDE + q[:, 1]


def colourful(ab: torch.Tensor, threshold: float = AB_THRESH) -> torch.Tensor:
    """(N,2,H,W) -> (N,) bool: images with enough colour to train on (Σ over a, b of max - min ≥ 5)."""
    flat = ab.flatten(2)
    return (flat.amax(2) - flat.amin(2)).sum(1) >= threshold
