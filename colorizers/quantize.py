"""The quantised ab space of ECCV16 training: soft-encoding, class rebalancing, annealed mean.

Follows richzhang/colorization `resources/caffe_traininglayers.py` @a1642d6a (docs/colorization.md
§3.1): targets are the 10 nearest of the 313 bin centres weighted by a Gaussian (σ = 5), and each pixel's
loss is scaled by the rebalancing weight of its most likely bin, w ∝ ((1 − λ)·p + λ/Q)^−1 with E_p[w] = 1.
The prior p is measured on our own training photos (`colorizers.data` writes it); `compare_priors`
sets it beside the authors' ImageNet prior.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from contract import asset_path

NEIGHBOURS = 10  # NNEncLayer: NN = 10 (the paper text's "5" is not what the released code does)
SIGMA = 5.0  # Gaussian width of the soft encoding, in ab units
GRAY_THRESHOLD = 5.0  # NonGrayMaskLayer: an image counts as colour if some |a| or |b| exceeds this


def bin_centres() -> NDArray[np.float32]:
    """The 313 in-gamut ab centres (313, 2), a-major row order of `pts_in_hull.npy`."""
    return np.load(asset_path("pts_in_hull.npy")).astype(np.float32)


def authors_prior() -> NDArray[np.float64]:
    """The authors' empirical ImageNet prior over the 313 bins (sums to 1)."""
    return np.load(asset_path("prior_probs.npy")).astype(np.float64)


def _squared_distances(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N,2,H,W) ab and (Q,2) centres -> (N,H,W,Q) squared Euclidean distances."""
    points = ab.permute(0, 2, 3, 1)  # (N,H,W,2)
    # |x|² − 2x·c + |c|²: one matrix product, not an (N,H,W,Q,2) difference tensor (3x faster).
    d2 = (points**2).sum(-1, keepdim=True) - 2 * points @ centres.T + (centres**2).sum(-1)
    return d2.clamp_min(0)


def nearest_bin(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N,2,H,W) ab -> (N,H,W) index of the nearest of the Q centres (int64)."""
    return _squared_distances(ab, centres).argmin(-1)


def soft_encode(
    ab: torch.Tensor, centres: torch.Tensor, *, neighbours: int = NEIGHBOURS, sigma: float = SIGMA
) -> torch.Tensor:
    """Soft-encoded target distribution over the bins.

    Args:
        ab: (N,2,H,W) ab in Lab units.
        centres: (Q,2) bin centres, same device and dtype as `ab`.
    Returns:
        (N,Q,H,W): on each pixel, Gaussian weights exp(−d²/2σ²) of the `neighbours` nearest centres,
        normalised to sum 1; zero elsewhere.
    """
    if ab.ndim != 4 or ab.shape[1] != 2:
        raise ValueError(f"ab must have shape (N, 2, H, W), got {tuple(ab.shape)}")
    if not 1 <= neighbours <= centres.shape[0]:
        raise ValueError(f"neighbours must be in [1, {centres.shape[0]}], got {neighbours}")
    d2, index = _squared_distances(ab, centres).topk(neighbours, dim=-1, largest=False)
    # Subtracting the nearest distance first changes nothing after normalisation but keeps the
    # exponent from underflowing to 0/0 for points far outside the gamut.
    weights = torch.exp(-(d2 - d2[..., :1]) / (2 * sigma**2))
    weights = weights / weights.sum(-1, keepdim=True)
    target = torch.zeros(*index.shape[:-1], centres.shape[0], dtype=ab.dtype, device=ab.device)
    target.scatter_(-1, index, weights)
    return target.permute(0, 3, 1, 2)


def bin_histogram(ab: NDArray[np.floating], centres: NDArray[np.float32]) -> NDArray[np.int64]:
    """Counts of nearest bins over all pixels of an (..., 2) ab array -> (Q,)."""
    points = torch.from_numpy(np.ascontiguousarray(ab, dtype=np.float32).reshape(-1, 2))
    index = ((points[:, None, :] - torch.from_numpy(centres)) ** 2).sum(-1).argmin(-1)
    return np.bincount(index.numpy(), minlength=centres.shape[0]).astype(np.int64)


