"""The DIP engine: fit a fresh `skip` network to one degraded image and return the restored image.

Usage (numpy in, numpy out; float32 in [0, 1], (H, W) or (H, W, C) with C in {1, 3}, or uint8/uint16)::

    from service.restore.engine import restore
    from service.bus.request import AutoStop, DenoiseTask

    result = restore(noisy, DenoiseTask(sigma=25 / 255), stopping=AutoStop(), seed=0)
    result.image, result.iteration, result.stop_reason

One iteration is the reference's (docs/dip.md §1.2): z + N(0, reg_noise_std²) → net → task loss → backward →
Adam step, then the output EMA where the task has one. The returned iterate is the EMA (denoise, jpeg) or the
raw output (others), chosen by the stopping policy. Denoising under `AutoStop` runs twice: a fit with pixels
held out picks the iteration, then a fit on every pixel from the same seed runs to `refit_scale` times it
(`AutoStop.refit`).
Hooks: `on_progress` every `progress_every` iterations,
`should_cancel()` before every iteration, `time_budget_s` (setup included) checked before every iteration
against the last iteration's duration. The same code runs on CPU and CUDA (`device=None` picks CUDA when
present). With the same seed, device and thread count, runs on CPU are bit-for-bit reproducible.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from service.bus.request import AutoStop, DenoiseTask, EngineOptions, FixedIterations, Stopping, Task
from service.bus.result import Progress, RestoreResult, StopReason
from service.restore.early_stop import (
    EarlyStopper,
    estimate_noise_sigma,
    holdout_mask,
    noise_floor,
    refit_iterations,
    refit_mean_start,
)
from service.restore.padding import as_float_image
from service.restore.problem import Problem, make_problem
from service.restore.recipes import NOISE_SCALE, Recipe, recipe_for
from service.restore.skip import skip
from service.restore.step import TrainStep
from service.restore.tuning import resolve

logger = logging.getLogger(__name__)

# Host reads of the stop rule on an accelerator: every n iterations, so the GPU queue never drains.
GPU_SYNC_EVERY = 16


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when present, else CPU; a named CUDA device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:n]', got {str(device)!r}")
    return dev


def network_input(
    recipe: Recipe, size: tuple[int, int], gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    h, w = size
    if recipe.input_kind == "meshgrid":
        # Reference get_noise(2, 'meshgrid'): channels X, Y in [0, 1] over the (padded) output grid.
        ys = torch.linspace(0.0, 1.0, h, device=device)
        xs = torch.linspace(0.0, 1.0, w, device=device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((grid_x, grid_y))[None]  # (1, 2, H, W)
    shape = (1, recipe.net.in_channels, h, w)
    return torch.rand(shape, generator=gen, device=device) * NOISE_SCALE  # (1, D, H, W), U(0, 0.1)


def seeded_network(recipe: Recipe, seed: int, device: torch.device) -> nn.Module:
    """The recipe's freshly initialised network, its weights drawn from `seed` on the CPU.

    Seeded without touching the caller's global RNG (a forked CPU RNG), so weights do not depend on the
    device; the run's data (z, input noise) comes from a generator of its own, seeded the same.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return skip(recipe.net).to(device)


def to_numpy(t: torch.Tensor, problem: Problem, ndim: int) -> NDArray[np.float32]:
    arr = t[0].detach().permute(1, 2, 0).float().cpu().numpy()  # (1, C, H, W) -> (H, W, C)
    out = np.ascontiguousarray(np.clip(problem.crop(arr), 0.0, 1.0), dtype=np.float32)
    return out[..., 0] if ndim == 2 else out


