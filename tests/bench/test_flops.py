"""bench.flops: convolution FLOPs against hand-computed counts and torch's own FlopCounterMode."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import count_conv_flops


def test_conv2d_by_hand() -> None:
    # 8 x 10 x 10 outputs, each a dot product of 3 x 3 x 3 = 27 weights: 2 * 800 * 27 FLOPs.
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    total, layers = count_conv_flops(conv, lambda: conv(torch.zeros(1, 3, 10, 10)))
    assert total == 2 * 8 * 10 * 10 * 27 == 43_200
    assert layers == [{"layer": "", "shape": [1, 8, 10, 10], "flops": 43_200}]


def test_strided_dilated_grouped_and_transposed() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2),  # 6 x 5 x 5 out
        nn.ReLU(),
        nn.ConvTranspose2d(6, 2, kernel_size=4, stride=2, padding=1),  # 6 x 5 x 5 in -> 2 x 10 x 10
    )
    total, layers = count_conv_flops(model, lambda: model(torch.zeros(2, 4, 10, 10)))
    conv = 2 * (2 * 6 * 5 * 5) * (4 // 2) * 3 * 3  # batch 2; each output sees C_in / groups channels
    transposed = 2 * (2 * 6 * 5 * 5) * 2 * 4 * 4  # each input element scatters into C_out x k x k
    assert [layer["flops"] for layer in layers] == [conv, transposed]
    assert [layer["layer"] for layer in layers] == ["0", "2"]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(2, 4, 10, 10))
    assert total == counter.get_total_flops()


def test_hooks_are_removed() -> None:
    conv = nn.Conv2d(1, 1, 1)
    count_conv_flops(conv, lambda: conv(torch.zeros(1, 1, 2, 2)))
    assert not conv._forward_hooks
