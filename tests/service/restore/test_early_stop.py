"""Tests for service.restore.early_stop on synthetic output sequences with known answers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from service.bus.request import AutoStop
from service.bus.result import StopReason
from service.restore.early_stop import (
    MIN_HOLDOUT_PIXELS,
    EarlyStopper,
    clipped_noise_variance,
    estimate_noise_sigma,
    holdout_mask,
    holdout_rose,
    noise_floor,
    refit_iterations,
    refit_mean_start,
)

CPU = torch.device("cpu")


def _u_curve_outputs(n: int, valley: int, seed: int = 0) -> list[torch.Tensor]:
    """Outputs that jitter around a fixed image with an amplitude that is smallest at `valley`."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 16, 16, generator=gen)
    outs = []
    for t in range(1, n + 1):
        amp = 0.02 + 0.2 * abs(t - valley) / valley
        outs.append(base + amp * torch.randn(base.shape, generator=gen))
    return outs


def _run(
    stopper: EarlyStopper, outs: list[torch.Tensor], losses: list[float]
) -> tuple[StopReason | None, int]:
    for t, (x, loss) in enumerate(zip(outs, losses, strict=True), start=1):
        stopper.update(t, x, x, torch.tensor(loss))
        reason = stopper.decide(t)
        if reason is not None:
            return reason, t
    return None, len(outs)


class TestPlateau:
    @pytest.mark.parametrize("rule", ["emv", "wmv"])
    def test_stops_after_patience_and_returns_the_valley(self, rule: str) -> None:
        outs = _u_curve_outputs(900, valley=300)
        policy = AutoStop(rule=rule, patience=200, window=20, warmup=50)  # type: ignore[arg-type]
        stopper = EarlyStopper(policy, noise_floor=None, device=CPU)
        reason, stopped_at = _run(stopper, outs, [1.0] * len(outs))
        choice = stopper.choice()
        assert reason is StopReason.PLATEAU and choice is not None
        best, image = choice
        assert stopped_at == best + 200
        # Both statistics lag the true valley a little (EMV by ~1/alpha, WMV by ~window/2).
        assert 295 <= best <= 330, best
        torch.testing.assert_close(image, outs[best - 1])

    def test_no_stop_while_still_improving(self) -> None:
        outs = _u_curve_outputs(400, valley=1000)  # amplitude keeps shrinking
        # warmup 100 (the default) lets the EMV, which starts at 0, settle first.
        stopper = EarlyStopper(AutoStop(patience=50, warmup=100), noise_floor=None, device=CPU)
        reason, _ = _run(stopper, outs, [1.0] * len(outs))
        assert reason is None
        choice = stopper.choice()
        assert choice is not None and choice[0] >= 350

    def test_nothing_chosen_during_warmup(self) -> None:
        stopper = EarlyStopper(AutoStop(warmup=100), noise_floor=None, device=CPU)
        reason, _ = _run(stopper, _u_curve_outputs(50, valley=25), [1.0] * 50)
        assert reason is None and stopper.choice() is None


class TestStatistics:
    def test_emv_matches_recursion(self) -> None:
        outs = _u_curve_outputs(40, valley=20)
        stopper = EarlyStopper(AutoStop(rule="emv", alpha=0.1), noise_floor=None, device=CPU)
        xs = [o.double().numpy() for o in outs]
        ema, emv = xs[0].copy(), 0.0
        for t, (o, x) in enumerate(zip(outs, xs, strict=True), start=1):
            got = float(stopper.update(t, o, o, torch.tensor(1.0)))
            if t > 1:
                delta = x - ema
                ema = ema + 0.1 * delta
                emv = 0.9 * (emv + 0.1 * float(np.mean(delta**2)))
            assert got == pytest.approx(emv, rel=1e-5, abs=1e-12)

    def test_wmv_matches_brute_force_window(self) -> None:
        outs = _u_curve_outputs(37, valley=20)
        w = 8
        stopper = EarlyStopper(AutoStop(rule="wmv", window=w), noise_floor=None, device=CPU)
        for t, o in enumerate(outs, start=1):
            got = float(stopper.update(t, o, o, torch.tensor(1.0)))
            window = np.stack([x.double().numpy() for x in outs[max(0, t - w) : t]])
            want = float(np.mean((window - window.mean(axis=0)) ** 2))
            assert got == pytest.approx(want, rel=1e-4, abs=1e-10)


