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

# σ at and above which the reference denoising notebook raises reg_noise_std from 1/30 to 1/20 ("set to
# 1./20. for sigma=50"); in [0, 1] units.
HIGH_SIGMA = 50 / 255


@dataclass(frozen=True)
class DenoiseTask:
    """Remove additive noise. `sigma` is the noise std in [0, 1] units (25/255 for "σ=25"), None if unknown.

    A known σ picks the reference's reg_noise_std for that σ and sets the discrepancy stop's noise floor
    (unknown: the floor is estimated from the image, see `AutoStop`).
    """

    sigma: float | None = None

    def __post_init__(self) -> None:
        if self.sigma is not None and not 0.0 < self.sigma < 1.0:
            raise ValueError(f"sigma must be in (0, 1) (e.g. 25/255), got {self.sigma}")


class InpaintStyle(StrEnum):
    """Which reference inpainting configuration to use (dip.md §1.3)."""

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
    """Blind early stopping by the running variance of the outputs (Wang et al., arXiv 2112.06074).

    After `warmup` iterations, track the minimum of the outputs' running variance; stop when no new
    minimum came for `patience` iterations and return the iterate at the minimum. `rule="emv"` is the
    exponential version (constant memory, `alpha`); `"wmv"` uses a sliding window of `window` outputs.
    With `discrepancy` on, denoising also stops at the first iteration whose data-fit MSE is <= tau x the
    noise floor (Morozov) and returns that iterate: the clipped-noise variance at the observed pixels when
    σ is given, else σ̂² estimated from the image (`estimate_sigma`; off: blind runs use the variance rule
    alone). tau = 0.95 because the EMA iterate peaks after the raw fit goes below the floor: on F16, zebra
    and kate at σ = 25 and 50 the best iterate came at 0.93-1.03 x the floor, and 0.95 lands within
    0.5 dB of it on all six with σ given (bench/results/dip/quality.md). `max_iterations` caps the run
    (None: the task budget).
    """

    rule: Literal["emv", "wmv"] = "emv"
    patience: int = 1000  # ESDIP default
    alpha: float = 0.1  # ESDIP ES-EMV
    window: int = 100  # ESDIP ES-WMV buffer_size
    warmup: int = 100  # ESDIP ES-EMV starts after iteration 100
    discrepancy: bool = True
    tau: float = 0.95
    estimate_sigma: bool = True
    max_iterations: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in ("emv", "wmv"):
            raise ValueError(f"rule must be 'emv' or 'wmv', got {self.rule!r}")
        for name in ("patience", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
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

    They change speed, not the algorithm (results agree up to float rounding).
    """

    channels_last: bool = False  # NHWC activations for the oneDNN/cuDNN convolutions
    compile: bool = False  # torch.compile the network (pays a one-off compile per image size)
    fused_updates: bool = True  # fused Adam; in-place noise/EMA (normal_ + add(out=), lerp_), no temporaries
    sync_every: int | None = None  # host reads of the stop rule every n iterations; None: 1 on CPU, 16 on GPU

    def __post_init__(self) -> None:
        if self.sync_every is not None and self.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {self.sync_every}")
