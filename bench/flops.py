"""Convolution FLOPs of a torch model, counted with forward hooks (2 FLOPs per multiply-add).

Only Conv2d and ConvTranspose2d are counted: in ECCV16 they are all but a rounding error of the
work (ReLU, BatchNorm and the normalisation are elementwise). Biases are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def conv2d_flops(module: nn.Conv2d, output: torch.Tensor) -> int:
    """Each output element is a dot product of (C_in / groups) x kh x kw weights with the input."""
    kh, kw = module.kernel_size
    return 2 * output.numel() * (module.in_channels // module.groups) * kh * kw


def conv_transpose2d_flops(module: nn.ConvTranspose2d, inputs: torch.Tensor) -> int:
    """Each input element is scattered through (C_out / groups) x kh x kw weights."""
    kh, kw = module.kernel_size
    return 2 * inputs.numel() * (module.out_channels // module.groups) * kh * kw


def count_conv_flops(model: nn.Module, run: Callable[[], Any]) -> tuple[int, list[dict[str, Any]]]:
    """FLOPs of the convolutions `run()` executes on `model`, total and per layer (in call order)."""
    layers: list[dict[str, Any]] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.ConvTranspose2d):
            flops = conv_transpose2d_flops(module, args[0])
        elif isinstance(module, nn.Conv2d):
            flops = conv2d_flops(module, output)
        else:
            return
        layers.append({"layer": names[module], "shape": list(output.shape), "flops": flops})

    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)}
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return sum(layer["flops"] for layer in layers), layers