class TestDiscrepancy:
    def test_stops_at_first_loss_below_sigma_squared_at_mid_gray(self) -> None:
        sigma = 0.1
        losses = list(np.linspace(0.05, 0.0, 100))  # crosses 0.01 between index 79 and 80
        first = int(np.argmax(np.array(losses) <= sigma**2)) + 1
        outs = [torch.full((1, 1, 4, 4), 0.5 + 1e-4 * t) for t in range(1, 101)]
        stopper = EarlyStopper(AutoStop(tau=1.0), noise_floor=sigma**2, device=CPU)
        reason, stopped_at = _run(stopper, outs, losses)
        choice = stopper.choice()
        assert reason is StopReason.DISCREPANCY and stopped_at == first and choice is not None
        assert choice[0] == first
        assert float(choice[1].mean()) == pytest.approx(0.5 + 1e-4 * first)  # that very iteration's image

    def test_tau_scales_threshold(self) -> None:
        losses = list(np.linspace(0.05, 0.0, 100))
        outs = [torch.full((1, 1, 4, 4), 0.5)] * 100
        stopper = EarlyStopper(AutoStop(tau=2.0), noise_floor=0.01, device=CPU)
        _, stopped_at = _run(stopper, outs, losses)
        assert stopped_at == int(np.argmax(np.array(losses) <= 0.02)) + 1

    def test_blind_or_disabled_never_uses_loss(self) -> None:
        losses = [0.0] * 20
        outs = [torch.zeros(1, 1, 4, 4)] * 20
        for stopper in (
            EarlyStopper(AutoStop(warmup=1000), noise_floor=None, device=CPU),
            EarlyStopper(AutoStop(warmup=1000, discrepancy=False), noise_floor=0.01, device=CPU),
        ):
            assert _run(stopper, outs, losses) == (None, 20)

    def test_clipping_lowers_the_floor_of_a_bright_image(self) -> None:
        sigma = 0.2
        bright = np.full((8, 8, 3), 0.95)
        assert noise_floor(bright, sigma) == pytest.approx(
            float(clipped_noise_variance(torch.tensor(0.95), sigma))
        )
        assert noise_floor(bright, sigma) < 0.6 * sigma**2
        # 10σ from both edges, clipping does not bite.
        assert noise_floor(np.full((8, 8, 3), 0.5), 0.05) == pytest.approx(0.05**2, rel=1e-6)

    def test_blind_floor_is_the_estimated_sigma_squared(self) -> None:
        noisy = np.clip(0.5 + np.random.default_rng(0).normal(0, 0.1, (64, 64, 3)), 0, 1)
        assert noise_floor(noisy, None) == pytest.approx(estimate_noise_sigma(noisy) ** 2)


class TestNoiseFloor:
    @pytest.mark.parametrize("sigma", [0.1, 0.2])
    @pytest.mark.parametrize("x", [0.0, 0.03, 0.5, 0.9, 1.0])
    def test_clipped_variance_matches_monte_carlo(self, x: float, sigma: float) -> None:
        noise = np.random.default_rng(0).normal(0.0, sigma, 500_000)
        want = np.mean((np.clip(x + noise, 0.0, 1.0) - x) ** 2)
        got = float(clipped_noise_variance(torch.tensor(x, dtype=torch.float64), sigma))
        assert got == pytest.approx(want, rel=0.01)

    def test_far_from_the_edges_it_is_sigma_squared(self) -> None:
        got = clipped_noise_variance(torch.full((3, 4), 0.5, dtype=torch.float64), 0.05)
        torch.testing.assert_close(got, torch.full((3, 4), 0.0025, dtype=torch.float64))

    @pytest.mark.parametrize("sigma", [10 / 255, 25 / 255, 50 / 255])
    def test_estimate_on_a_smooth_image_with_known_noise(self, sigma: float) -> None:
        yy, xx = np.mgrid[0:128, 0:96] / 128.0
        clean = np.stack([0.3 + 0.3 * xx, 0.4 + 0.2 * yy, 0.5 + 0.1 * np.sin(6 * xx)], axis=-1)
        noisy = clean + np.random.default_rng(1).normal(0.0, sigma, clean.shape)  # stays inside [0, 1]
        assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.05)
        assert estimate_noise_sigma(clean) < 0.002

    def test_estimate_needs_two_by_two_pixels(self) -> None:
        with pytest.raises(ValueError, match="2x2"):
            estimate_noise_sigma(np.zeros((1, 5, 3)))


