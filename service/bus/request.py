"""What a caller asks the DIP engine for: the task, the stopping policy and the speed options.

Plain frozen dataclasses with numpy only (no torch), so the worker-pool layer can build, validate and
pickle requests without importing torch. Values are validated on construction and errors name the value.

Tasks (`Task`): `DenoiseTask`, `InpaintTask`, `SuperResolveTask`, `JpegTask`.
Stopping (`Stopping`): `AutoStop` (default; running-variance rule plus, when σ is known, the discrepancy
rule) or `FixedIterations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import numpy as np
from numpy.typing import NDArray

# The reference denoising notebook has two settings: reg_noise_std 1/30 for σ=25 and 1/20 for σ=50 ("set to
# 1./20. for sigma=50"). A σ in between takes the nearer one, so 1/20 from the midpoint on (in [0, 1] units);
# the midpoint also absorbs the estimate's shortfall on clipped noise (σ̂ 42-46 at σ=50, 96² crops).
HIGH_SIGMA = 37.5 / 255


@dataclass(frozen=True)
class DenoiseTask:
    """Remove additive noise. `sigma` is the noise std in [0, 1] units (25/255 for "σ=25"), None if unknown.

    σ picks the reference's reg_noise_std for that noise level (unknown: the engine estimates σ from the
    image to pick it) and, with `AutoStop(holdout=0)`, the discrepancy stop's noise floor.
    """

    sigma: float | None = None

    def __post_init__(self) -> None:
        if self.sigma is not None and not 0.0 < self.sigma < 1.0:
            raise ValueError(f"sigma must be in (0, 1) (e.g. 25/255), got {self.sigma}")


class InpaintStyle(StrEnum):
    """Which reference inpainting configuration to use (docs/dip.md §1.3)."""

    TEXT = "text"  # kate.png: thin strokes missing; 128-channel skips, 6001 iterations
    LARGE_HOLE = "large_hole"  # vase.png: meshgrid input, no skips, 5001 iterations
    REGION = "region"  # library.png: depth-6 net, 5x5 down filters, 3001 iterations
    PIXELS = "pixels"  # barbara 50% pixels: 128/128/4 bilinear net, lr 0.001, 11000 iterations


@dataclass(frozen=True, eq=False)
class InpaintTask:
    """Fill in missing pixels. `mask` is (H, W) bool, True where the pixel is MISSING."""

    mask: NDArray[np.bool_]
    style: InpaintStyle = InpaintStyle.TEXT

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2:
            raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be bool (True = missing), got dtype {mask.dtype}")
        if mask.all():
            raise ValueError("mask marks every pixel missing: nothing to fit")
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "style", InpaintStyle(self.style))


@dataclass(frozen=True)
class SuperResolveTask:
    """Upscale the given image by `factor`; the loss compares Lanczos-2(output) with the input."""

    factor: Literal[2, 4, 8] = 4

    def __post_init__(self) -> None:
        if self.factor not in (2, 4, 8):
            raise ValueError(f"factor must be 2, 4 or 8, got {self.factor}")


@dataclass(frozen=True)
class JpegTask:
    """Remove JPEG compression artifacts (the reference `snail.jpg` configuration)."""


Task = DenoiseTask | InpaintTask | SuperResolveTask | JpegTask


@dataclass(frozen=True)
class AutoStop:
    """When to stop and which iterate to return; the default for every task.

    Denoising, `holdout` > 0 (the default): a random `holdout` fraction of the pixels (seeded by the run's
    seed) is left out of the loss. Their noise is independent of the fit, so the MSE between the iterate
    and the noisy image on them is the iterate's MSE to the clean image there plus a constant: its minimum
    marks the best iteration without knowing σ (self-validation, Li et al. BMVC 2021; J-invariance,
    Batson & Royer ICML 2019). At least `holdout_patience` iterations after the minimum, the run stops as
    soon as that error has risen `holdout_rise` times its descent (from the first tracked iteration to
    the minimum) above it, or once no new minimum came for `holdout_wait` times as long as the minimum
    took to come: DIP fits in stages and can stall between them, and a stall stays flat where the turn
    to fitting the noise rises (service/restore/early_stop.py). With `refit` (default) the paper's fit on
    every pixel then runs again from the same seed to `refit_scale` times that iteration: the error at
    pixels the network never sees turns up before the fit of the pixels it sees stops improving, and
    that fit's peak lies anywhere from 0.9x to 2.3x the held-out minimum. So the refit returns the mean
    of its iterates from `refit_mean_from` times the minimum to its end (default: over [c, 1.5c]),
    which hedges where the peak lies; `refit_mean_from=None` returns its last iterate, exactly what
    `FixedIterations(t)` would. The fit on 90% of the pixels peaks 0.1-0.5 dB lower; `refit=False`
    returns its iterate at the minimum, for fewer iterations. The defaults were adopted on 2 Dec by a
    rule written before the 20 runs it was judged on (docs/dip.md §3.1). σ, given or estimated, only
    picks the recipe. The numbers on fourteen 96² runs (seven images, σ = 25 and 50) are in
    bench/results/dip/quality.md.
    Images with fewer than `MIN_HOLDOUT_PIXELS` held-out pixels fall back to the rules below.

    Otherwise, the blind running-variance rule (Wang et al., arXiv 2112.06074): after `warmup`
    iterations, track the minimum of the outputs' running variance; stop when no new minimum came for
    `patience` iterations and return the iterate at the minimum. `rule="emv"` is the exponential version
    (constant memory, `alpha`); `"wmv"` uses a sliding window of `window` outputs. With `discrepancy` on,
    denoising also stops at the first iteration whose data-fit MSE is <= tau x the noise floor (Morozov)
    and returns that iterate: the clipped-noise variance at the observed pixels when σ is given, else σ̂²
    estimated from the image (`estimate_sigma`; off: blind runs use the variance rule alone). tau = 0.95
    was tuned on F16, zebra and kate at σ = 25 and 50 (within 0.5 dB on all six with σ given).
    `max_iterations` caps the run (None: the task budget).
    """

    rule: Literal["emv", "wmv"] = "emv"
    patience: int = 1000  # ESDIP default
    alpha: float = 0.1  # ESDIP ES-EMV
    window: int = 100  # ESDIP ES-WMV buffer_size
    warmup: int = 100  # ESDIP ES-EMV starts after iteration 100
    discrepancy: bool = True
    tau: float = 0.95
    estimate_sigma: bool = True
    holdout: float = 0.1  # denoising: fraction of pixels held out of the loss (0: off)
    holdout_patience: int = 100  # the least wait for a new held-out minimum
    holdout_wait: float = 2.0  # the longest wait for a new held-out minimum, in multiples of its age
    holdout_rise: float = 0.01  # stop sooner once the error rose this fraction of its descent
    refit: bool = True  # denoising with holdout: refit every pixel to the chosen iteration
    refit_scale: float = 1.5  # ... times the held-out minimum's iteration: the full fit peaks later
    # ... and return the mean of its iterates from this multiple of the minimum on (None: the last one)
    refit_mean_from: float | None = 1.0
    max_iterations: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in ("emv", "wmv"):
            raise ValueError(f"rule must be 'emv' or 'wmv', got {self.rule!r}")
        for name in ("patience", "window", "holdout_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0.0 <= self.holdout <= 0.5:
            raise ValueError(f"holdout must be in [0, 0.5] (a fraction of the pixels), got {self.holdout}")
        if self.holdout_wait <= 0.0:
            raise ValueError(f"holdout_wait must be > 0, got {self.holdout_wait}")
        if not self.holdout_rise >= 0.0:  # also refuses NaN; inf turns the rise test off
            raise ValueError(f"holdout_rise must be >= 0, got {self.holdout_rise}")
        if not 0.0 < self.refit_scale < float("inf"):
            raise ValueError(f"refit_scale must be > 0 and finite, got {self.refit_scale}")
        if self.refit_mean_from is not None and not 0.0 < self.refit_mean_from <= self.refit_scale:
            raise ValueError(
                f"refit_mean_from must be None or in (0, refit_scale = {self.refit_scale}], "
                f"got {self.refit_mean_from}"
            )
        if self.tau <= 0.0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")


@dataclass(frozen=True)
class FixedIterations:
    """Run exactly `n` iterations and return the last iterate (the reference's behaviour)."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


Stopping = AutoStop | FixedIterations


@dataclass(frozen=True)
class EngineOptions:
    """Speed switches; the defaults are the fastest correct setting measured by bench/dip/speed.py.

    They change speed, not the algorithm (results agree up to float rounding; bf16 rounds more, and its
    expected PSNR trace is within ±0.1 dB of fp32's: docs/dip.md §5.1). None: the worker decides for its
    device (service/restore/tuning.py).
    """

    # NHWC activations for the oneDNN/cuDNN convolutions. None: on a CPU with bf16 or at AVX512 (faster
    # there), off at AVX2 and on CUDA (slower or no faster there).
    channels_last: bool | None = None
    # CPU only: the network's forward under bfloat16 autocast (the output layer, loss, EMA and Adam stay
    # fp32): 0.37-0.43x the fp32 reference loop's s/iteration, its mean PSNR trace within 0.03 dB of
    # fp32 NHWC's over 12 seeds (docs/dip.md §5.1). None: on where the CPU has native bf16 (avx512_bf16
    # or AMX), off elsewhere; True there is refused (emulated bf16 is slower than fp32); False: fp32.
    bf16: bool | None = None
    compile: bool = False  # torch.compile the network (pays a one-off compile per image size)
    fused_updates: bool = True  # fused Adam; in-place noise/EMA (normal_ + add(out=), lerp_), no temporaries
    sync_every: int | None = None  # host reads of the stop rule every n iterations; None: 1 on CPU, 16 on GPU
    # CUDA only (ignored on CPU): after a few eager iterations, capture one iteration's kernels (forward,
    # loss, backward, Adam) in a CUDA graph and replay it, so the host no longer launches them one by one:
    # 3.4-4x the jobs/s at 256² on an H200 (bench/results/dip/batch.md). Needs `fused_updates` (a fixed
    # input buffer) and not `compile`. None: on wherever those allow it.
    cuda_graphs: bool | None = None

    @property
    def graphs_allowed(self) -> bool:
        """Whether a CUDA run captures its step in a graph."""
        if self.cuda_graphs is None:
            return self.fused_updates and not self.compile
        return self.cuda_graphs

    def __post_init__(self) -> None:
        for name in ("channels_last", "bf16"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be True, False or None (auto), got {value!r}")
        if self.cuda_graphs is True and (self.compile or not self.fused_updates):
            raise ValueError(
                "cuda_graphs needs fused_updates=True and compile=False (set cuda_graphs=False to use those)"
            )
        if self.sync_every is not None and self.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {self.sync_every}")
