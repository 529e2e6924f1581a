"""Colour suggestions from SIGGRAPH17's 529-bin distribution at one pixel (ideepcolor's recommender).

As in junyanz/interactive-deep-colorization `data/colorize_image.py` `get_ab_reccs`: soften the
distribution (softmax of 0.2 x logits, i.e. T = 5), draw N = 25,000 inverse-CDF samples of bin
centres, cluster them with k-means (K = 5) and rank the centres by occupancy. The bins are the
a-major 23 x 23 grid of `pts_grid.npy` (index = 23 (a+110)/10 + (b+110)/10); ideepcolor's PyTorch
path rebuilds it with a b-major meshgrid, which swaps a and b: not done here.

The softening belongs to the weights: 0.2 suits the authors' network, whose distributions are
peaked; a less peaked network (ours, trained for hours on CPUs) is flattened by it into a near-uniform
distribution, and k-means of a uniform distribution returns the same five quadrant centres at every
pixel. `soften` is therefore a parameter, a per-checkpoint registry field (`suggest_soften` in
`colorizers/weights.py`, calibrated on validation data by `colorizers.evaluate_suggest`), 0.2 unless
the checkpoint says otherwise.

The samples only take 529 distinct values, so k-means runs on the distinct values weighted by
their counts: the same clustering as on 25,000 points, at 529-point cost.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from contract import NUM_AB_GRID_BINS, asset_path

SOFTEN = 0.2  # logit scale of `prep_net(S=.2)`: the authors' weights' softening, the default
SAMPLES = 25_000
KMEANS_ITERATIONS = 50


@dataclass(frozen=True)
class Suggestion:
    ab: tuple[float, float]
    confidence: float  # share of the samples in this cluster


@functools.cache
def grid_bins() -> np.ndarray:
    bins = np.load(asset_path("pts_grid.npy")).astype(np.float64)
    if bins.shape != (NUM_AB_GRID_BINS, 2):
        raise ValueError(f"pts_grid.npy has shape {bins.shape}, expected ({NUM_AB_GRID_BINS}, 2)")
    return bins


def softened(logits: np.ndarray, soften: float = SOFTEN) -> np.ndarray:
    """(529,) logits -> the softened distribution softmax(soften · logits), float64."""
    if not soften > 0:
        raise ValueError(f"soften must be positive, got {soften}")
    z = soften * logits.astype(np.float64)
    z = np.exp(z - z.max())
    return np.asarray(z / z.sum())


def suggest(logits: np.ndarray, k: int, seed: int, soften: float = SOFTEN) -> list[Suggestion]:
    """Up to k suggested ab colours for one pixel's (529,) logits, most occupied first.

    `soften`: the logit scale before sampling (the checkpoint's `suggest_soften`; 0.2 upstream).
    """
    if logits.shape != (NUM_AB_GRID_BINS,):
        raise ValueError(f"logits must have shape ({NUM_AB_GRID_BINS},), got {logits.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    probs = softened(logits, soften)
    # Inverse-CDF sampling of bin indices, then counts per distinct bin.
    cdf = np.cumsum(probs)
    drawn = np.minimum(np.searchsorted(cdf, rng.random(SAMPLES) * cdf[-1], side="right"), len(cdf) - 1)
    counts = np.bincount(drawn, minlength=NUM_AB_GRID_BINS).astype(np.float64)
    used = np.flatnonzero(counts)
    points, weights = grid_bins()[used], counts[used]
    centres, labels = _weighted_kmeans(points, weights, min(k, len(used)), rng)
    occupancy = np.bincount(labels, weights=weights, minlength=len(centres)) / SAMPLES
    order = np.argsort(-occupancy, kind="stable")
    return [
        Suggestion((float(centres[i, 0]), float(centres[i, 1])), float(occupancy[i]))
        for i in order
        if occupancy[i] > 0
    ]


def _weighted_kmeans(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm with weighted k-means++ seeding; (k, 2) centres and each point's label."""
    centres = [points[rng.choice(len(points), p=weights / weights.sum())]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1) * weights
        if d2.sum() == 0:
            break
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum())])
    c = np.array(centres)
    labels = np.zeros(len(points), np.int64)
    for _ in range(KMEANS_ITERATIONS):
        labels = np.argmin(((points[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        updated = c.copy()
        for j in range(len(c)):
            members = labels == j
            if members.any():
                updated[j] = np.average(points[members], axis=0, weights=weights[members])
        if np.allclose(updated, c):
            break
        c = updated
    return c, labels