class TestHoldout:
    def test_mask_fraction_and_seed(self) -> None:
        a = holdout_mask(200, 300, 0.1, seed=4)
        assert a is not None and a.shape == (200, 300) and a.dtype == np.bool_
        assert a.mean() == pytest.approx(0.1, abs=0.005)
        same, other = holdout_mask(200, 300, 0.1, seed=4), holdout_mask(200, 300, 0.1, seed=5)
        assert same is not None and other is not None
        np.testing.assert_array_equal(a, same)
        assert not np.array_equal(a, other)

    def test_mask_none_when_off_or_too_small(self) -> None:
        assert holdout_mask(64, 64, 0.0, seed=0) is None
        assert holdout_mask(10, 10, 0.1, seed=0) is None  # about 10 pixels
        side = int(np.ceil(np.sqrt(MIN_HOLDOUT_PIXELS / 0.5))) + 4
        assert holdout_mask(side, side, 0.5, seed=0) is not None

    def test_returns_the_minimum_of_the_held_out_error(self) -> None:
        # Iterates approach the target, then drift away: the held-out error bottoms out at t = 120.
        gen = torch.Generator().manual_seed(0)
        target = torch.rand(1, 3, 16, 16, generator=gen)
        weights = (torch.rand(1, 1, 16, 16, generator=gen) < 0.3).float()
        direction = torch.randn(target.shape, generator=gen)
        outs = [target + (abs(t - 120) / 100 + 0.01) * direction for t in range(1, 501)]
        # holdout_rise=inf: the rise test off, so only the wait ends the run.
        policy = AutoStop(warmup=20, holdout_patience=50, holdout_rise=math.inf)
        stopper = EarlyStopper(policy, noise_floor=1.0, device=CPU, held_out=(target, weights))
        reason, stopped_at = _run(stopper, outs, [0.0] * len(outs))  # loss 0 <= any floor: ignored
        choice = stopper.choice()
        assert reason is StopReason.HOLDOUT and choice is not None
        # It waits twice as long as the minimum took to come (>= holdout_patience): stops at 3x its age.
        assert choice[0] == 120 and stopped_at == 360
        torch.testing.assert_close(choice[1], outs[119])
        held = weights.expand_as(target).bool()
        want = (outs[119] - target)[held].square().mean()
        torch.testing.assert_close(stopper.best_stat, want)

    @staticmethod
    def _held_out_run(
        error: Callable[[int], float], policy: AutoStop, n: int
    ) -> tuple[StopReason | None, int, int]:
        """(reason, stop, chosen iteration) for a run whose held-out error at iteration t is error(t)."""
        target, weights = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
        outs = [torch.full((1, 1, 8, 8), math.sqrt(error(t)), dtype=torch.float64) for t in range(1, n + 1)]
        stopper = EarlyStopper(policy, None, CPU, held_out=(target, weights))
        reason, stopped_at = _run(stopper, outs, [1.0] * n)
        choice = stopper.choice()
        return reason, stopped_at, choice[0] if choice is not None else 0

    @pytest.mark.parametrize(("rise", "stop"), [(0.0101, 700), (0.0455, 910), (0.3, 1500)])
    def test_stops_once_the_error_rose_a_fraction_of_its_descent(self, rise: float, stop: int) -> None:
        # Down from 1.0 at the first tracked iteration (11) to 0.1 at 500, then up 1e-4 per iteration: a
        # rise of r x the 0.9 descent comes 9000 r iterations after the minimum. 1%: 91 iterations, but
        # not before the patience (200); 4.55%: 410; 30% (2700) comes after the wait of 2x 500.
        def error(t: int) -> float:
            return 1.0 - 0.9 * (t - 11) / 489 if t <= 500 else 0.1 + (t - 500) * 1e-4

        policy = AutoStop(warmup=10, holdout_patience=200, holdout_rise=rise)
        reason, stopped_at, chosen = self._held_out_run(error, policy, 2000)
        assert reason is StopReason.HOLDOUT and chosen == 500 and stopped_at == stop

    @pytest.mark.parametrize(("bump", "minimum", "stop"), [(0.003, 300, 350), (0.05, 100, 150)])
    def test_a_flat_stall_does_not_end_the_run(self, bump: float, minimum: int, stop: int) -> None:
        # Down to 0.5 at 100, a stall to 250 whose bump peaks at `bump`, then down to 0.1 at 300 and up,
        # as barbara at σ=25 (minima at 354 and 858). A bump under 1% of the 0.5 descent so far (0.005)
        # is a stall: the run goes on to the deeper minimum. A bump over it reads as the turn.
        def error(t: int) -> float:
            if t <= 100:
                return 1.0 - 0.5 * (t - 11) / 89
            if t <= 250:
                return 0.5 + bump * math.sin(math.pi * (t - 100) / 150)
            return max(0.1, 0.5 - 0.4 * (t - 250) / 50) if t <= 300 else 0.1 + (t - 300) * 1e-3

        policy = AutoStop(warmup=10, holdout_patience=50, holdout_rise=0.01)
        reason, stopped_at, chosen = self._held_out_run(error, policy, 1000)
        assert reason is StopReason.HOLDOUT and chosen == minimum and stopped_at == stop

    @pytest.mark.parametrize(("wait", "minimum", "stop"), [(1.0, 100, 200), (2.0, 250, 750)])
    def test_waits_through_a_stall_for_the_deeper_minimum(self, wait: float, minimum: int, stop: int) -> None:
        # With the rise test off, the wait alone: a shallow minimum at 100, then a deeper one at 250.
        # Waiting 1x the minimum's age stops at 200 with the first, 2x (the default) finds the second.
        def error(t: int) -> float:
            if t <= 150:
                return 0.05 + abs(t - 100) / 200
            return 0.30 - (t - 150) * 0.0028 if t <= 250 else 0.02 + (t - 250) / 100

        policy = AutoStop(warmup=10, holdout_patience=50, holdout_wait=wait, holdout_rise=math.inf)
        reason, stopped_at, chosen = self._held_out_run(error, policy, 1000)
        assert reason is StopReason.HOLDOUT and chosen == minimum and stopped_at == stop

    def test_rose_is_relative_to_the_descent(self) -> None:
        assert holdout_rose(first=1.0, low=0.5, last=0.51, rise=0.01)  # 0.01 >= 1% of 0.5
        assert not holdout_rose(first=1.0, low=0.5, last=0.504, rise=0.01)
        # The same absolute rise on a curve that fell 10x as far is a stall, not a turn.
        assert not holdout_rose(first=5.5, low=0.5, last=0.51, rise=0.01)

    @pytest.mark.parametrize("rise", [-0.01, math.nan])
    def test_rise_must_be_a_fraction(self, rise: float) -> None:
        with pytest.raises(ValueError, match="holdout_rise"):
            AutoStop(holdout_rise=rise)


