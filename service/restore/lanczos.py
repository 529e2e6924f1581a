"""The fixed Lanczos-2 downsampler that the super-resolution loss looks through.

Reference: DmitryUlyanov/deep-image-prior @ 042e0d4c, `models/downsampler.py`, used as
`Downsampler(n_planes, factor, kernel_type='lanczos2', phase=0.5, preserve_size=True)` (docs/dip.md §1.3):

* kernel_width = 4·factor + 1; with phase 0.5 the kernel is (4·factor) x (4·factor);
* entry (i, j), 1-based: L(di)·L(dj) with di = |i + 0.5 - center| / factor, center = (kernel_width + 1) / 2,
  L(x) = 2·sin(πx)·sin(πx/2) / (π²x²) (L(0) = 1), normalised to sum 1;
* ReplicationPad2d((kernel - factor) / 2), then a stride-`factor` conv applying the kernel to each plane.

The kernel is a buffer, not a parameter, so no optimiser ever sees it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

SUPPORT = 2  # "lanczos2"


def lanczos2_kernel(factor: int) -> NDArray[np.float64]:
    """The (4·factor, 4·factor) Lanczos-2 kernel for downsampling by `factor`, phase 0.5, summing to 1.

    >>> lanczos2_kernel(4).shape
    (16, 16)
    """
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    width = SUPPORT * 2 * factor + 1
    center = (width + 1) / 2
    idx = np.arange(1, width, dtype=np.float64)  # 1-based, width - 1 taps for phase 0.5
    d = np.abs(idx + 0.5 - center) / factor
    # d is never 0 with phase 0.5 (it is a half-integer over factor), so no L(0) special case is needed.
    taps = SUPPORT * np.sin(np.pi * d) * np.sin(np.pi * d / SUPPORT) / (np.pi**2 * d**2)
    kernel = np.outer(taps, taps)
    return kernel / kernel.sum()


class Lanczos2Downsampler(nn.Module):
    """(B, C, H, W) -> (B, C, H / factor, W / factor); H and W must be multiples of `factor`."""

    kernel: torch.Tensor

    def __init__(self, factor: int, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        kernel = torch.from_numpy(lanczos2_kernel(factor)).float()
        # Depthwise (groups=C) instead of the reference's diagonal C x C weight: same result, 1/C the work.
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).contiguous())
        self.factor = factor
        self.pad = (kernel.shape[0] - factor) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(f"H and W must be multiples of {self.factor}, got {tuple(x.shape)}")
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        return F.conv2d(x, self.kernel, stride=self.factor, groups=x.shape[1])
