"""Automatic early stopping for DIP: held-out pixels, the blind running-variance rule, the discrepancy rule.

Held-out pixels (`holdout_mask`, denoising's default): the loss skips a random fraction of the pixels and
the stopper tracks the iterate's MSE to the noisy image there. With y = x + n and n independent of the fit
on those pixels, E‖f − y‖² = ‖f − x‖² + E‖n‖², so the minimum over iterations is the best iterate there,
whatever σ is. The statistic is the EMA iterate's, as that is what gets returned. The engine then refits
every pixel past the chosen iteration c (`AutoStop.refit`), so a call costs S + 1.5c iterations: the
held-out run's S, then the refit's 1.5c.

When to stop the held-out run. Writing E(t) = ‖f_t − x‖²_H + v (v: the clipped-noise variance on the
held-out set H, constant), the rise above the minimum E(t) − E_min and the descent E(t₀) − E_min (t₀: the
first tracked iteration) are both differences of clean errors: v cancels, so their ratio does not depend
on σ or on how much of the noise the clipping removed. Waiting 2x the minimum's age for a new one (the
rule before, `holdout_wait`) stopped at 3c, so a call cost about 4c: 1,100-3,300 iterations on the 96²
bench runs, 0.4-1.1x the reference notebook's fixed 3,000. Past the minimum the network fits the noise on
the pixels it sees and the error at the held-out ones climbs steadily (baboon at σ=25: +0.5% of its
descent 170 iterations after the minimum at 527, +1.3% at 270, +3% at 470). So the run stops, at least
`holdout_patience` (100) iterations after the minimum, as soon as E(t) − E_min >= `holdout_rise` x the
descent (`holdout_rose`); the 2x wait stays as the backstop for a curve that neither rises nor falls.
(A least wait of 200 picked the same minimum as 100 on all 50 recorded runs: the rise ends them.)

What this gives up: DIP fits in stages and the error can rise as much inside a stall. Barbara at σ=25
climbs 3.3% of its descent from its first minimum (358) to iteration 550 and only later falls to the
real one (858, the old rule's choice): the rise test stops in the stall, 1.9 dB short (the 2x wait was
0.28 short). No threshold separates that bump from baboon's turn, and waiting 2.4x the age to get
through it would cost every run (S >= 3.4c).

What to return: the mean of the refit's iterates over [c, 1.5c] (`refit_mean_from` = 1, `refit_scale`
= 1.5). The error at pixels the network never sees turns up before the fit of the pixels it sees stops
improving: on the 14 bench runs (96², both halves recorded 2 Dec) the PSNR of the fit on every pixel
peaks at a median 1.2x the held-out minimum, but anywhere from 0.9x to 2.3x (baboon at σ=25, 925
against 448, is 0.85 dB short at 1x and 0.53 at 1.2x; kate and comic at σ=25 peak before c and lose
1.2 dB by 1.5c). No single refit iterate, at any factor from 1 to 1.5, lands within 0.5 dB on 13 of the
14; the mean over the window hedges the peak's position and does (0.44x the reference's work). It
replaced the single iterate at 1.2c on 2 Dec by a rule written before the 20 fresh runs it was judged
on: 18 of 20 within 0.5 dB against 17, at 0.48x (docs/dip.md §3.1). Numbers per run:
bench/results/dip/quality.md.

Running variance (Wang, Li, Zhuang, Chen, Liang, Sun, "Early Stopping for Deep Image Prior",
arXiv 2112.06074; code sun-umn/Early_Stopping_for_DIP @ 877d994d, see docs/dip.md §3): the outputs' variance
over recent iterations dips near the PSNR peak, before the network starts fitting the noise.

* ES-EMV (`rule="emv"`): δ = x_t − ema; ema ← ema + α·δ; emv ← (1−α)(emv + α·mean(δ²)). O(N) memory.
  (ESDIP clips the ema to [0, 1]; our outputs come out of a sigmoid, so the convex update never leaves it.)
* ES-WMV (`rule="wmv"`): mean over the last W outputs of mean((x_i − x̄)²), from a ring buffer of W frames
  with a float64 running sum and per-frame sums of squares, so each update is O(N), not O(W·N).

Either way: after the warm-up, keep the iterate with the smallest statistic; stop once no new minimum came
for `patience` iterations.

Discrepancy principle (Morozov): stop at the first iteration whose data-fit MSE is <= tau x the noise
floor, the MSE that the noise alone leaves (`noise_floor`). Every 8-bit image is clipped to [0, 1], and
clipping shrinks the noise where the image is dark or bright (kate at σ=50: 0.76 σ²), so with σ given the
floor is the clipped-noise variance E[(clip(x + n, 0, 1) - x)²] at the observed pixels, not σ²: with plain
σ² the rule stopped 0.8-16 dB short of the best iterate on six runs (bench/results/dip/quality.md).
Evaluating it at the current iterate instead stopped at iteration 29 on kate at σ=50, where the early,
blurry iterate has no saturated pixels. Blind denoising estimates σ from the image instead
(`estimate_noise_sigma` measures the clipped noise already) and uses σ̂². tau < 1 because the returned
EMA iterate peaks after the raw fit goes below the floor.

All bookkeeping stays on the device (`torch.where`, a device-side iteration counter), so `update` never
waits for the accelerator; only `decide` reads scalars back, and the engine calls it every `sync_every`
iterations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray

from service.bus.request import AutoStop
from service.bus.result import StopReason

# Donoho & Johnstone (1994): for Gaussian noise, median(|HH|) / 0.6745 estimates σ.
MAD_TO_SIGMA = 0.6745
# Below this many held-out pixels the validation error is too noisy to rank iterates (a 25x25 image at
# 10%): such runs use the variance/discrepancy rules instead.
MIN_HOLDOUT_PIXELS = 64


def holdout_mask(height: int, width: int, fraction: float, seed: int) -> NDArray[np.bool_] | None:
    """(H, W) bool, True on the pixels left out of the loss; None if fewer than MIN_HOLDOUT_PIXELS.

    Its own numpy stream from `seed`, so holding pixels out leaves the network's init and input untouched.
    """
    if fraction <= 0.0:
        return None
    mask = np.random.default_rng(seed).random((height, width)) < fraction
    held = int(mask.sum())
    return mask if MIN_HOLDOUT_PIXELS <= held < height * width else None


def estimate_noise_sigma(image: NDArray[np.floating]) -> float:
    """σ of additive white noise in an (H, W, C) image in [0, 1], from the finest diagonal Haar band.

    HH = (a - b - c + d) / 2 over each 2x2 block is orthonormal, so its coefficients carry the noise at σ
    and little of a natural image; the median absolute value, pooled over channels, is robust to edges.
    """
    x = np.asarray(image, dtype=np.float64)
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    if h == 0 or w == 0:
        raise ValueError(f"need at least 2x2 pixels to estimate the noise, got {x.shape}")
    x = x[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / MAD_TO_SIGMA)


def clipped_noise_variance(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[(clip(x + n, 0, 1) - x)²] for n ~ N(0, σ²), elementwise, for x in [0, 1].

    With a = -x/σ and b = (1 - x)/σ the noise passes unclipped on (a, b) and is cut to -x below and 1 - x
    above: σ²·[Φ(b) - Φ(a) - (bφ(b) - aφ(a))] + x²·Φ(a) + (1 - x)²·(1 - Φ(b)).
    """
    x = x.clamp(0.0, 1.0)
    a, b = -x / sigma, (1.0 - x) / sigma
    cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)

    def pdf(t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * t.square()) / math.sqrt(2.0 * math.pi)

    inside = cdf_b - cdf_a - (b * pdf(b) - a * pdf(a))
    return sigma**2 * inside + x.square() * cdf_a + (1.0 - x).square() * (1.0 - cdf_b)


