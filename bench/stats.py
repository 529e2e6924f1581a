"""Latency summaries: percentiles as numpy's default (linear) rule, in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default).

    NaN for an empty sequence, so a level where every request failed still renders.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Latency distribution of one measurement, in ms."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(latencies_ms: Sequence[float]) -> Summary:
    if not latencies_ms:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan)
    return Summary(
        count=len(latencies_ms),
        mean=sum(latencies_ms) / len(latencies_ms),
        p50=percentile(latencies_ms, 50),
        p95=percentile(latencies_ms, 95),
        p99=percentile(latencies_ms, 99),
        min=min(latencies_ms),
        max=max(latencies_ms),
    )


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is 0."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return math.nan
    return numerator / denominator
