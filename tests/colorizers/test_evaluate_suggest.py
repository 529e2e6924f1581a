from __future__ import annotations

import numpy as np
import pytest

from colorizers import evaluate_suggest
from colorizers.evaluate_suggest import Pixel


def _pixel(image: int, a: float, b: float) -> Pixel:
    return Pixel(image, np.zeros(529, np.float32), (a, b))


def test_hue_gap_wraps_around() -> None:
    assert evaluate_suggest.hue_gap(170, -170) == 20
    assert evaluate_suggest.hue_gap(0, 90) == 90


def test_scores_of_perfect_and_of_pixel_blind_suggestions() -> None:
    pixels = [_pixel(i, *ab) for i, ab in enumerate([(40, 0), (-40, 0), (0, 40), (0, -40)] * 5)]
    perfect = [np.array([p.ab, (100.0, 100.0)]) for p in pixels]
    result = evaluate_suggest.score(perfect, pixels)
    assert result["hit_rate"] == result["top1_hit_rate"] == 1.0
    assert result["distinct"] == result["distinct_top1"] == 1.0 and result["pairs"] > 0
    blind = [np.array([(40.0, 0.0), (-40.0, 0.0)])] * len(pixels)
    result = evaluate_suggest.score(blind, pixels)
    assert result["hit_rate"] == pytest.approx(0.5) and result["top1_hit_rate"] == pytest.approx(0.25)
    assert result["distinct"] == 0.0 and result["distinct_suggestion_sets"] == 1


def test_pick_prefers_the_best_hit_rate_among_factors_that_keep_hues_apart() -> None:
    results = {
        0.2: {"hit_rate": 0.05, "distinct": 0.1},
        1.0: {"hit_rate": 0.55, "distinct": 0.95},
        3.0: {"hit_rate": 0.70, "distinct": 0.5},  # better hits, but the same suggestions everywhere
        5.0: {"hit_rate": 0.55, "distinct": 0.92},
    }
    assert evaluate_suggest.pick_soften(results) == 1.0
    assert evaluate_suggest.pick_soften({2.0: {"hit_rate": 0.1, "distinct": 0.2}}) == 2.0


def test_quadrant_centres_are_five_fixed_colours() -> None:
    centres = evaluate_suggest.quadrant_centres()
    assert centres.shape == (5, 2)
    assert np.all(np.hypot(*centres.T) > 40)  # spread over the whole grid, far from gray
