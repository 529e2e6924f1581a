"""bench.dip.traces.replay: the stopper's decisions on a recorded held-out error, as in a live run."""

from __future__ import annotations

import numpy as np

from bench.dip.traces import replay
from service.bus.request import AutoStop


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
