"""The Deep Image Prior `skip` encoder-decoder, all of it in this single file.

References:
1) Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018 (arXiv 1711.10925).
2) The authors' code, GitHub DmitryUlyanov/deep-image-prior at 042e0d4c, `models/skip.py` and
   `models/common.py`. The layer order below follows that code one to one (see
   docs/dip.md §1.1), so a config here builds the same network, parameter for parameter:
   the denoising/SR config has 2,217,831 parameters.

Level i of `n` (outermost first), built recursively::

    x ──┬─ skip:   conv1x1(in, skip_i) → BN → act                      (only if skip_i > 0)
        └─ deeper: conv(in, down_i, stride 2) → BN → act → conv(down_i, down_i) → BN → act
                   → [level i+1] → Upsample ×2
    cat(skip, deeper) → BN → conv(skip_i + k, up_i) → BN → act → [conv1x1(up_i, up_i) → BN → act]

and a final conv1x1(up_0, out) → Sigmoid. BatchNorm stays in train mode on purpose: the reference never
calls `net.eval()`, so every pass normalises with the single image's own statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

UpsampleMode = Literal["nearest", "bilinear"]
DownsampleMode = Literal["stride", "avg"]

# LeakyReLU slope of the reference `common.act('LeakyReLU')`.
LEAKY_SLOPE = 0.2


@dataclass(frozen=True)
class SkipConfig:
    """Hyper-parameters of one `skip` network; defaults are the denoising/SR net of the reference."""

    in_channels: int = 32
    out_channels: int = 3
    channels_down: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_up: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_skip: tuple[int, ...] = (4, 4, 4, 4, 4)
    filter_size_down: int = 3
    filter_size_up: int = 3
    filter_size_skip: int = 1
    upsample_mode: UpsampleMode = "bilinear"
    downsample_mode: DownsampleMode = "stride"
    need1x1_up: bool = True

    def __post_init__(self) -> None:
        n = len(self.channels_down)
        if n == 0 or len(self.channels_up) != n or len(self.channels_skip) != n:
            raise ValueError(
                "channels_down, channels_up and channels_skip need the same non-zero length, got "
                f"{self.channels_down}, {self.channels_up}, {self.channels_skip}"
            )
        if self.upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {self.upsample_mode!r}")
        if self.downsample_mode not in ("stride", "avg"):
            raise ValueError(f"downsample_mode must be 'stride' or 'avg', got {self.downsample_mode!r}")

    @property
    def num_scales(self) -> int:
        return len(self.channels_down)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (one halving per scale)."""
        return 2**self.num_scales

    @property
    def min_size(self) -> int:
        """Smallest side: the deepest level needs >= 2 px for its BN and more px than its reflection pad."""
        deepest = max(2, (self.filter_size_down - 1) // 2 + 1, (self.filter_size_up - 1) // 2 + 1)
        return self.size_multiple * deepest


def _conv(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, downsample: DownsampleMode = "stride"
) -> nn.Sequential:
    # Reference `common.conv` with pad='reflection': ReflectionPad2d then an unpadded conv; 'avg' moves the
    # stride into an AvgPool2d after a stride-1 conv.
    layers: list[nn.Module] = []
    if kernel > 1:
        layers.append(nn.ReflectionPad2d((kernel - 1) // 2))
    conv_stride = stride if downsample == "stride" else 1
    layers.append(nn.Conv2d(in_ch, out_ch, kernel, conv_stride, padding=0, bias=True))
    if stride != 1 and downsample == "avg":
        layers.append(nn.AvgPool2d(stride, stride))
    return nn.Sequential(*layers)


class BatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` (same parameters, same results) that runs a thin NHWC input in NCHW.

    PyTorch's channels-last batch-norm kernels on CPU vectorise across channels, and below 16 channels
    most of them fall far behind the NCHW ones. Forward + backward, torch 2.13, AVX-512, 2 threads, NHWC
    against a transpose to NCHW and back: 8 channels at 256² 4.8-5.3 ms against 2.1-2.8 (fp32, bf16),
    at 128² 1.25-1.28 against 0.50-0.65, at 32² 0.13 against 0.09-0.11; 12 channels at 256² 8.9-9.7
    against 4.1-4.5; 4 channels in fp32 at 256² 4.5 against 0.94. The exception is bf16 at 4
    channels, where the NHWC kernel keeps up (1.06 against 1.29 ms at 256²). The JPEG recipe's net
    has four 8-channel layers at 128-256², a third of its iteration; on that iteration (bench.dip.speed,
    bf16 NHWC) 0.050-0.055 → 0.044-0.046 s (docs/dip.md §5).
    """

    THIN_CHANNELS = 16  # from here up the NHWC kernels match or beat NCHW (16 x 256²: 1.2-1.8 vs 1.0-2.2 ms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        thin = channels < self.THIN_CHANNELS and not (x.dtype == torch.bfloat16 and channels <= 4)
        if thin and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def _bn_act(ch: int) -> list[nn.Module]:
    return [BatchNorm2d(ch), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]


class _Level(nn.Module):
    """One scale: skip branch and deeper branch, concatenated, then the up convs."""

    def __init__(self, cfg: SkipConfig, i: int, in_ch: int) -> None:
        super().__init__()
        down, up, skip = cfg.channels_down[i], cfg.channels_up[i], cfg.channels_skip[i]
        last = i == cfg.num_scales - 1
        self.skip = (
            nn.Sequential(_conv(in_ch, skip, cfg.filter_size_skip), *_bn_act(skip)) if skip > 0 else None
        )
        deeper: list[nn.Module] = [
            _conv(in_ch, down, cfg.filter_size_down, 2, cfg.downsample_mode),
            *_bn_act(down),
            _conv(down, down, cfg.filter_size_down),
            *_bn_act(down),
        ]
        if not last:
            deeper.append(_Level(cfg, i + 1, down))
        deeper.append(nn.Upsample(scale_factor=2, mode=cfg.upsample_mode))
        self.deeper = nn.Sequential(*deeper)
        k = down if last else cfg.channels_up[i + 1]
        up_layers: list[nn.Module] = [
            BatchNorm2d(skip + k),
            _conv(skip + k, up, cfg.filter_size_up),
            *_bn_act(up),
        ]
        if cfg.need1x1_up:
            up_layers += [_conv(up, up, 1), *_bn_act(up)]
        self.up = nn.Sequential(*up_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deeper(x)  # (B, C, H, W) -> (B, k, H, W): down to H/2, back up to H
        if self.skip is not None:
            # Sizes always agree: the engine pads H, W to a multiple of 2**num_scales, so the reference
            # Concat's silent centre-crop is never needed.
            deep = torch.cat((self.skip(x), deep), dim=1)  # (B, skip_i + k, H, W)
        return self.up(deep)


class Skip(nn.Module):
    """The `skip` network: (B, in_channels, H, W) -> (B, out_channels, H, W) in (0, 1)."""

    def __init__(self, cfg: SkipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = _Level(cfg, 0, cfg.in_channels)
        self.head = nn.Sequential(_conv(cfg.channels_up[0], cfg.out_channels, 1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        body = self.body(z)
        # The output layer stays fp32 under bf16 autocast (3 output channels: cheap), so the image, the
        # loss and the EMA see fp32 values rather than bf16's 8-bit mantissa (steps of 1/512 near 0.5).
        with torch.autocast(z.device.type, enabled=False):
            return self.head(body.to(z.dtype))  # a no-op without autocast


def skip(cfg: SkipConfig | None = None) -> Skip:
    """Build a freshly initialised `skip` network (PyTorch default init, as the reference).

    >>> sum(p.numel() for p in skip(SkipConfig()).parameters())
    2217831
    """
    return Skip(cfg if cfg is not None else SkipConfig())