class TestRefitIterations:
    @pytest.mark.parametrize(("chosen", "budget", "want"), [(500, 3000, 600), (2800, 3000, 3000), (1, 10, 1)])
    def test_scaled_within_the_budget(self, chosen: int, budget: int, want: int) -> None:
        assert refit_iterations(AutoStop(refit_scale=1.2), chosen, budget) == want

    def test_the_default_refits_to_one_and_a_half_times_the_choice(self) -> None:
        assert refit_iterations(AutoStop(), 500, 3000) == 750

    def test_scale_one_is_the_held_out_choice(self) -> None:
        assert refit_iterations(AutoStop(refit_scale=1.0), 437, 3000) == 437

    @pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
    def test_scale_must_be_positive_and_finite(self, scale: float) -> None:
        with pytest.raises(ValueError, match="refit_scale"):
            AutoStop(refit_scale=scale)


class TestRefitMeanStart:
    def test_the_default_averages_from_the_choice_on(self) -> None:
        assert refit_mean_start(AutoStop(), 500, 750) == 500

    def test_off_returns_the_last_iterate(self) -> None:
        assert refit_mean_start(AutoStop(refit_mean_from=None), 500, 600) is None

    @pytest.mark.parametrize(("chosen", "target", "want"), [(500, 750, 500), (2800, 3000, 2800), (1, 2, 1)])
    def test_a_multiple_of_the_choice_within_the_refit(self, chosen: int, target: int, want: int) -> None:
        assert refit_mean_start(AutoStop(refit_scale=1.5, refit_mean_from=1.0), chosen, target) == want

    @pytest.mark.parametrize("start", [0.0, -1.0, 1.6, math.nan])
    def test_must_lie_inside_the_refit(self, start: float) -> None:
        with pytest.raises(ValueError, match=r"refit_mean_from must be None or in \(0, refit_scale = 1.5\]"):
            AutoStop(refit_scale=1.5, refit_mean_from=start)
