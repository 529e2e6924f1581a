"""bench.stats and bench.figures: percentiles as numpy computes them, NaN handling, goal verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.figures import Figure, format_value, goal_text, verdict
from bench.stats import percentile, ratio, summarize


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy_linear(q: float, n: int) -> None:
    values = list(np.random.default_rng(n).exponential(10.0, n))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan_and_bad_q_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q must be in"):
        percentile([1.0], 101)


def test_summary() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.count, s.mean, s.p50, s.min, s.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert s.p99 == pytest.approx(3.97)
    assert math.isnan(summarize([]).p50)


def test_ratio_is_nan_when_undefined() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_figure_verdicts() -> None:
    higher = Figure("k", "x", 2.0, 1.8, ">=", unit="").as_dict()
    lower = Figure("k", "x", 1.4, 1.3, "<=").as_dict()
    report_only = Figure("k", "x", 0.9, None).as_dict()
    unmeasured = Figure("k", "x", math.nan, 1.0, "<=").as_dict()
    assert (higher["met"], lower["met"], report_only["met"], unmeasured["met"]) == (True, False, None, None)
    assert [verdict(f) for f in (higher, lower, report_only, unmeasured)] == [
        "met",
        "**missed**",
        "reported",
        "not measured",
    ]
    assert goal_text(higher) == "≥ 1.80" and goal_text(lower) == "≤ 1.30×" and goal_text(report_only) == "—"
    assert format_value(1.9e-4) == "1.9e-04" and format_value(None) == "n/a"