def noise_floor(noisy: NDArray[np.floating], sigma: float | None) -> float:
    """The data-fit MSE that the noise alone leaves on `noisy` ((H, W, C) in [0, 1]): the mean
    clipped-noise variance at the observed pixels for a given σ, σ̂² (`estimate_noise_sigma`) if None."""
    if sigma is None:
        return estimate_noise_sigma(noisy) ** 2
    observed = torch.from_numpy(np.asarray(noisy, dtype=np.float64))
    return float(clipped_noise_variance(observed, sigma).mean())


def holdout_rose(first: float, low: float, last: float, rise: float) -> bool:
    """Whether the held-out error `last` is `rise` x its descent (`first`, at the first tracked iteration,
    down to the minimum `low`) above its minimum: the curve turned up, not just a stall."""
    return last - low >= rise * (first - low)


def refit_iterations(policy: AutoStop, chosen: int, budget: int) -> int:
    """How long the refit on every pixel runs after the held-out run chose iteration `chosen`: the full
    fit peaks later (`AutoStop.refit_scale`), within the run's iteration budget."""
    return max(1, min(budget, round(policy.refit_scale * chosen)))


def refit_mean_start(policy: AutoStop, chosen: int, target: int) -> int | None:
    """The first refit iteration whose iterate goes into the returned mean (`AutoStop.refit_mean_from`),
    or None to return the refit's last iterate; `target`: where the refit ends."""
    if policy.refit_mean_from is None:
        return None
    return max(1, min(target, round(policy.refit_mean_from * chosen)))