def restore(
    image: NDArray[np.generic],
    task: Task,
    *,
    stopping: Stopping | None = None,
    seed: int = 0,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: int = 50,
    preview: bool = False,
    should_cancel: Callable[[], bool] | None = None,
    time_budget_s: float | None = None,
    device: str | torch.device | None = None,
    options: EngineOptions | None = None,
) -> RestoreResult:
    """Restore `image` by Deep Image Prior.

    Args:
        image: (H, W) or (H, W, C), C in {1, 3}; uint8, uint16 or float in [0, 1]. Any H, W >= 1.
        task: `DenoiseTask`, `InpaintTask`, `SuperResolveTask` or `JpegTask`.
        stopping: `AutoStop()` (default) or `FixedIterations(n)`.
        seed: seeds the network init, the input z and the per-iteration input noise.
        on_progress: called with a `Progress` every `progress_every` iterations (with the current iterate
            as `preview` if `preview`).
        should_cancel: polled before every iteration; True ends the run (`StopReason.CANCELLED`).
        time_budget_s: wall-clock budget from the call; the run ends before an iteration that would overrun.
        device: None (CUDA when present), "cpu", "cuda" or "cuda:n".
        options: speed switches (`EngineOptions`); the defaults are the fastest measured.

    Returns:
        `RestoreResult` with float32 image in [0, 1] in the input's layout (SR: sides × factor).
    """
    t0 = time.monotonic()
    stopping = stopping if stopping is not None else AutoStop()
    options = options if options is not None else EngineOptions()
    if progress_every < 1:
        raise ValueError(f"progress_every must be >= 1, got {progress_every}")
    if time_budget_s is not None and time_budget_s <= 0:
        raise ValueError(f"time_budget_s must be > 0, got {time_budget_s}")
    ndim = np.asarray(image).ndim
    img = as_float_image(image)
    # Blind denoising: σ̂ picks the reg_noise_std setting (σ=50 noise run at the σ=25 setting peaks
    # 0.3-0.6 dB lower); the task keeps σ unknown for the stop rule.
    blind = isinstance(task, DenoiseTask) and task.sigma is None
    recipe = recipe_for(task, img.shape[2], estimate_noise_sigma(img) if blind else None)
    if isinstance(stopping, FixedIterations):
        budget = stopping.n
    else:
        budget = stopping.max_iterations if stopping.max_iterations is not None else recipe.iterations
    dev = resolve_device(device)
    options = resolve(options, dev)  # bf16 and channels_last decided for this device
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes are fixed for the whole run, as in the reference
    holdout = None
    if isinstance(stopping, AutoStop) and isinstance(task, DenoiseTask):
        holdout = holdout_mask(img.shape[0], img.shape[1], stopping.holdout, seed)
    problem = make_problem(img, task, recipe.net, dev, bool(options.channels_last), holdout)
    stopper = _stopper(stopping, task, img, dev, problem) if isinstance(stopping, AutoStop) else None
    hooks = _Hooks(t0, on_progress, progress_every, preview, should_cancel, time_budget_s, ndim)
    logger.debug("restore %s: %s, budget %d, device %s", type(task).__name__, img.shape, budget, dev)

    run = _fit(problem, recipe, seed, budget, stopper, hooks, options, dev)
    reason, iteration, best = run.reason, run.iteration, run.image
    losses, stats = [run.losses], [run.stats]
    done = run.done
    refit = (
        isinstance(stopping, AutoStop)
        and stopping.refit
        and problem.held_out is not None
        and reason in (StopReason.HOLDOUT, StopReason.MAX_ITERATIONS)
        and iteration > 0
    )
    if refit and isinstance(stopping, AutoStop):
        # The held-out run only chose the iteration; the paper's fit on every pixel, same seed, for
        # `refit_scale` times as many iterations (it peaks later), averaged over its last stretch
        # (`refit_mean_from`: where it peaks varies), is what gets returned (AutoStop).
        target = refit_iterations(stopping, iteration, budget)
        mean_from = refit_mean_start(stopping, iteration, target)
        full = make_problem(img, task, recipe.net, dev, bool(options.channels_last))
        again = _fit(full, recipe, seed, target, None, hooks, options, dev, offset=done, mean_from=mean_from)
        losses.append(again.losses)
        stats.append(torch.full_like(again.losses, math.nan))
        done += again.done
        if again.reason is StopReason.FIXED_ITERATIONS:
            best, iteration = again.image, target  # else cancelled or out of time: keep the held-out one
        else:
            reason = again.reason
        problem = full
    elapsed = time.monotonic() - t0
    logger.debug("restore done: %s after %d iterations, returned %d, %.1fs", reason, done, iteration, elapsed)
    return RestoreResult(
        image=to_numpy(best, problem, ndim),
        iteration=iteration,
        iterations_run=done,
        stop_reason=reason,
        elapsed_s=elapsed,
        device=str(dev),
        losses=torch.cat(losses).cpu().numpy(),
        statistic=torch.cat(stats).cpu().numpy(),
    )


@dataclass(frozen=True)
class _Hooks:
    """The caller's view of a run: progress reports, cancellation and the wall-clock budget."""

    t0: float
    on_progress: Callable[[Progress], None] | None
    progress_every: int
    preview: bool
    should_cancel: Callable[[], bool] | None
    time_budget_s: float | None
    ndim: int


@dataclass(frozen=True)
class _Run:
    reason: StopReason
    done: int  # iterations run
    iteration: int  # the iterate returned
    image: torch.Tensor
    losses: torch.Tensor
    stats: torch.Tensor


