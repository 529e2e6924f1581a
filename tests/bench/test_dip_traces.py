"""bench.dip.traces: the stopper's decisions replayed on a recorded held-out error, as in a live run, and the
window means of a recorded fit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.dip.traces import WINDOWS, WindowMeans, fit_traced, outcome, replay
from service.bus.request import AutoStop, DenoiseTask, FixedIterations


def _curve(n: int) -> np.ndarray:
    # Down from 1.0 at iteration 11 to 0.1 at 500, then up 1e-4 per iteration (as test_early_stop.py).
    t = np.arange(1, n + 1, dtype=np.float64)
    return np.where(t <= 500, 1.0 - 0.9 * (t - 11) / 489, 0.1 + (t - 500) * 1e-4)


def test_replay_stops_where_the_rule_does() -> None:
    policy = AutoStop(warmup=10, holdout_patience=200, holdout_rise=0.0101)
    assert replay(_curve(2000), policy) == (700, 500)  # the patience binds: 1% comes 91 after the minimum
    assert replay(_curve(2000), AutoStop(warmup=10, holdout_patience=200, holdout_rise=0.0455)) == (910, 500)


def test_replay_past_the_recording_is_none() -> None:
    assert replay(_curve(650), AutoStop(warmup=10, holdout_patience=200, holdout_rise=0.0101)) is None


def test_replay_honours_the_cap() -> None:
    policy = AutoStop(warmup=10, holdout_patience=200, max_iterations=400)
    assert replay(_curve(2000), policy) == (400, 400)  # still falling: the last iterate is the best


def test_window_means_are_the_mean_of_the_returned_iterates() -> None:
    rng = np.random.default_rng(0)
    clean = rng.random((16, 16, 3)).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    means = WindowMeans([(5, 5), (3, 6), (7, 20)])
    trace, _, _ = fit_traced(noisy, clean, DenoiseTask(sigma=0.1), FixedIterations(8), means)
    window_psnr = means.psnr(clean)
    assert len(trace) == 8
    assert window_psnr[0] == pytest.approx(trace[4], abs=1e-3)  # the mean of one iterate is that iterate
    # DIP's early iterates move steadily, so their mean differs from each and lies between the extremes
    # only loosely: it must be finite and not equal to any single one.
    assert np.isfinite(window_psnr[1]) and all(abs(window_psnr[1] - p) > 1e-4 for p in trace[2:6])
    assert np.isnan(window_psnr[2])  # the run ended before the window did


# Stops at 700 on `_curve`, its minimum at 500: the refit to 750, averaged from 500.
MEAN_POLICY = AutoStop(
    warmup=10, holdout_patience=200, holdout_rise=0.0101, refit_scale=1.5, refit_mean_from=1.0
)


def _recorded(**windows: object) -> dict[str, object]:
    """A recorded run on `_curve` with the given window fields."""
    return {
        "holdout_mse": _curve(2000),
        "holdout_psnr": np.zeros(2000),
        "all_psnr": np.linspace(20.0, 30.0, 1000),
        "holdout_s_per_iter": 0.1,
        "all_s_per_iter": 0.1,
    } | windows


def test_a_mean_policy_is_judged_by_its_recorded_window() -> None:
    trace = _recorded(
        windows=np.array([[1.0, 1.2], [1.0, 1.5]]), window_c=500, window_psnr=np.array([28.0, 29.5])
    )
    got = outcome(trace, MEAN_POLICY, 3000)
    assert (got["stopped_at"], got["iteration"], got["total_iterations"]) == (700, 750, 1450)
    assert got["psnr"] == 29.5 and got["gap_db"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[1, 2\] x the minimum was not recorded"):
        outcome(trace, replace(MEAN_POLICY, refit_scale=2.0), 3000)
    with pytest.raises(ValueError, match="around iteration 500"):
        outcome(trace | {"window_c": 499}, MEAN_POLICY, 3000)


def test_windows_recorded_around_two_minima_are_told_apart() -> None:
    # the candidate's earlier minimum first, then the default's (the policy picks 500)
    trace = _recorded(
        windows=np.array([[1.0, 1.5], [1.0, 1.5]]),
        window_c=np.array([450, 500]),
        window_psnr=np.array([27.0, 29.5]),
    )
    assert outcome(trace, MEAN_POLICY, 3000)["psnr"] == 29.5
    with pytest.raises(ValueError, match="around iteration 500"):
        outcome(trace | {"window_c": np.array([450, 499])}, MEAN_POLICY, 3000)
    assert WindowMeans.around(10, 20).windows[len(WINDOWS)] == (20, 24)  # the second minimum's [1, 1.2]
