"""Larsson16 hypercolumn colorizer: Larsson, Maire, Shakhnarovich, "Learning Representations for
Automatic Colorization", ECCV 2016 (gustavla/autocolorize @79d4ce10, docs/colorization.md §4).

A single-channel VGG-16 trunk (conv1_1 … conv5_3 with 2x2 max-pools; fc6 a 7x7 conv with pad 3 and
fc7 a 1x1 conv, 4096 channels each, dropout 0.5 in training). Sixteen of its layers (the input,
the 13 convs, fc6 and fc7; post-ReLU, as Caffe's in-place ReLUs leave the blobs) form a dense
hypercolumn at 1/4 of the input resolution, resampled as in the deploy prototxt: data and conv1
average-pooled 4x4, conv2 2x2, conv3 native, conv4 bilinearly upsampled x2, conv5 x4, fc6/fc7 x8.
That is 1 + 64·2 + 128·2 + 256·3 + 512·6 + 4096·2 = 12,417 channels at width 1. A 1x1 conv maps it
to 1024 (`h_fc1`, ReLU, dropout 0.5 in training), and two 1x1 heads give 32 hue and 32 chroma bins.

Memory: at 256² the explicit 12,417-channel hypercolumn is 203 MB fp32. `h_fc1` is linear and so
are the resampling ops (bilinear weights sum to 1), so `forward` applies each resolution group's
slice of `h_fc1` at that group's native resolution and resamples the 1024-channel result instead:
the same numbers without the concatenation, and fc6/fc7's 8192 channels are mixed at H/32 rather
than at H/4 (64x fewer multiply-adds). `hypercolumn` builds the explicit tensor for reference.
Measured on the exported graphs (onnxruntime CPU, one thread, peak RSS of a run over the loaded
session): full width 134 MB at 256² and 524 MB at 512², against 637 MB and 2.6 GB with the explicit
concatenation; the shipped width 1/8 4 MB and 57 MB (explicit: 68 MB and 298 MB).

The network takes L in [0, 100] and converts it to the gray level it was trained on (the sRGB
value of the neutral colour with that L, in [0, 1]), centred by the training mean 0.4488. Inputs
whose sides are not multiples of 32 are edge-padded to the next multiple (the five pools need it)
and the output cropped back to H/4 x W/4. `width` scales every channel count (the hypercolumn and
`h_fc1` follow); the 32-bin heads keep their size.

Divergences from upstream: random initialisation (upstream starts from ImageNet VGG-16), dense
training at H/4 on the same graph as deploy (upstream trains on 128 sparse locations per image),
and bilinear interpolation with edge clamping instead of Caffe's fixed bilinear deconvolutions
(which zero-pad, so they darken the outermost rows).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from contract import NUM_CHROMA_BINS, NUM_HUE_BINS

GRAY_MEAN = 0.4488  # train_vgg16.prototxt: the data layer subtracts it from gray in [0, 1]
PAD_MULTIPLE = 32  # five 2x2 max-pools before fc6

# L -> neutral sRGB gray, skimage `lab2rgb` constants (service/color/lab.py holds the same ones).
_LAB_OFFSET = 16.0 / 116.0
_LAB_F_KNEE = 0.2068966  # 6/29: below it lab2rgb uses the linear segment
_LAB_KAPPA = 7.787
_LINEAR_KNEE = 0.0031308
_SRGB_SLOPE = 12.92
_SRGB_OFFSET = 0.055
_SRGB_GAMMA = 2.4

# VGG-16 conv stages: (channels at width 1, convs per stage).
_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
FC_CHANNELS = 4096
HIDDEN_CHANNELS = 1024
# How each hypercolumn group reaches H/4: "pool k" averages k x k, "up k" upsamples x k. Groups are
# contiguous in the published layer order (data, conv1, conv2, conv3 | conv4 | conv5 | fc6, fc7).
_QUARTER, _EIGHTH, _SIXTEENTH, _THIRTYSECOND = range(4)


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width))


def l_to_gray(lightness: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> the sRGB gray level in [0, 1] of the neutral colour (L, 0, 0).

    skimage `lab2rgb` for a = b = 0: Y from L (cube above the knee, the linear segment below), then
    the sRGB transfer curve; a neutral XYZ maps to R = G = B = Y.
    """
    fy = (lightness + 16.0) / 116.0
    y = torch.where(fy > _LAB_F_KNEE, fy.clamp(min=_LAB_F_KNEE) ** 3, (fy - _LAB_OFFSET) / _LAB_KAPPA)
    encoded = (1 + _SRGB_OFFSET) * y.clamp(min=_LINEAR_KNEE) ** (1 / _SRGB_GAMMA) - _SRGB_OFFSET
    return torch.where(y > _LINEAR_KNEE, encoded, _SRGB_SLOPE * y).clamp(0.0, 1.0)


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class LarssonColorizer(nn.Module):
    """L (N,1,H,W) in [0,100] -> hue and chroma distributions, each (N,32,H/4,W/4)."""

    def __init__(self, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.width = width
        channels_in = 1
        self.convs = nn.ModuleDict()
        for stage, (channels, count) in enumerate(_STAGES, start=1):
            for i in range(1, count + 1):
                out = _scaled(channels, width)
                self.convs[f"conv{stage}_{i}"] = nn.Conv2d(channels_in, out, kernel_size=3, padding=1)
                channels_in = out
        fc = _scaled(FC_CHANNELS, width)
        self.fc6 = nn.Conv2d(channels_in, fc, kernel_size=7, padding=3)
        self.fc7 = nn.Conv2d(fc, fc, kernel_size=1)
        hidden = _scaled(HIDDEN_CHANNELS, width)
        self.h_fc1 = nn.Conv2d(hypercolumn_channels(width), hidden, kernel_size=1)
        self.prediction_h = nn.Conv2d(hidden, NUM_HUE_BINS, kernel_size=1)
        self.prediction_c = nn.Conv2d(hidden, NUM_CHROMA_BINS, kernel_size=1)
        self.dropout = nn.Dropout(dropout)
        self._groups = _group_channels(width)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for the ReLU layers (no pretrained VGG here); small heads so training starts
        # from near-uniform distributions.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for head in (self.prediction_h, self.prediction_c):
            nn.init.normal_(head.weight, std=0.01)

    def _layers(self, lightness: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The 16 hypercolumn layers at their native resolutions, and the unpadded (H, W)."""
        height, width = lightness.shape[-2:]
        x = l_to_gray(lightness) - GRAY_MEAN
        x = F.pad(x, (0, (-width) % PAD_MULTIPLE, 0, (-height) % PAD_MULTIPLE), mode="replicate")
        layers = [x]
        for name, conv in self.convs.items():
            if name.endswith("_1") and name != "conv1_1":
                x = F.max_pool2d(x, 2)
            x = F.relu(conv(x))
            layers.append(x)
        x = F.max_pool2d(x, 2)  # pool5: H/32
        x = self.dropout(F.relu(self.fc6(x)))
        layers.append(x)
        layers.append(self.dropout(F.relu(self.fc7(x))))
        return layers, (height, width)

    def _by_group(self, layers: list[torch.Tensor]) -> list[torch.Tensor]:
        """Layers grouped by resolution and concatenated; the H/4 group already pooled to H/4."""
        data, c1_1, c1_2, c2_1, c2_2, c3_1, c3_2, c3_3 = layers[:8]
        quarter = [F.avg_pool2d(t, 4) for t in (data, c1_1, c1_2)]
        quarter += [F.avg_pool2d(t, 2) for t in (c2_1, c2_2)]
        return [
            torch.cat([*quarter, c3_1, c3_2, c3_3], 1),  # (N, C, H/4, W/4)
            torch.cat(layers[8:11], 1),  # conv4: (N, C, H/8, W/8)
            torch.cat(layers[11:14], 1),  # conv5: (N, C, H/16, W/16)
            torch.cat(layers[14:16], 1),  # fc6, fc7: (N, C, H/32, W/32)
        ]

    def hypercolumn(self, lightness: torch.Tensor) -> torch.Tensor:
        """The explicit dense hypercolumn (N, 12,417·…, H/4, W/4), as the deploy prototxt builds it."""
        layers, (height, width) = self._layers(lightness)
        quarter, eighth, sixteenth, thirtysecond = self._by_group(layers)
        full = torch.cat([quarter, _up(eighth, 2), _up(sixteenth, 4), _up(thirtysecond, 8)], 1)
        return full[..., : height // 4, : width // 4]

    def logits(self, lightness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,1,H,W) L in [0,100] -> hue and chroma scores before the softmax, (N,32,H/4,W/4) each.

        `h_fc1` applied group by group (see the module docstring): equal to `h_fc1(hypercolumn)`.
        """
        layers, (height, width) = self._layers(lightness)
        groups = self._by_group(layers)
        slices = torch.split(self.h_fc1.weight, self._groups, dim=1)
        hidden = F.conv2d(groups[_QUARTER], slices[_QUARTER], self.h_fc1.bias)  # the bias, once
        for group, factor in ((_EIGHTH, 2), (_SIXTEENTH, 4), (_THIRTYSECOND, 8)):
            hidden = hidden + _up(F.conv2d(groups[group], slices[group]), factor)
        hidden = self.dropout(F.relu(hidden))
        hidden = hidden[..., : height // 4, : width // 4]
        return self.prediction_h(hidden), self.prediction_c(hidden)

    def forward(self, lightness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The served graph: hue and chroma softmax distributions, (N,32,H/4,W/4) each."""
        hue, chroma = self.logits(lightness)
        return torch.softmax(hue, dim=1), torch.softmax(chroma, dim=1)


def _group_channels(width: float) -> list[int]:
    """Hypercolumn channels per resolution group: H/4, H/8, H/16, H/32."""
    c64, c128, c256, c512, fc = (_scaled(c, width) for c in (64, 128, 256, 512, FC_CHANNELS))
    return [1 + 2 * c64 + 2 * c128 + 3 * c256, 3 * c512, 3 * c512, 2 * fc]


def hypercolumn_channels(width: float = 1.0) -> int:
    """12,417 at width 1: data + conv1_1…conv5_3 + fc6 + fc7."""
    return sum(_group_channels(width))


def larsson16(*, width: float = 1.0, dropout: float = 0.5) -> LarssonColorizer:
    """Build a Larsson16 colorizer (randomly initialised; load weights via `colorizers.weights`)."""
    return LarssonColorizer(width=width, dropout=dropout)
