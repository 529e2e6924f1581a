"""Per-task hyper-parameters, as in the reference notebooks (docs/dip.md §1.3, exact values).

| task            | net (in -> C)                            | input    | lr    | iters | reg_noise | EMA  |
|-----------------|------------------------------------------|----------|-------|-------|-----------|------|
| denoise         | 32, 128/128/4 x5, bilinear               | noise 32 | 0.01  | 3000  | 1/30 (a)  | 0.99 |
| jpeg            | 3, 8..128 down/up, skip 0,0,0,4,4, bilin.| noise 3  | 0.01  | 2400  | 1/30      | 0.99 |
| SR x2 (b), x4   | as denoise                               | noise 32 | 0.01  | 2000  | 0.03      | -    |
| SR x8           | as denoise                               | noise 32 | 0.01  | 4000  | 0.05      | -    |
| inpaint text    | 32, 128/128/128 x5, nearest              | noise 32 | 0.01  | 6001  | 0.03      | -    |
| inpaint hole    | 2, 128/128/0 x5, nearest                 | meshgrid | 0.01  | 5001  | 0.03      | -    |
| inpaint region  | 1, 16..128 x6, skip 0, 5x5 down, no 1x1  | noise 1  | 0.01  | 3001  | 0         | -    |
| inpaint pixels  | 32, 128/128/4 x5, bilinear               | noise 32 | 0.001 | 11000 | 0.03      | -    |

(a) 1/20 for σ = 50 in the reference; here from σ >= 37.5/255, the nearer of its two settings.
(b) x2 is not in the reference; it reuses the x4 settings.
The noise input is U(0, 0.1), as the reference `get_noise(..., var=1/10)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from service.bus.request import (
    HIGH_SIGMA,
    DenoiseTask,
    InpaintStyle,
    InpaintTask,
    JpegTask,
    SuperResolveTask,
    Task,
)
from service.restore.skip import SkipConfig

NOISE_SCALE = 0.1  # z ~ U(0, 0.1): reference get_noise(noise_type='u', var=1/10)


@dataclass(frozen=True)
class Recipe:
    """Everything task-specific about one DIP optimisation except the data."""

    net: SkipConfig
    input_kind: Literal["noise", "meshgrid"]
    lr: float
    iterations: int
    reg_noise_std: float
    ema: float | None  # exp_weight of the output EMA, None where the reference has none


_DEFAULT_NET = SkipConfig()  # 32 -> 3, 128/128/4 x 5 levels, bilinear: denoising and SR
_JPEG_NET = SkipConfig(
    in_channels=3,
    channels_down=(8, 16, 32, 64, 128),
    channels_up=(8, 16, 32, 64, 128),
    channels_skip=(0, 0, 0, 4, 4),
)
_INPAINT_NETS = {
    InpaintStyle.TEXT: SkipConfig(channels_skip=(128,) * 5, upsample_mode="nearest"),
    InpaintStyle.LARGE_HOLE: SkipConfig(in_channels=2, channels_skip=(0,) * 5, upsample_mode="nearest"),
    InpaintStyle.REGION: SkipConfig(
        in_channels=1,
        channels_down=(16, 32, 64, 128, 128, 128),
        channels_up=(16, 32, 64, 128, 128, 128),
        channels_skip=(0,) * 6,
        filter_size_down=5,
        upsample_mode="nearest",
        need1x1_up=False,
    ),
    InpaintStyle.PIXELS: _DEFAULT_NET,
}


def recipe_for(task: Task, channels: int, estimated_sigma: float | None = None) -> Recipe:
    """The reference recipe for `task` on an image with `channels` (1 or 3) channels.

    `estimated_sigma` stands in for an unknown σ in blind denoising: it picks the reg_noise_std setting.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    recipe: Recipe
    if isinstance(task, DenoiseTask):
        sigma = task.sigma if task.sigma is not None else estimated_sigma
        high = sigma is not None and sigma >= HIGH_SIGMA - 1e-9
        recipe = Recipe(_DEFAULT_NET, "noise", 0.01, 3000, 1 / 20 if high else 1 / 30, 0.99)
    elif isinstance(task, JpegTask):
        recipe = Recipe(_JPEG_NET, "noise", 0.01, 2400, 1 / 30, 0.99)
    elif isinstance(task, SuperResolveTask):
        if task.factor == 8:
            recipe = Recipe(_DEFAULT_NET, "noise", 0.01, 4000, 0.05, None)
        else:
            recipe = Recipe(_DEFAULT_NET, "noise", 0.01, 2000, 0.03, None)
    elif isinstance(task, InpaintTask):
        net = _INPAINT_NETS[task.style]
        recipe = {
            InpaintStyle.TEXT: Recipe(net, "noise", 0.01, 6001, 0.03, None),
            InpaintStyle.LARGE_HOLE: Recipe(net, "meshgrid", 0.01, 5001, 0.03, None),
            # The notebook's param_noise=True is a no-op bug (docs/dip.md §1.3), so: no perturbation at all.
            InpaintStyle.REGION: Recipe(net, "noise", 0.01, 3001, 0.0, None),
            InpaintStyle.PIXELS: Recipe(net, "noise", 0.001, 11000, 0.03, None),
        }[task.style]
    else:
        raise TypeError(
            f"unknown task {task!r}; expected DenoiseTask, InpaintTask, SuperResolveTask or JpegTask"
        )
    return replace(recipe, net=replace(recipe.net, out_channels=channels))
