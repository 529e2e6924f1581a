"""SIGGRAPH17 user-guided colorizer: Zhang, Zhu et al., "Real-Time User-Guided Image Colorization
with Learned Deep Priors", SIGGRAPH 2017.

The official architecture of richzhang/colorization `colorizers/siggraph17.py` @4f6009ed (key names
shared with colorization-pytorch `models/networks.py` @66a1cb2e): 107 state_dict entries,
34,187,027 parameters at width 1, including the 529-class head (`model_class`) that upstream's
forward never calls but that colour suggestions need. `width` scales the hidden channels.

Inputs: L in [0, 100], ab hints in Lab units (0 where no hint), and a hint mask that is 1 at hinted
pixels. The network sees cat((L-50)/100, ab/110, mask - mask_offset): the authors' Caffe/upstream
weights use a 0/1 mask (offset 0), the colorization-pytorch retrained weights 0.5 (their
`mask_cent`), so the offset is a property of the checkpoint. H and W must be multiples of 8
(the shortcut additions). Outputs: ab at full resolution (110 tanh) and 529 logits at H/4 over the
a-major 23x23 grid (`pts_grid.npy`).
"""

from __future__ import annotations

import torch
from torch import nn

from contract import AB_NORM, L_CENT, L_NORM, NUM_AB_GRID_BINS


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width))


def _conv(channels_in: int, channels: int, *, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        channels_in, channels, kernel_size=3, stride=1, padding=dilation, dilation=dilation, bias=True
    )


def _block(channels_in: int, channels: int, convs: int, *, dilation: int = 1) -> nn.Sequential:
    """`convs` x (conv3x3 + ReLU), then BN (conv at even index, BN last), all stride 1."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [_conv(channels_in if i == 0 else channels, channels, dilation=dilation), nn.ReLU(True)]
    layers.append(nn.BatchNorm2d(channels))
    return nn.Sequential(*layers)


def _up(channels_in: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(channels_in, channels, kernel_size=4, stride=2, padding=1, bias=True)
    )


def _short(channels_in: int, channels: int) -> nn.Sequential:
    return nn.Sequential(_conv(channels_in, channels))


class SIGGRAPHGenerator(nn.Module):
    def __init__(self, width: float = 1.0, *, mask_offset: float = 0.0) -> None:
        super().__init__()
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        if mask_offset not in (0.0, 0.5):
            raise ValueError(f"mask_offset must be 0 (0/1 masks) or 0.5 (centred masks), got {mask_offset}")
        self.width = width
        self.mask_offset = mask_offset
        c64, c128, c256, c512 = (_scaled(c, width) for c in (64, 128, 256, 512))
        self.model1 = _block(4, c64, 2)  # conv1_2, full resolution
        self.model2 = _block(c64, c128, 2)  # conv2_2, H/2
        self.model3 = _block(c128, c256, 3)  # conv3_3, H/4
        self.model4 = _block(c256, c512, 3)  # H/8
        self.model5 = _block(c512, c512, 3, dilation=2)
        self.model6 = _block(c512, c512, 3, dilation=2)
        self.model7 = _block(c512, c512, 3)
        self.model8up = _up(c512, c256)  # H/8 -> H/4
        self.model3short8 = _short(c256, c256)
        self.model8 = nn.Sequential(
            nn.ReLU(True),
            _conv(c256, c256),
            nn.ReLU(True),
            _conv(c256, c256),
            nn.ReLU(True),
            nn.BatchNorm2d(c256),
        )
        self.model9up = _up(c256, c128)  # H/4 -> H/2
        self.model2short9 = _short(c128, c128)
        self.model9 = nn.Sequential(nn.ReLU(True), _conv(c128, c128), nn.ReLU(True), nn.BatchNorm2d(c128))
        self.model10up = _up(c128, c128)  # H/2 -> H
        self.model1short10 = _short(c64, c128)
        self.model10 = nn.Sequential(nn.ReLU(True), _conv(c128, c128), nn.LeakyReLU(negative_slope=0.2))
        self.model_class = nn.Sequential(nn.Conv2d(c256, NUM_AB_GRID_BINS, kernel_size=1, bias=True))
        self.model_out = nn.Sequential(nn.Conv2d(c128, 2, kernel_size=1, bias=True), nn.Tanh())

    def forward_both(
        self, lightness: torch.Tensor, ab_hint: torch.Tensor, hint_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (ab (N,2,H,W) in Lab units, 529 class logits (N,529,H/4,W/4))."""
        x = torch.cat(((lightness - L_CENT) / L_NORM, ab_hint / AB_NORM, hint_mask - self.mask_offset), dim=1)
        conv1_2 = self.model1(x)
        conv2_2 = self.model2(conv1_2[:, :, ::2, ::2])
        conv3_3 = self.model3(conv2_2[:, :, ::2, ::2])
        conv4_3 = self.model4(conv3_3[:, :, ::2, ::2])
        conv7_3 = self.model7(self.model6(self.model5(conv4_3)))
        conv8_3 = self.model8(self.model8up(conv7_3) + self.model3short8(conv3_3))
        conv9_3 = self.model9(self.model9up(conv8_3) + self.model2short9(conv2_2))
        conv10_2 = self.model10(self.model10up(conv9_3) + self.model1short10(conv1_2))
        return self.model_out(conv10_2) * AB_NORM, self.model_class(conv8_3)

    def forward(
        self,
        lightness: torch.Tensor,
        ab_hint: torch.Tensor | None = None,
        hint_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Upstream's forward: ab at full resolution; no hints = automatic mode."""
        n, _, h, w = lightness.shape
        if ab_hint is None:
            ab_hint = lightness.new_zeros((n, 2, h, w))
        if hint_mask is None:
            hint_mask = lightness.new_zeros((n, 1, h, w))
        return self.forward_both(lightness, ab_hint, hint_mask)[0]


def siggraph17(*, width: float = 1.0, mask_offset: float = 0.0) -> SIGGRAPHGenerator:
    """Build a SIGGRAPH17 colorizer (randomly initialised; load weights via `colorizers.weights`)."""
    return SIGGRAPHGenerator(width=width, mask_offset=mask_offset)