def _fit(
    problem: Problem,
    recipe: Recipe,
    seed: int,
    budget: int,
    stopper: EarlyStopper | None,
    hooks: _Hooks,
    options: EngineOptions,
    dev: torch.device,
    offset: int = 0,
    mean_from: int | None = None,
) -> _Run:
    """One DIP optimisation from `seed`: at most `budget` iterations, stopped by `stopper` if any.

    `offset`: iterations already run in this call (a refit), for the progress reports and the budget.
    `mean_from`: without a stopper, return the mean of the iterates from this iteration on.
    """
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    net: nn.Module = seeded_network(recipe, seed, dev)
    net = net.to(memory_format=memory_format)  # type: ignore[call-overload]  # runtime accepts it
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    z = network_input(recipe, problem.out_size, gen, dev).contiguous(memory_format=memory_format)
    graphs = options.graphs_allowed and dev.type == "cuda"
    # fused=True: one kernel per parameter instead of ~8 (CPU and CUDA); about 3x faster steps, same maths.
    optimizer = torch.optim.Adam(
        net.parameters(), lr=recipe.lr, fused=options.fused_updates or None, capturable=graphs
    )
    model: Callable[[torch.Tensor], torch.Tensor] = torch.compile(net) if options.compile else net
    step = TrainStep(model, problem.loss, optimizer, graphs, bf16=bool(options.bf16))

    sync_every = options.sync_every or (1 if dev.type == "cpu" else GPU_SYNC_EVERY)
    losses = torch.full((budget,), math.nan, device=dev)
    stats = torch.full((budget,), math.nan, device=dev)
    # Drawn in NCHW order whatever z's layout, so the noise stream does not depend on `channels_last`.
    noise = torch.empty(z.shape, device=dev)
    net_in = torch.empty_like(z)
    ema: torch.Tensor | None = None
    product: torch.Tensor | None = None
    total: torch.Tensor | None = None  # the sum of the iterates from `mean_from` on
    reason: StopReason | None = None
    done = 0
    last_iter_s = 0.0

    for it in range(1, budget + 1):
        top = time.monotonic()
        if hooks.should_cancel is not None and hooks.should_cancel():
            reason = StopReason.CANCELLED
            break
        if hooks.time_budget_s is not None and top - hooks.t0 + last_iter_s > hooks.time_budget_s:
            reason = StopReason.TIME_BUDGET
            break
        if recipe.reg_noise_std == 0.0:
            net_in = z
        elif options.fused_updates:
            torch.add(z, noise.normal_(0.0, recipe.reg_noise_std, generator=gen), out=net_in)
        else:
            net_in = z + torch.randn(z.shape, generator=gen, device=dev) * recipe.reg_noise_std
        out, loss = step(net_in)
        with torch.no_grad():
            raw = out.detach()
            if recipe.ema is None:
                product = raw
            elif ema is None:
                ema = product = raw.clone()  # the reference initialises the EMA with the first output
            elif options.fused_updates:
                product = ema.lerp_(raw, 1.0 - recipe.ema)
            else:
                ema = product = ema * recipe.ema + raw * (1.0 - recipe.ema)
            losses[it - 1] = loss.detach()
            if mean_from is not None and it >= mean_from:
                total = product.clone() if total is None else total.add_(product)
            if stopper is not None:
                stats[it - 1] = stopper.update(it, raw, product, loss)
        done = it
        if hooks.on_progress is not None and (offset + it) % hooks.progress_every == 0:
            hooks.on_progress(_progress(offset + it, offset + budget, loss, hooks, stopper, product, problem))
        if stopper is not None and (it % sync_every == 0 or it == budget):
            reason = stopper.decide(it)
            if reason is not None:
                break
        last_iter_s = time.monotonic() - top

    if reason is None:
        reason = StopReason.FIXED_ITERATIONS if stopper is None else StopReason.MAX_ITERATIONS
    chosen = stopper.choice() if stopper is not None else None
    if chosen is not None:
        iteration, best = chosen
    elif total is not None and mean_from is not None:
        iteration, best = done, total / (done - mean_from + 1)
    elif product is not None:
        iteration, best = done, product
    else:  # stopped before the first iteration finished: iterate 0 is the untrained network's output
        with torch.no_grad():
            iteration, best = 0, model(z)
    return _Run(reason, done, iteration, best, losses[:done], stats[:done])


def _stopper(
    policy: AutoStop, task: Task, img: NDArray[np.float32], dev: torch.device, problem: Problem
) -> EarlyStopper:
    """The task's stop rule: held-out pixels for denoising, else a discrepancy floor for denoising with σ
    given (or estimated when blind), else the running variance."""
    if problem.held_out is not None:
        return EarlyStopper(policy, None, dev, held_out=problem.held_out)
    if not isinstance(task, DenoiseTask) or not policy.discrepancy:
        return EarlyStopper(policy, None, dev)
    if task.sigma is None and not policy.estimate_sigma:
        return EarlyStopper(policy, None, dev)
    floor = noise_floor(img, task.sigma)
    logger.debug("denoise: noise floor %.3g (sigma %s)", floor, task.sigma)
    return EarlyStopper(policy, floor, dev)


def _progress(
    it: int,
    budget: int,
    loss: torch.Tensor,
    hooks: _Hooks,
    stopper: EarlyStopper | None,
    product: torch.Tensor,
    problem: Problem,
) -> Progress:
    elapsed = time.monotonic() - hooks.t0
    eta = elapsed / it * (budget - it)
    if hooks.time_budget_s is not None:
        eta = min(eta, max(0.0, hooks.time_budget_s - elapsed))
    chosen = stopper.choice() if stopper is not None else None
    return Progress(
        iteration=it,
        max_iterations=budget,
        loss=float(loss.detach()),
        elapsed_s=elapsed,
        eta_s=eta,
        best_iteration=chosen[0] if chosen is not None else None,
        preview=to_numpy(product, problem, hooks.ndim) if hooks.preview else None,
    )
