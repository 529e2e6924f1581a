"""ECCV16 colorizer: Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016.

The official architecture of richzhang/colorization `colorizers/eccv16.py` @4f6009ed, layer for
layer, so the authors' released checkpoint (`colorization_release_v2-9b330a0b.pth`) loads key for
key: 82 state_dict entries, 32,236,011 parameters at width 1. `width` scales every hidden channel
count for the smaller variants this project trains on CPUs; the 313-bin head and the ab decode
layer keep their sizes.

Each block ends ReLU -> BatchNorm (BN after the ReLU, so it cannot be folded into the conv).
The network sees (L - 50) / 100 and predicts 313 logits at H/4 over the in-gamut ab bins
(`pts_in_hull.npy` row order). Export stops at the logits: annealed-mean decoding happens in the
gateway, where the temperature is a request parameter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract import AB_NORM, L_CENT, L_NORM, NUM_AB_BINS, asset_path


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width))


def _block(
    channels_in: int, channels: int, convs: int, *, stride_last: int = 1, dilation: int = 1
) -> nn.Sequential:
    """`convs` x (conv3x3 + ReLU), then BN: indices conv 0,2,4.., ReLU 1,3,5.., BN last."""
    layers: list[nn.Module] = []
    for i in range(convs):
        stride = stride_last if i == convs - 1 else 1
        layers += [
            nn.Conv2d(
                channels_in if i == 0 else channels,
                channels,
                kernel_size=3,
                stride=stride,
                padding=dilation,
                dilation=dilation,
                bias=True,
            ),
            nn.ReLU(True),
        ]
    layers.append(nn.BatchNorm2d(channels))
    return nn.Sequential(*layers)


class ECCVGenerator(nn.Module):
    """L (N,1,H,W) in [0,100] -> 313 logits (N,313,H/4,W/4); `forward` decodes the T=1 mean."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        self.width = width
        c64, c128, c256, c512 = (_scaled(c, width) for c in (64, 128, 256, 512))
        self.model1 = _block(1, c64, 2, stride_last=2)  # 256 -> 128
        self.model2 = _block(c64, c128, 2, stride_last=2)  # 128 -> 64
        self.model3 = _block(c128, c256, 3, stride_last=2)  # 64 -> 32
        self.model4 = _block(c256, c512, 3)
        self.model5 = _block(c512, c512, 3, dilation=2)
        self.model6 = _block(c512, c512, 3, dilation=2)
        self.model7 = _block(c512, c512, 3)
        self.model8 = nn.Sequential(
            nn.ConvTranspose2d(c512, c256, kernel_size=4, stride=2, padding=1, bias=True),  # 32 -> 64
            nn.ReLU(True),
            nn.Conv2d(c256, c256, kernel_size=3, stride=1, padding=1, bias=True),
            nn.ReLU(True),
            nn.Conv2d(c256, c256, kernel_size=3, stride=1, padding=1, bias=True),
            nn.ReLU(True),
            nn.Conv2d(c256, NUM_AB_BINS, kernel_size=1, stride=1, padding=0, bias=True),  # logits
        )
        # Expectation over the bin centres, as a fixed 1x1 conv (Caffe `class8_ab`). The model
        # multiplies by 110 afterwards, so the weights hold the centres / 110.
        self.model_out = nn.Conv2d(NUM_AB_BINS, 2, kernel_size=1, padding=0, dilation=1, stride=1, bias=False)
        bins = torch.from_numpy(np.load(asset_path("pts_in_hull.npy")).astype(np.float32))
        with torch.no_grad():
            self.model_out.weight.copy_((bins.T / AB_NORM).reshape(2, NUM_AB_BINS, 1, 1))
        self.model_out.weight.requires_grad_(False)

    def logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) L in [0,100] -> (N,313,H/4,W/4) unnormalised scores."""
        x = (lightness - L_CENT) / L_NORM
        for block in (self.model1, self.model2, self.model3, self.model4):
            x = block(x)
        for block in (self.model5, self.model6, self.model7, self.model8):
            x = block(x)
        return x

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        """Upstream's forward: softmax mean (T=1) -> x4 bilinear -> ab in Lab units, (N,2,H,W)."""
        probs = F.softmax(self.logits(lightness), dim=1)
        ab = self.model_out(probs)
        return F.interpolate(ab, scale_factor=4, mode="bilinear", align_corners=False) * AB_NORM


def eccv16(*, width: float = 1.0) -> ECCVGenerator:
    """Build an ECCV16 colorizer (randomly initialised; load weights via `colorizers.weights`)."""
    return ECCVGenerator(width=width)
