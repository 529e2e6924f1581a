"""The training clock: pauses are not training time, slowdowns are."""

from __future__ import annotations

import pytest

from colorizers.run_state import PauseFilter


def test_steady_steps_count_in_full() -> None:
    clock = PauseFilter()
    assert sum(clock.count(0.5) for _ in range(200)) == pytest.approx(100.0)


def test_a_pause_inside_one_step_counts_as_a_few_typical_steps() -> None:
    clock = PauseFilter(factor=5.0)
    for _ in range(100):
        clock.count(0.5)
    assert clock.count(1800.0) == pytest.approx(2.5)  # a 30-minute SIGSTOP counts 5 steps' worth
    assert clock.count(0.5) == 0.5


def test_a_lasting_slowdown_is_followed() -> None:
    """Another job on the core makes every step 8x slower: after a while they count in full."""
    clock = PauseFilter(factor=5.0)
    for _ in range(100):
        clock.count(0.5)
    counted = [clock.count(4.0) for _ in range(200)]
    assert counted[0] < 4.0
    assert counted[-1] == pytest.approx(4.0)
