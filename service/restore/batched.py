"""Several DIP fits in one optimisation step: the jobs' networks stacked and run under `torch.func.vmap`.

One DIP iteration of a 256² image keeps an H200 busy for a few milliseconds in kernels far too small to
fill it; stacking K jobs' parameters turns each convolution into one grouped convolution over all K
(vmap's batching rule), so K jobs cost about one launch sequence. Usage::

    from service.restore.batched import BatchJob, restore_batch

    jobs = [BatchJob(noisy, DenoiseTask(sigma=25 / 255), iterations=1800, seed=s) for noisy, s in ...]
    results = restore_batch(jobs, device="cuda")  # one RestoreResult per job, in order

Each job is exactly its own `restore(image, task, stopping=FixedIterations(n), seed=seed)`, up to float
rounding: its network comes from its seed, its z and input noise from its own generator, its loss is its
own (the sum over jobs has per-job gradients), and Adam and the output EMA are elementwise, so stacking
them changes nothing. BatchNorm keeps no running statistics here: DIP normalises with each pass's own
statistics (the reference never calls `eval()`), so the running ones are never read.

Jobs must share one recipe (network, learning rate, input noise, EMA: the same task kind and settings)
and one padded output size; each may run its own number of iterations (the batch runs to the longest,
and a job's iterate is taken at its own count). Early stopping is per-image work that would leave slots
idle, so batches run fixed counts; `AutoStop`'s held-out refit is such a count.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, stack_module_state, vmap

from service.bus.request import DenoiseTask, EngineOptions, Task
from service.bus.result import RestoreResult, StopReason
from service.restore.early_stop import estimate_noise_sigma
from service.restore.engine import network_input, resolve_device, seeded_network, to_numpy
from service.restore.padding import as_float_image
from service.restore.problem import Problem, make_problem
from service.restore.recipes import Recipe, recipe_for
from service.restore.step import TrainStep


@dataclass(frozen=True, eq=False)
class BatchJob:
    """One image's fit: what `restore(image, task, stopping=FixedIterations(iterations), seed=seed)` does."""

    image: NDArray[np.generic]
    task: Task
    iterations: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


