"""What the DIP engine hands back: progress reports during a run and the final result.

numpy only (no torch), like `request.py`, so results cross process boundaries as plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray


class StopReason(StrEnum):
    """Why a run ended."""

    PLATEAU = "variance_plateau"  # AutoStop: running variance had no new minimum for `patience` iterations
    DISCREPANCY = "discrepancy"  # AutoStop: data-fit MSE reached tau·σ²
    HOLDOUT = "holdout_minimum"  # AutoStop: the held-out pixels' error had no new minimum for a while
    MAX_ITERATIONS = "max_iterations"  # AutoStop: the cap was reached before a rule fired
    FIXED_ITERATIONS = "fixed_iterations"  # FixedIterations: ran the requested count
    TIME_BUDGET = "time_budget"  # the next iteration would have overrun `time_budget_s`
    CANCELLED = "cancelled"  # `should_cancel()` returned True


@dataclass(frozen=True, eq=False)
class Progress:
    """One report to `on_progress`. Times in seconds; `eta_s` assumes the run goes to `max_iterations`."""

    iteration: int
    max_iterations: int
    loss: float
    elapsed_s: float
    eta_s: float
    best_iteration: int | None  # the iterate the stop rule would return now (None before its warm-up)
    preview: NDArray[np.float32] | None  # the current iterate, same layout as the result, if asked for


@dataclass(frozen=True, eq=False)
class RestoreResult:
    """The restored image and how it was chosen.

    `image` is float32 in [0, 1] with the input's layout ((H, W) or (H, W, C)); for super-resolution,
    H and W are `factor` times the input's. `iteration` is the (1-based) iterate returned;
    `losses[k]` is the data-fit MSE of iteration k + 1 and `statistic[k]` the stop rule's running variance
    (NaN where not tracked).
    """

    image: NDArray[np.float32]
    iteration: int
    iterations_run: int
    stop_reason: StopReason
    elapsed_s: float
    device: str
    losses: NDArray[np.float32]
    statistic: NDArray[np.float32]
