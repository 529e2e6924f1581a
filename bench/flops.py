"""FLOPs of a model and the machine's FLOP/s they are judged against (2 FLOPs per multiply-add).

- `count_conv_flops`: convolution FLOPs of a torch model, counted with forward hooks. Only Conv2d and
  ConvTranspose2d are counted: in ECCV16 they are all but a rounding error of the work (ReLU,
  BatchNorm and the normalisation are elementwise). Biases are not counted.
- `sgemm_gflops`: this machine's dense FP32 matmul rate, measured in the same run as the model.
"""

from __future__ import annotations

import time
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


def sgemm_gflops(n: int, reps: int = 5, device: str = "cpu", numpy: bool = True) -> dict[str, float]:
    """Best-of-`reps` FP32 n³ matmul rate in GFLOP/s, after one warm-up product each: torch's on
    `device`, and numpy's as well on the CPU if `numpy`. CUDA is synchronised around each timed product."""
    a, b = torch.rand(2, n, n, generator=torch.Generator().manual_seed(0))
    ta, tb = a.to(device), b.to(device)
    products: dict[str, Callable[[], object]] = {"torch": lambda: torch.mm(ta, tb)}
    if numpy and device == "cpu":
        na, nb = a.numpy(), b.numpy()
        products["numpy"] = lambda: na @ nb
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def seconds(product: Callable[[], object]) -> float:
        sync()
        start = time.perf_counter()
        product()
        sync()
        return time.perf_counter() - start

    rates = {}
    for name, product in products.items():
        product()
        rates[name] = 2 * n**3 / min(seconds(product) for _ in range(reps)) / 1e9
    return rates
