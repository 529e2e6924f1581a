"""Batched DIP fits: the stacked networks compute each job's own fit, and the batch API's contract."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from service.bus.request import (
    DenoiseTask,
    EngineOptions,
    FixedIterations,
    InpaintTask,
    JpegTask,
    SuperResolveTask,
)
from service.bus.result import StopReason
from service.restore.batched import BatchJob, _stacked_networks, restore_batch
from service.restore.engine import restore, seeded_network
from service.restore.recipes import recipe_for

CPU = torch.device("cpu")


def _image(seed: int, h: int = 40, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


@pytest.fixture
def float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.usefixtures("float64")
def test_stacked_networks_are_the_jobs_own_networks() -> None:
    # In float64 rounding is out of the way: vmap's grouped convolutions must give each job exactly its
    # own network's output and gradients (float32 differs by rounding only, which Adam then amplifies).
    recipe = recipe_for(DenoiseTask(sigma=0.1), 3)
    forward, params = _stacked_networks(recipe, [3, 7], CPU)
    singles = [seeded_network(recipe, seed, CPU) for seed in (3, 7)]
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(2, 1, 32, 64, 64, generator=gen)
    target = torch.rand(2, 1, 3, 64, 64, generator=gen)
    out = forward(z)
    assert out.dtype == torch.float64 and out.shape == (2, 1, 3, 64, 64)
    ((out - target) ** 2).mean(dim=(1, 2, 3, 4)).sum().backward()
    for k, net in enumerate(singles):
        mine = net(z[k])
        torch.testing.assert_close(out[k], mine, rtol=0, atol=1e-12)
        ((mine - target[k]) ** 2).mean().backward()
        for stacked, (name, p) in zip(params, net.named_parameters(), strict=True):
            assert stacked.grad is not None and p.grad is not None, name
            torch.testing.assert_close(stacked.grad[k], p.grad, rtol=0, atol=1e-12, msg=name)
    # and the stack really holds two different networks
    assert not torch.equal(params[0][0], params[0][1])


def test_each_job_follows_its_single_run() -> None:
    jobs = [
        BatchJob(_image(0), DenoiseTask(sigma=0.1), iterations=3, seed=1),
        BatchJob(_image(1), DenoiseTask(sigma=0.1), iterations=2, seed=2),
    ]
    results = restore_batch(jobs, device="cpu")
    for job, got in zip(jobs, results, strict=True):
        # restore_batch runs fp32: compare with restore's fp32 path (bf16 is restore's CPU switch)
        fp32 = EngineOptions(bf16=False)
        want = restore(
            job.image, job.task, stopping=FixedIterations(job.iterations), seed=job.seed, options=fp32
        )
        assert got.stop_reason is StopReason.FIXED_ITERATIONS
        assert got.iteration == got.iterations_run == job.iterations == len(got.losses)
        assert got.image.shape == want.image.shape == job.image.shape
        # Same seed, same z and noise stream, same network: the first loss agrees to rounding, later
        # ones drift by rounding amplified through Adam's first steps (see the float64 test above).
        assert got.losses[0] == pytest.approx(want.losses[0], rel=1e-5)
        np.testing.assert_allclose(got.losses, want.losses, rtol=0.05)
        assert np.mean((got.image - want.image) ** 2) < 1e-5
        assert np.isnan(got.statistic).all() and len(got.statistic) == job.iterations


def test_a_job_does_not_depend_on_its_batch_mates() -> None:
    a = BatchJob(_image(0), JpegTask(), iterations=3, seed=5)
    with_b = restore_batch([a, BatchJob(_image(1), JpegTask(), 3, seed=6)], device="cpu")[0]
    with_c = restore_batch([a, BatchJob(_image(2), JpegTask(), 3, seed=9)], device="cpu")[0]
    np.testing.assert_array_equal(with_b.image, with_c.image)
    np.testing.assert_array_equal(with_b.losses, with_c.losses)


def test_jobs_with_their_own_masks_and_layouts() -> None:
    mask_a = np.zeros((40, 40), bool)
    mask_a[::3] = True
    mask_b = ~mask_a
    gray = _image(0)[..., 0]
    jobs = [BatchJob(gray, InpaintTask(m), iterations=2, seed=0) for m in (mask_a, mask_b)]
    a, b = restore_batch(jobs, device="cpu")
    assert a.image.shape == b.image.shape == (40, 40)  # 2-D in, 2-D out
    assert not np.allclose(a.losses, b.losses)  # each loss sees its own mask


def test_super_resolution_jobs() -> None:
    jobs = [BatchJob(_image(k, 16, 16), SuperResolveTask(4), iterations=1, seed=k) for k in range(2)]
    results = restore_batch(jobs, device="cpu")
    assert [r.image.shape for r in results] == [(64, 64, 3)] * 2


def test_cancel_ends_every_unfinished_job() -> None:
    calls = iter(range(100))
    jobs = [BatchJob(_image(k), JpegTask(), iterations=n, seed=k) for k, n in ((0, 1), (1, 10))]
    short, long = restore_batch(jobs, device="cpu", should_cancel=lambda: next(calls) >= 2)
    assert short.stop_reason is StopReason.FIXED_ITERATIONS and short.iteration == 1
    assert long.stop_reason is StopReason.CANCELLED and long.iteration == long.iterations_run == 2
    assert len(long.losses) == 2 and not math.isnan(float(long.losses[-1]))


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ([], "at least one job"),
        (
            [BatchJob(_image(0), DenoiseTask(sigma=0.1), 1), BatchJob(_image(1), JpegTask(), 1)],
            "job 1 needs another recipe.*JpegTask",
        ),
        (
            [BatchJob(_image(0), JpegTask(), 1), BatchJob(_image(1, 80, 80), JpegTask(), 1)],
            r"job 1 pads to \(96, 96\), job 0 to \(64, 64\)",
        ),
    ],
)
def test_unbatchable_jobs_are_refused(jobs: list[BatchJob], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        restore_batch(jobs, device="cpu")


def test_refuses_single_job_switches_and_bad_counts() -> None:
    job = BatchJob(_image(0), JpegTask(), 1)
    with pytest.raises(ValueError, match="channels_last"):
        restore_batch([job], device="cpu", options=EngineOptions(channels_last=True))
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        BatchJob(_image(0), JpegTask(), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_cuda_graphs_replay_the_same_fit() -> None:
    noisy = _image(0, 64, 64)
    task = DenoiseTask(sigma=0.1)
    eager = restore(noisy, task, stopping=FixedIterations(20), device="cuda")
    graphed = restore(
        noisy, task, stopping=FixedIterations(20), device="cuda", options=EngineOptions(cuda_graphs=True)
    )
    np.testing.assert_allclose(graphed.losses, eager.losses, rtol=0.05)
    jobs = [BatchJob(noisy, task, 20, seed=0), BatchJob(_image(1, 64, 64), task, 10, seed=1)]
    batched = restore_batch(jobs, device="cuda", options=EngineOptions(cuda_graphs=True))
    np.testing.assert_allclose(batched[0].losses, eager.losses, rtol=0.1)
    assert batched[1].iteration == 10
