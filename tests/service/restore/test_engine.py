"""Tests for service.restore.engine: tiny images and a few iterations each (the CPU budget is small)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from service.bus.request import (
    AutoStop,
    DenoiseTask,
    EngineOptions,
    FixedIterations,
    InpaintStyle,
    InpaintTask,
    JpegTask,
    SuperResolveTask,
    Task,
)
from service.bus.result import Progress, StopReason
from service.restore.early_stop import estimate_noise_sigma, holdout_mask, noise_floor
from service.restore.engine import resolve_device, restore


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth colour pattern plus a little noise: image-like, in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [0.5 + 0.4 * np.sin(6 * xx + 2 * k) * np.cos(5 * yy - k) for k in range(c)]
    noise = np.random.default_rng(seed).normal(0, 0.05, (h, w, c))
    return np.clip(np.stack(chans, axis=2) + noise, 0, 1).astype(np.float32)


def _mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[::5, :] = True  # horizontal "text" strokes missing
    return mask


class TestShapes:
    @pytest.mark.parametrize(
        ("shape", "task"),
        [
            ((33, 47), DenoiseTask()),  # 2-D grey in, 2-D out
            ((40, 40, 3), DenoiseTask()),
            ((7, 10, 1), JpegTask()),  # far below 64: padded, never cropped
            ((3, 70, 3), JpegTask()),
        ],
    )
    def test_output_has_input_shape(self, shape: tuple[int, ...], task: Task) -> None:
        img = _image(shape[0], shape[1], 1 if len(shape) == 2 else shape[2])
        img = img[..., 0] if len(shape) == 2 else img
        result = restore(img, task, stopping=FixedIterations(1))
        assert result.image.shape == shape and result.image.dtype == np.float32
        assert result.image.min() >= 0.0 and result.image.max() <= 1.0

    @pytest.mark.parametrize("factor", [2, 4, 8])
    def test_super_resolution_scales(self, factor: int) -> None:
        result = restore(_image(9, 13), SuperResolveTask(factor), stopping=FixedIterations(1))  # type: ignore[arg-type]
        assert result.image.shape == (9 * factor, 13 * factor, 3)

    def test_inpaint_odd_size(self) -> None:
        result = restore(_image(21, 35), InpaintTask(_mask(21, 35)), stopping=FixedIterations(1))
        assert result.image.shape == (21, 35, 3)

    def test_inpaint_large_hole_meshgrid_input(self) -> None:
        task = InpaintTask(_mask(30, 50), InpaintStyle.LARGE_HOLE)
        assert restore(_image(30, 50), task, stopping=FixedIterations(1)).image.shape == (30, 50, 3)

    def test_inpaint_rejects_mask_of_other_size(self) -> None:
        with pytest.raises(ValueError, match=r"\(20, 35\)"):
            restore(_image(21, 35), InpaintTask(_mask(20, 35)), stopping=FixedIterations(1))

    def test_uint8_and_uint16_inputs_match_float(self) -> None:
        u8 = (_image(20, 24) * 255).round().astype(np.uint8)
        u16 = u8.astype(np.uint16) * 257  # 257 = 65535 / 255: the same values in 16 bit
        as_float = u8.astype(np.float32) / 255
        outs = [restore(x, JpegTask(), stopping=FixedIterations(2)).image for x in (u8, u16, as_float)]
        np.testing.assert_array_equal(outs[0], outs[2])
        np.testing.assert_allclose(outs[1], outs[2], atol=1e-6)

    def test_rejects_rgba(self) -> None:
        with pytest.raises(ValueError, match="alpha"):
            restore(np.zeros((8, 8, 4), np.float32), DenoiseTask())


class TestDeterminism:
    def test_same_seed_same_result_other_seed_differs(self) -> None:
        img = _image(24, 40)
        runs = [restore(img, DenoiseTask(), stopping=FixedIterations(3), seed=s) for s in (7, 7, 8)]
        np.testing.assert_array_equal(runs[0].image, runs[1].image)
        np.testing.assert_array_equal(runs[0].losses, runs[1].losses)
        assert not np.array_equal(runs[0].image, runs[2].image)

    def test_leaves_global_rng_alone(self) -> None:
        torch.manual_seed(123)
        want = torch.rand(3)
        torch.manual_seed(123)
        restore(_image(8, 8), JpegTask(), stopping=FixedIterations(1), seed=5)
        torch.testing.assert_close(torch.rand(3), want)


class TestLossDecreases:
    @pytest.mark.parametrize(
        "task",
        [DenoiseTask(sigma=25 / 255), JpegTask(), SuperResolveTask(4), InpaintTask(_mask(40, 40))],
        ids=["denoise", "jpeg", "sr4", "inpaint"],
    )
    def test_loss_goes_down(self, task: Task) -> None:
        img = _image(10, 10) if isinstance(task, SuperResolveTask) else _image(40, 40)
        result = restore(img, task, stopping=FixedIterations(15))
        assert result.losses.shape == (15,) and np.isfinite(result.losses).all()
        assert result.losses[-3:].mean() < 0.9 * result.losses[:3].mean(), result.losses


class TestEarlyStopping:
    @pytest.mark.parametrize("rule", ["emv", "wmv"])
    def test_plateau_on_a_real_run(self, rule: str) -> None:
        # A flat image is fitted within a few dozen steps; after that only the input perturbation moves the
        # output, so the running variance stops improving and the rule must fire well before the cap.
        flat = np.full((32, 32, 3), 0.5, np.float32)
        policy = AutoStop(rule=rule, window=10, warmup=10, patience=10, max_iterations=400)  # type: ignore[arg-type]
        result = restore(flat, JpegTask(), stopping=policy)
        assert result.stop_reason is StopReason.PLATEAU
        assert result.iterations_run == result.iteration + 10 < 400
        tracked = result.statistic[10 : result.iterations_run]
        assert result.statistic[result.iteration - 1] == tracked.min()

    def test_discrepancy_on_a_real_run(self) -> None:
        rng = np.random.default_rng(0)
        noisy = np.clip(0.5 + rng.normal(0, 0.1, (32, 32, 1)), 0, 1).astype(np.float32)
        policy = AutoStop(holdout=0.0, max_iterations=300)
        result = restore(noisy, DenoiseTask(sigma=0.1), stopping=policy)
        assert result.stop_reason is StopReason.DISCREPANCY
        assert result.iteration == result.iterations_run < 300
        floor = 0.95 * noise_floor(noisy, 0.1)  # mid-gray: about σ², as clipping rarely bites
        assert result.losses[result.iteration - 1] <= floor < result.losses[: result.iteration - 1].min()

    def test_blind_denoise_stops_at_the_estimated_noise_floor(self) -> None:
        rng = np.random.default_rng(0)
        noisy = np.clip(0.5 + rng.normal(0, 0.1, (32, 32, 1)), 0, 1).astype(np.float32)
        sigma_hat = estimate_noise_sigma(noisy)
        assert sigma_hat == pytest.approx(0.1, rel=0.15)
        # tau 1.2: the fit reaches 1.2 σ̂² in a few dozen steps; the default 0.95 needs the noise fitted.
        policy = AutoStop(holdout=0.0, tau=1.2, max_iterations=300)
        result = restore(noisy, DenoiseTask(), stopping=policy)
        assert result.stop_reason is StopReason.DISCREPANCY and result.iteration < 300
        floor = 1.2 * sigma_hat**2
        assert result.losses[result.iteration - 1] <= floor < result.losses[: result.iteration - 1].min()
        # Without the estimate a blind run has only the variance rule, which cannot fire during its warm-up.
        policy = AutoStop(holdout=0.0, estimate_sigma=False, warmup=1000, max_iterations=result.iteration)
        assert restore(noisy, DenoiseTask(), stopping=policy).stop_reason is StopReason.MAX_ITERATIONS

    def test_held_out_pixels_never_reach_the_loss(self) -> None:
        # 37x45 is reflection-padded to 64x64, so held-out pixels also have copies in the padding.
        noisy = _image(37, 45)
        held = holdout_mask(37, 45, 0.1, seed=3)
        assert held is not None
        policy = AutoStop(warmup=2, refit=False, max_iterations=4)  # the refit sees every pixel
        base = restore(noisy, DenoiseTask(sigma=0.1), stopping=policy, seed=3)
        changed_held = noisy.copy()
        changed_held[held] = 1.0 - changed_held[held]
        other = restore(changed_held, DenoiseTask(sigma=0.1), stopping=policy, seed=3)
        np.testing.assert_array_equal(other.losses, base.losses)  # the fit is blind to them...
        assert not np.array_equal(other.statistic, base.statistic)  # ...the stop rule is not
        changed_visible = noisy.copy()
        row, col = np.argwhere(~held)[0]
        changed_visible[row, col] = 1.0 - changed_visible[row, col]
        moved = restore(changed_visible, DenoiseTask(sigma=0.1), stopping=policy, seed=3)
        assert not np.array_equal(moved.losses, base.losses)

    def test_blind_denoise_stops_at_the_held_out_minimum(self) -> None:
        rng = np.random.default_rng(1)
        # Flat: fitted within a few dozen steps, then the noise (~360 iterations, the cheapest real case).
        clean = np.full((32, 32, 1), 0.5, np.float32)
        noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
        # holdout_wait=1 (default 2) keeps the run short; the rise test is off so that the wait alone ends
        # it (both are tested on synthetic curves in test_early_stop.py).
        policy = AutoStop(
            warmup=10,
            holdout_patience=30,
            holdout_wait=1.0,
            holdout_rise=float("inf"),
            refit=False,
            max_iterations=600,
        )
        result = restore(noisy, DenoiseTask(), stopping=policy)
        assert result.stop_reason is StopReason.HOLDOUT and result.iteration > 30
        # No new minimum for as long as the minimum took to come: it stops at twice the minimum's age.
        assert result.iterations_run == 2 * result.iteration < 600
        tracked = result.statistic[10 : result.iterations_run]
        assert result.statistic[result.iteration - 1] == tracked.min()
        # The held-out error is the clean error plus the noise: its minimum is a denoised image.
        assert np.mean((result.image - clean) ** 2) < 0.1 * np.mean((noisy - clean) ** 2)

    def test_refit_is_the_plain_fit_to_the_chosen_iteration(self) -> None:
        noisy = _image(40, 40)
        # The cap ends the held-out run; its best is kept. The refit's last iterate, not a mean.
        policy = AutoStop(warmup=2, max_iterations=12, refit_scale=1.2, refit_mean_from=None)
        held_out = restore(noisy, DenoiseTask(), stopping=dataclasses.replace(policy, refit=False))
        refit = restore(noisy, DenoiseTask(), stopping=policy)
        assert held_out.stop_reason is StopReason.MAX_ITERATIONS and 2 < held_out.iteration <= 12
        # The refit runs refit_scale (1.2) x the held-out run's choice, within the budget.
        t = min(12, round(1.2 * held_out.iteration))
        assert refit.stop_reason is StopReason.MAX_ITERATIONS and refit.iteration == t
        assert refit.iterations_run == 12 + t
        np.testing.assert_array_equal(refit.statistic[:12], held_out.statistic)
        assert np.isnan(refit.statistic[12:]).all()
        # Same seed, every pixel, t iterations: bit for bit what FixedIterations(t) returns (the quality
        # bench reads the refit's PSNR off the plain run's trace on the strength of this).
        plain = restore(noisy, DenoiseTask(), stopping=FixedIterations(t))
        np.testing.assert_array_equal(refit.image, plain.image)
        np.testing.assert_array_equal(refit.losses[12:], plain.losses)
        assert not np.array_equal(refit.image, held_out.image)

    def test_refit_mean_is_the_mean_of_the_plain_fits_iterates(self) -> None:
        noisy = _image(40, 40)
        # The held-out run ends at its cap, still improving (c = 12 or near): the refit runs to c and
        # averages its iterates from c / 2 on.
        policy = AutoStop(warmup=2, max_iterations=12, refit_scale=1.0, refit_mean_from=0.5)
        held_out = restore(noisy, DenoiseTask(), stopping=dataclasses.replace(policy, refit=False))
        t = held_out.iteration
        c = round(0.5 * t)
        result = restore(noisy, DenoiseTask(), stopping=policy)
        assert result.iteration == t and result.iterations_run == 12 + t
        # The oracle: the plain fit to t, same seed, its iterates from c to t averaged here.
        iterates: list[np.ndarray] = []
        plain = restore(
            noisy,
            DenoiseTask(),
            stopping=FixedIterations(t),
            on_progress=lambda p: iterates.append(np.array(p.preview, np.float64)),
            progress_every=1,
            preview=True,
        )
        assert len(iterates) == t and t > c
        np.testing.assert_allclose(result.image, np.mean(iterates[c - 1 :], axis=0), atol=1e-5)
        assert not np.allclose(result.image, plain.image, atol=1e-5)  # not the last iterate

    def test_refit_cut_short_keeps_the_held_out_iterate(self) -> None:
        noisy = _image(40, 40)
        policy = AutoStop(warmup=2, holdout_patience=5, max_iterations=12)
        calls = 0

        def cancel() -> bool:
            nonlocal calls
            calls += 1
            return calls > 14  # during the refit, which starts after 12 held-out iterations

        result = restore(noisy, DenoiseTask(sigma=0.1), stopping=policy, should_cancel=cancel)
        assert result.stop_reason is StopReason.CANCELLED and result.iterations_run == 14
        held_out_only = restore(
            noisy, DenoiseTask(sigma=0.1), stopping=dataclasses.replace(policy, refit=False)
        )
        assert result.iteration == held_out_only.iteration
        np.testing.assert_array_equal(result.image, held_out_only.image)

    def test_too_few_pixels_to_hold_out_falls_back(self) -> None:
        noisy = _image(12, 12, 1)  # 10% of 144 pixels is under MIN_HOLDOUT_PIXELS
        policy = AutoStop(holdout=0.1, warmup=2, patience=3, max_iterations=40)
        result = restore(noisy, DenoiseTask(), stopping=policy)
        assert result.stop_reason in (StopReason.PLATEAU, StopReason.DISCREPANCY, StopReason.MAX_ITERATIONS)

    def test_fixed_iterations_returns_last(self) -> None:
        result = restore(_image(16, 16), JpegTask(), stopping=FixedIterations(4))
        assert (result.iteration, result.iterations_run) == (4, 4)
        assert result.stop_reason is StopReason.FIXED_ITERATIONS

    def test_cap_returns_best_by_rule_not_last(self) -> None:
        result = restore(
            _image(16, 16), JpegTask(), stopping=AutoStop(warmup=2, patience=1000, max_iterations=30)
        )
        assert result.stop_reason is StopReason.MAX_ITERATIONS and result.iterations_run == 30
        assert result.statistic[result.iteration - 1] == result.statistic[2:].min()


class TestHooks:
    def test_cancel_is_checked_every_iteration(self) -> None:
        calls = 0

        def cancel() -> bool:
            nonlocal calls
            calls += 1
            return calls == 4

        result = restore(_image(16, 16), JpegTask(), stopping=FixedIterations(50), should_cancel=cancel)
        assert result.stop_reason is StopReason.CANCELLED
        assert result.iterations_run == 3 and result.iteration == 3

    def test_cancel_before_first_iteration(self) -> None:
        result = restore(_image(16, 20), JpegTask(), should_cancel=lambda: True)
        assert result.stop_reason is StopReason.CANCELLED
        assert (result.iteration, result.iterations_run) == (0, 0) and result.image.shape == (16, 20, 3)

    def test_time_budget(self) -> None:
        budget = 1.5
        t0 = time.monotonic()
        result = restore(
            _image(40, 40), DenoiseTask(), stopping=FixedIterations(10_000), time_budget_s=budget
        )
        wall = time.monotonic() - t0
        assert result.stop_reason is StopReason.TIME_BUDGET
        assert 1 <= result.iterations_run < 10_000
        # Stops before an iteration that would overrun (by the last one's duration); allow timing jitter.
        assert result.elapsed_s <= budget + 0.5 and wall <= budget + 0.6

    def test_progress_reports(self) -> None:
        seen: list[Progress] = []
        result = restore(
            _image(12, 20),
            JpegTask(),
            stopping=FixedIterations(12),
            on_progress=seen.append,
            progress_every=5,
            preview=True,
        )
        assert [p.iteration for p in seen] == [5, 10]
        assert all(p.max_iterations == 12 and p.eta_s >= 0 and p.loss > 0 for p in seen)
        assert seen[0].loss == pytest.approx(float(result.losses[4]))
        assert seen[1].preview is not None and seen[1].preview.shape == (12, 20, 3)
        assert seen[0].eta_s > seen[1].eta_s

    def test_options_do_not_change_the_algorithm(self) -> None:
        img = _image(20, 20)
        # fp32 both (bf16 rounds more: tests/service/restore/test_engine_options.py checks it)
        nhwc = EngineOptions(channels_last=True, bf16=False)
        loop = EngineOptions(fused_updates=False, channels_last=False, bf16=False)
        fast = restore(img, DenoiseTask(), stopping=FixedIterations(3), options=nhwc)
        plain = restore(img, DenoiseTask(), stopping=FixedIterations(3), options=loop)
        # Same noise stream and maths; only the summation order differs, which Adam's first, nearly
        # sign-like steps amplify a little.
        assert fast.losses[0] == pytest.approx(plain.losses[0], rel=1e-5)
        np.testing.assert_allclose(fast.image, plain.image, atol=2e-2)

    def test_rejects_bad_progress_every(self) -> None:
        with pytest.raises(ValueError, match="0"):
            restore(_image(8, 8), JpegTask(), progress_every=0)


class TestDevice:
    def test_auto_is_cuda_when_present(self) -> None:
        want = "cuda" if torch.cuda.is_available() else "cpu"
        assert resolve_device(None).type == want

    @pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
    def test_cuda_without_cuda_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")

    @pytest.mark.gpu
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_same_code_path_on_cuda(self) -> None:
        result = restore(
            _image(40, 40), DenoiseTask(sigma=0.1), stopping=AutoStop(max_iterations=20), device="cuda"
        )
        assert result.device.startswith("cuda") and result.image.shape == (40, 40, 3)


def test_package_import_is_torch_free() -> None:
    # The worker-pool layer imports the request/result types without paying for torch.
    code = "import sys, service.restore; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
