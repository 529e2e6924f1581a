"""The data side of one DIP fit: padded target, degradation operator and loss, per task.

loss(output) for each task (output is the network's (1, C, H', W') image, padded):

* denoise, jpeg:   MSE(out, y)
* denoise, pixels held out for the stop rule: MSE(out·m, y·m), m = 0 on the held-out pixels and on their
                   reflections in the padding (else the fit would see them after all)
* inpaint:         MSE(out·m, y·m), m = 1 on known pixels (reference: mean over *all* elements)
* super-resolve:   MSE(Lanczos2_f(out), y), out at f times y's size
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from service.bus.request import DenoiseTask, InpaintTask, SuperResolveTask, Task
from service.restore.lanczos import Lanczos2Downsampler
from service.restore.padding import Padding, padding_for
from service.restore.skip import SkipConfig


@dataclass(frozen=True, eq=False)
class Problem:
    """`loss(out)` for a network output of spatial size `out_size`; `crop` undoes the padding."""

    loss: Callable[[torch.Tensor], torch.Tensor]
    out_size: tuple[int, int]
    padding: Padding
    scale: int  # output side / input side (the SR factor, else 1)
    # (padded target, weights 1 on the held-out pixels inside the image, 0 elsewhere) for the stop rule.
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None

    def crop(self, out: NDArray[np.float32]) -> NDArray[np.float32]:
        """(H', W', C) padded output -> (H·scale, W·scale, C)."""
        return self.padding.crop(out, self.scale)


def _to_tensor(arr: NDArray[np.float32], device: torch.device, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].to(device)  # (H,W,C)->(1,C,H,W)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def make_problem(
    image: NDArray[np.float32],
    task: Task,
    net: SkipConfig,
    device: torch.device,
    channels_last: bool = False,
    holdout: NDArray[np.bool_] | None = None,
) -> Problem:
    """Pad `image` ((H, W, C) float32 in [0, 1]) for `net` and build the task's loss.

    `holdout` ((H, W) bool, denoising only): pixels the loss must not see, kept for validation.
    """
    if holdout is not None and not isinstance(task, DenoiseTask):
        raise ValueError(f"holding pixels out is for denoising only, got {type(task).__name__}")
    h, w, c = image.shape
    if isinstance(task, SuperResolveTask):
        f = task.factor
        # The output (f x the padded input) must be a multiple of the net's multiple and >= its minimum.
        pad = padding_for(h, w, max(1, net.size_multiple // f), -(-net.min_size // f))
        y = _to_tensor(pad.apply(image), device, channels_last)
        down = Lanczos2Downsampler(f, c).to(device)
        return Problem(
            loss=lambda out: F.mse_loss(down(out), y),
            out_size=(y.shape[2] * f, y.shape[3] * f),
            padding=pad,
            scale=f,
        )
    pad = padding_for(h, w, net.size_multiple, net.min_size)
    y = _to_tensor(pad.apply(image), device, channels_last)
    out_size = (y.shape[2], y.shape[3])
    if isinstance(task, InpaintTask):
        if task.mask.shape != (h, w):
            raise ValueError(f"mask shape {task.mask.shape} does not match the image's {(h, w)}")
        known = (~task.mask).astype(np.float32)[..., None]
        m = _to_tensor(pad.apply(known), device, channels_last)
        ym = y * m
        return Problem(lambda out: F.mse_loss(out * m, ym), out_size, pad, 1)
    if holdout is not None:
        if holdout.shape != (h, w):
            raise ValueError(f"holdout shape {holdout.shape} does not match the image's {(h, w)}")
        visible = _to_tensor(pad.apply((~holdout).astype(np.float32)[..., None]), device, channels_last)
        inside = np.zeros((out_size[0], out_size[1], 1), np.float32)
        inside[pad.top : pad.top + h, pad.left : pad.left + w, 0] = holdout
        yv = y * visible
        return Problem(
            lambda out: F.mse_loss(out * visible, yv),
            out_size,
            pad,
            1,
            held_out=(y, _to_tensor(inside, device, channels_last)),
        )
    return Problem(lambda out: F.mse_loss(out, y), out_size, pad, 1)