class _ExponentialVariance:
    """ES-EMV statistic."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.ema: torch.Tensor | None = None
        self.emv: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> torch.Tensor:
        if self.ema is None or self.emv is None:
            self.ema = x.detach().clone()
            self.emv = torch.zeros((), dtype=torch.float32, device=x.device)
            return self.emv
        delta = x - self.ema
        self.ema.add_(delta, alpha=self.alpha)
        self.emv = (1.0 - self.alpha) * (self.emv + self.alpha * delta.square().mean())
        return self.emv


class _WindowVariance:
    """ES-WMV statistic over the last `window` outputs."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.count = 0
        self.frames: torch.Tensor | None = None  # (W, *x.shape) ring buffer
        self.sq: torch.Tensor | None = None  # (W,) float64 sum of squares per frame
        self.total: torch.Tensor | None = None  # (*x.shape) float64 sum of the frames in the window

    def update(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.frames is None or self.sq is None or self.total is None:
            self.frames = torch.empty((self.window, *x.shape), dtype=x.dtype, device=x.device)
            self.sq = torch.zeros(self.window, dtype=torch.float64, device=x.device)
            self.total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        slot = self.count % self.window
        if self.count >= self.window:
            self.total.sub_(self.frames[slot])
        self.frames[slot].copy_(x)
        x64 = x.double()
        self.total.add_(x64)
        self.sq[slot] = x64.square().sum()
        self.count += 1
        n = min(self.count, self.window)
        numel = x.numel()
        # mean_i ||x_i - mean||² / N  =  (Σ_i ||x_i||²) / (n N)  -  ||Σ_i x_i / n||² / N
        var = self.sq.sum() / (n * numel) - (self.total / n).square().sum() / numel
        return var.float()


class _HeldOutError:
    """MSE between the iterate and the target on the held-out pixels (`weights`: 1 there, 0 elsewhere)."""

    def __init__(self, target: torch.Tensor, weights: torch.Tensor) -> None:
        self.target = target
        self.weights = weights
        self.count = float(weights.sum()) * target.shape[1]  # pixels x channels

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.target).square() * self.weights).sum() / self.count