def smooth_prior(
    counts: NDArray[np.integer], centres: NDArray[np.float32], *, sigma: float = SIGMA
) -> NDArray[np.float64]:
    """Bin counts -> prior p̃, Gaussian-smoothed over the ab plane (the paper's σ = 5), sums to 1.

    Smoothing lends mass to bins next to observed colours, so rarely seen in-gamut colours get a
    finite (large) rebalancing weight instead of none.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (centres.shape[0],) or counts.sum() <= 0:
        raise ValueError(f"counts must be a non-empty ({centres.shape[0]},) histogram, got {counts.shape}")
    p = counts / counts.sum()
    if sigma > 0:
        d2 = ((centres[:, None, :].astype(np.float64) - centres[None, :, :]) ** 2).sum(-1)
        p = np.exp(-d2 / (2 * sigma**2)) @ p
    return p / p.sum()


def rebalance_weights(prior: NDArray[np.floating], lam: float) -> NDArray[np.float64]:
    """Per-bin weights w ∝ ((1 − λ)·p + λ/Q)^−1 with Σ p·w = 1 (PriorFactor, alpha = 1, gamma = λ).

    The uniform part spreads over the Q bins of nonzero prior, as upstream does. λ = 1 leaves every
    weight at 1 (no rebalancing); λ = 0 weights each bin by 1/p (full inverse frequency); the paper
    uses 1/2. Bins of zero prior get the largest finite weight, so an unseen colour stays bounded.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or prior.min() < 0 or prior.sum() <= 0:
        raise ValueError(f"prior must be a nonnegative 1-D histogram, got shape {prior.shape}")
    prior = prior / prior.sum()
    seen = prior > 0
    mix = (1.0 - lam) * prior + lam * seen / seen.sum()
    weights = np.zeros_like(prior)
    weights[seen] = 1.0 / mix[seen]
    weights /= (prior * weights).sum()
    weights[~seen] = weights[seen].max()
    return weights


def compare_priors(ours: NDArray[np.floating], theirs: NDArray[np.floating], *, lam: float = 0.5) -> dict:
    """How our training-data prior differs from the authors' ImageNet prior (JSON-ready).

    Entropy in nats (uniform over 313 bins is 5.75), both KL divergences, total variation, the
    five most likely bins of each, and the span of the rebalancing weights at `lam`.
    """
    p = np.asarray(ours, dtype=np.float64) / np.sum(ours)
    q = np.asarray(theirs, dtype=np.float64) / np.sum(theirs)
    eps = 1e-12
    centres = bin_centres()

    def top(x: NDArray[np.float64]) -> list[list[float]]:
        order = np.argsort(-x)[:5]
        return [[float(centres[i, 0]), float(centres[i, 1]), round(float(x[i]), 4)] for i in order]

    w_p, w_q = rebalance_weights(p, lam), rebalance_weights(q, lam)
    return {
        "entropy_ours": float(-(p * np.log(p + eps)).sum()),
        "entropy_authors": float(-(q * np.log(q + eps)).sum()),
        "kl_ours_authors": float((p * np.log((p + eps) / (q + eps))).sum()),
        "kl_authors_ours": float((q * np.log((q + eps) / (p + eps))).sum()),
        "total_variation": float(0.5 * np.abs(p - q).sum()),
        "top_bins_ours": top(p),
        "top_bins_authors": top(q),
        "lambda": lam,
        "weight_range_ours": [float(w_p.min()), float(w_p.max())],
        "weight_range_authors": [float(w_q.min()), float(w_q.max())],
    }


def nongray_mask(ab: torch.Tensor, threshold: float = GRAY_THRESHOLD) -> torch.Tensor:
    """(N,2,H,W) -> (N,) float: 1 for an image with some |a| or |b| above `threshold`, else 0."""
    return (ab.abs() > threshold).flatten(1).any(1).to(ab.dtype)


def pixel_weights(target: torch.Tensor, bin_weights: torch.Tensor) -> torch.Tensor:
    """(N,Q,H,W) soft target and (Q,) weights -> (N,H,W) weight of each pixel's most likely bin."""
    return bin_weights[target.argmax(1)]


def rebalanced_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-target cross-entropy, rebalanced per pixel.

    Args:
        logits: (N,Q,H,W) scores; target: (N,Q,H,W) soft-encoded distribution; weights: (N,H,W),
            the rebalancing weight times the non-gray mask.
    Returns:
        (loss to minimise, plain loss): the per-pixel mean of w·CE and of CE. Upstream applies w only
        to the gradient and logs the plain loss; w·CE has that same gradient, so it is the one to
        backpropagate, and the plain one is the one to log and compare across λ.
    """
    per_pixel = -(target * F.log_softmax(logits, dim=1)).sum(1)  # (N,H,W)
    return (weights * per_pixel).mean(), per_pixel.mean().detach()


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,Q,H,W) logits -> (N,2,H,W) ab: the mean of f_T(z) ∝ exp(log z / T) over the bin centres."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    # log softmax(z) / T = logits / T + const, so annealing is a softmax of the scaled logits.
    probs = F.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("nqhw,qc->nchw", probs, centres)