def restore_batch(
    jobs: Sequence[BatchJob],
    *,
    device: str | torch.device | None = None,
    options: EngineOptions | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[RestoreResult]:
    """Fit every job's network in one stacked optimisation; one `RestoreResult` per job, in order.

    `should_cancel` is polled before every iteration; True ends the batch, and unfinished jobs return their
    last iterate with `StopReason.CANCELLED`. `options.fused_updates` and `cuda_graphs` apply;
    `channels_last` and `compile` are single-job switches and are refused here.
    """
    t0 = time.monotonic()
    options = options if options is not None else EngineOptions()
    if options.channels_last or options.compile:
        raise ValueError("channels_last and compile are not supported for batched fits")
    if not jobs:
        raise ValueError("restore_batch needs at least one job")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    imgs = [as_float_image(job.image) for job in jobs]
    recipes = [
        recipe_for(job.task, img.shape[2], _blind_sigma(job.task, img))
        for job, img in zip(jobs, imgs, strict=True)
    ]
    for k, recipe in enumerate(recipes[1:], start=1):
        if recipe != recipes[0]:
            raise ValueError(
                f"job {k} needs another recipe than job 0 ({type(jobs[k].task).__name__} vs "
                f"{type(jobs[0].task).__name__}, or another σ setting/channel count); batch like jobs only"
            )
    recipe = recipes[0]
    problems = [make_problem(img, job.task, recipe.net, dev) for job, img in zip(jobs, imgs, strict=True)]
    for k, problem in enumerate(problems[1:], start=1):
        if problem.out_size != problems[0].out_size:
            raise ValueError(
                f"job {k} pads to {problem.out_size}, job 0 to {problems[0].out_size}; "
                "batch images of one padded size only"
            )

    forward, params = _stacked_networks(recipe, [job.seed for job in jobs], dev)
    gens = [torch.Generator(device=dev).manual_seed(job.seed) for job in jobs]
    z = torch.stack([network_input(recipe, problems[0].out_size, gen, dev) for gen in gens])  # (K,1,D,H,W)
    graphs = options.graphs_allowed and dev.type == "cuda"
    optimizer = torch.optim.Adam(params, lr=recipe.lr, fused=options.fused_updates or None, capturable=graphs)

    def loss(out: torch.Tensor) -> torch.Tensor:  # (K, 1, C, H, W) -> (K,): each job's own loss
        return torch.stack([problem.loss(out[k]) for k, problem in enumerate(problems)])

    step = TrainStep(forward, loss, optimizer, graphs)
    counts = [job.iterations for job in jobs]
    budget = max(counts)
    losses = torch.full((len(jobs), budget), math.nan, device=dev)
    noise = torch.empty_like(z)
    net_in = z if recipe.reg_noise_std == 0.0 else torch.empty_like(z)
    ema: torch.Tensor | None = None
    product: torch.Tensor | None = None
    kept: list[torch.Tensor | None] = [None] * len(jobs)
    done = 0
    for it in range(1, budget + 1):
        if should_cancel is not None and should_cancel():
            break
        if recipe.reg_noise_std != 0.0:
            # Each job's noise from its own generator, in its own order: the stream `restore` draws.
            for k, gen in enumerate(gens):
                noise[k].normal_(0.0, recipe.reg_noise_std, generator=gen)
            torch.add(z, noise, out=net_in)
        out, per_job = step(net_in)  # (K, 1, C, H, W), (K,)
        with torch.no_grad():
            raw = out.detach()
            if recipe.ema is None:
                product = raw
            elif ema is None:
                ema = product = raw.clone()
            else:
                product = ema.lerp_(raw, 1.0 - recipe.ema)
            losses[:, it - 1] = per_job.detach()
            for k, n in enumerate(counts):
                if n == it:
                    kept[k] = product[k].clone()
        done = it

    elapsed = time.monotonic() - t0
    loss_rows = losses.cpu().numpy()
    results = []
    for k, (job, problem) in enumerate(zip(jobs, problems, strict=True)):
        image = kept[k]
        reason = StopReason.FIXED_ITERATIONS
        iteration = job.iterations
        if image is None:  # cancelled before this job's count
            reason, iteration = StopReason.CANCELLED, done
            image = product[k] if product is not None else _untrained(forward, z)[k]
        results.append(_result(image, problem, job, iteration, reason, elapsed, dev, loss_rows[k]))
    return results


def _blind_sigma(task: Task, img: NDArray[np.float32]) -> float | None:
    """σ̂ for blind denoising, as `restore` uses it to pick the recipe."""
    if isinstance(task, DenoiseTask) and task.sigma is None:
        return estimate_noise_sigma(img)
    return None


def _stacked_networks(
    recipe: Recipe, seeds: list[int], dev: torch.device
) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]]:
    """(forward over stacked inputs (K, 1, D, H, W) -> (K, 1, C, H, W), the stacked parameter leaves)."""
    nets: list[nn.Module] = []
    for seed in seeds:
        net = seeded_network(recipe, seed, dev)
        replace_all_batch_norm_modules_(net)  # batch statistics only: running ones are never read in DIP
        nets.append(net)
    params, buffers = stack_module_state(nets)
    skeleton = copy.deepcopy(nets[0]).to("meta")

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(skeleton, (p, b), (x,))
        return out

    batched = vmap(one, in_dims=(0, 0, 0), randomness="error")
    return (lambda x: batched(params, buffers, x)), list(params.values())


def _untrained(forward: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return forward(z)


def _result(
    image: torch.Tensor,
    problem: Problem,
    job: BatchJob,
    iteration: int,
    reason: StopReason,
    elapsed: float,
    dev: torch.device,
    losses: NDArray[np.float32],
) -> RestoreResult:
    ran = int(np.count_nonzero(~np.isnan(losses[: job.iterations])))
    return RestoreResult(
        image=to_numpy(image, problem, np.asarray(job.image).ndim),
        iteration=iteration,
        iterations_run=ran,
        stop_reason=reason,
        elapsed_s=elapsed,
        device=str(dev),
        losses=np.ascontiguousarray(losses[:ran], dtype=np.float32),
        statistic=np.full(ran, math.nan, np.float32),
    )