class EarlyStopper:
    """Applies an `AutoStop` policy to a run.

    `noise_floor` enables the discrepancy rule (`noise_floor()`); `held_out` = (target, weights) replaces
    both other rules by the held-out error of the returned iterate.
    """

    def __init__(
        self,
        policy: AutoStop,
        noise_floor: float | None,
        device: torch.device,
        held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.policy = policy
        self.stat: _ExponentialVariance | _WindowVariance | _HeldOutError
        self.patience = policy.patience
        if held_out is not None:
            self.stat = _HeldOutError(*held_out)
            self.patience = policy.holdout_patience
        elif policy.rule == "emv":
            self.stat = _ExponentialVariance(policy.alpha)
        else:
            self.stat = _WindowVariance(policy.window)
        # ES-WMV only has a full window after `window` outputs.
        self.start = (
            max(policy.warmup, policy.window) if isinstance(self.stat, _WindowVariance) else policy.warmup
        )
        use_floor = policy.discrepancy and noise_floor is not None and held_out is None
        self.threshold = policy.tau * noise_floor if use_floor and noise_floor is not None else None
        self.counter = torch.zeros((), dtype=torch.long, device=device)
        self.best_stat = torch.full((), math.inf, device=device)
        self.best_iter = torch.zeros((), dtype=torch.long, device=device)
        self.best_image: torch.Tensor | None = None
        self.first_stat = torch.full((), math.inf, device=device)  # at the first tracked iteration
        self.last_stat = torch.full((), math.inf, device=device)
        self.hit_iter = torch.zeros((), dtype=torch.long, device=device)  # 0: not reached yet
        self.hit_image: torch.Tensor | None = None
        self.tracking = False

    def update(
        self, iteration: int, raw: torch.Tensor, product: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        """Feed iteration `iteration` (1-based): the raw output drives the statistic, `product` (the EMA
        where the task uses one) is what gets kept. Returns the statistic as a device scalar."""
        self.counter.add_(1)
        # The variance rules watch the raw output's jitter; the held-out error judges what gets returned.
        stat = self.stat.update(product if isinstance(self.stat, _HeldOutError) else raw)
        if iteration > self.start:
            improved = stat < self.best_stat
            self.best_stat = torch.where(improved, stat, self.best_stat)
            self.best_iter = torch.where(improved, self.counter, self.best_iter)
            if self.best_image is None:
                self.best_image = product.detach().clone()  # the first tracked iterate always improves
                self.first_stat = stat.detach().clone()
            else:
                self.best_image.copy_(torch.where(improved, product, self.best_image))
            self.last_stat = stat.detach()
            self.tracking = True
        if self.threshold is not None:
            hit = (loss.detach() <= self.threshold) & (self.hit_iter == 0)
            self.hit_iter = torch.where(hit, self.counter, self.hit_iter)
            if self.hit_image is None:
                self.hit_image = torch.zeros_like(product)
            self.hit_image.copy_(torch.where(hit, product, self.hit_image))
        return stat

    def decide(self, iteration: int) -> StopReason | None:
        """Whether to stop after `iteration` (reads device scalars: one host sync)."""
        if self.threshold is not None and int(self.hit_iter) > 0:
            return StopReason.DISCREPANCY
        if not self.tracking:
            return None
        best = int(self.best_iter)
        if iteration - best < self.patience:
            return None
        if not isinstance(self.stat, _HeldOutError):
            return StopReason.PLATEAU
        if iteration - best >= self.policy.holdout_wait * best:
            return StopReason.HOLDOUT
        first, low, last = torch.stack((self.first_stat, self.best_stat, self.last_stat)).tolist()
        return StopReason.HOLDOUT if holdout_rose(first, low, last, self.policy.holdout_rise) else None

    def choice(self) -> tuple[int, torch.Tensor] | None:
        """The iterate the rule returns now, as (iteration, image), or None before the warm-up ends."""
        if self.threshold is not None and self.hit_image is not None and int(self.hit_iter) > 0:
            return int(self.hit_iter), self.hit_image
        if self.best_image is not None:
            return int(self.best_iter), self.best_image
        return None
