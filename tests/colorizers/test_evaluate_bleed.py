"""colorizers.evaluate_bleed on synthetic images whose answer is known: two flat regions, one edge."""

from __future__ import annotations

import numpy as np
import pytest

from colorizers import evaluate_bleed as eb
from colorizers import weights

RED = (50.0, 40.0)  # ab
BLUE = (10.0, -45.0)
WHITE = (0.0, 0.0)
SIZE = 64


def two_regions(left: tuple[float, float], right: tuple[float, float], *, l_left: float = 50.0,
                l_right: float = 50.0) -> np.ndarray:  # fmt: skip
    """(3, SIZE, SIZE) Lab: the left half one flat colour, the right half another (a vertical edge)."""
    lab = np.empty((3, SIZE, SIZE), np.float32)
    half = SIZE // 2
    lab[:, :, :half] = np.array([l_left, *left], np.float32)[:, None, None]
    lab[:, :, half:] = np.array([l_right, *right], np.float32)[:, None, None]
    return lab


def flat_ab(colour: tuple[float, float]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.float32)[:, None, None], (2, SIZE, SIZE)).copy()


def judged(truth: np.ndarray, pred_ab: np.ndarray) -> dict[str, float]:
    counts = eb.BleedCounts()
    counts.add(eb.find_edges(truth), pred_ab)
    return counts.summary()


def test_edges_lie_on_the_boundary_with_one_side_in_each_region() -> None:
    truth = two_regions(RED, BLUE)
    edges = eb.find_edges(truth)
    assert len(edges) > 0
    half = SIZE // 2
    assert set(edges.points[:, 1]) <= {
        half - 1,
        half,
    }  # at the boundary: the two pixels the step lies between
    sides = np.sort(np.stack([edges.side_a[:, 1], edges.side_b[:, 1]], 1), axis=1)
    assert (sides[:, 0] < half).all() and (sides[:, 1] >= half).all()
    colours = {tuple(np.round(c).astype(int)) for c in np.concatenate([edges.true_a, edges.true_b])}
    assert colours == {(50, 40), (10, -45)}


def test_copying_one_side_across_the_edge_bleeds_everywhere() -> None:
    truth = two_regions(RED, BLUE)
    for colour in (RED, BLUE):
        result = judged(truth, flat_ab(colour))
        assert result["bleed"] == 1.0
        assert result["bleed_nearest"] == 1.0
        assert result["washed_out"] == 0.0
        assert result["contrast_ratio"] == pytest.approx(0.0, abs=1e-9)


def test_the_truth_does_not_bleed() -> None:
    truth = two_regions(RED, BLUE)
    result = judged(truth, truth[1:].copy())
    assert result == pytest.approx(
        {
            "edges": result["edges"],
            "bleed": 0.0,
            "bleed_nearest": 0.0,
            "washed_out": 0.0,
            "bleed_visible": 0.0,
            "side_ab_error": 0.0,
            "contrast_ratio": 1.0,
        }
    )


def test_gray_prediction_is_washed_out_not_bleed() -> None:
    truth = two_regions(RED, BLUE)
    result = judged(truth, np.zeros((2, SIZE, SIZE), np.float32))
    assert result["bleed"] == 0.0
    assert result["bleed_nearest"] == 0.0
    assert result["washed_out"] == 1.0


def test_faint_sky_tint_on_a_white_object_bleeds_but_gray_on_the_sky_does_not() -> None:
    # The lighthouse: a muted blue over both sides. The sky's hue on the white side is the leak.
    truth = two_regions(WHITE, BLUE, l_left=90.0)
    tint = np.array([[2.0, -14.0]])
    white, sky = np.array([WHITE]), np.array([BLUE])
    on_white = eb.judge_side(tint, white, sky)
    on_sky = eb.judge_side(tint, sky, white)
    assert on_white.bleed.all() and not on_sky.bleed.any()
    # Plain nearest-colour gets it backwards: the tint is nearer white than the saturated sky, so it
    # misses the leak on the white side and calls the desaturated sky "white bleeding onto it".
    assert not on_white.bleed_nearest.any() and on_sky.bleed_nearest.all()
    assert judged(truth, flat_ab((2.0, -14.0)))["bleed"] == 1.0
    # Gray over the sky is a loss of colour, never a leak.
    sky_gray = judged(truth, np.zeros((2, SIZE, SIZE), np.float32))
    assert sky_gray["bleed"] == 0.0
    assert sky_gray["washed_out"] == 1.0


def test_a_desaturated_but_right_hue_prediction_is_not_bleed() -> None:
    truth = two_regions(RED, BLUE)
    muted = 0.4 * truth[1:]  # every pixel its own hue at 40 % chroma (≥ the gray threshold)
    result = judged(truth, muted)
    assert result["bleed"] == 0.0
    assert result["washed_out"] == 0.0
    assert result["contrast_ratio"] == pytest.approx(0.4, abs=1e-6)


def test_same_hue_steps_and_flat_images_are_not_colour_edges() -> None:
    assert len(eb.find_edges(two_regions((0.0, -15.0), (0.0, -50.0)))) == 0  # light vs deep blue
    assert len(eb.find_edges(two_regions(RED, RED, l_left=30.0, l_right=80.0))) == 0  # lightness only
    assert len(eb.find_edges(two_regions(RED, RED))) == 0


def test_bleed_at_visible_edges_counts_only_edges_with_a_lightness_step() -> None:
    counts = eb.BleedCounts()
    counts.add(eb.find_edges(two_regions(RED, BLUE)), flat_ab(RED))  # isoluminant: invisible in L
    counts.add(eb.find_edges(two_regions(RED, BLUE, l_right=80.0)), two_regions(RED, BLUE)[1:].copy())
    result = counts.summary()
    assert result["bleed"] == pytest.approx(0.5, abs=0.05)  # the two images have as many edge pixels
    assert result["bleed_visible"] == 0.0


def test_no_edges_is_an_error_not_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="no edges"):
        eb.BleedCounts().summary()


def model_row(bleed: float, *, psnr: float = 22.0, colourfulness: float = 16.0, washed: float = 0.3) -> dict:
    return {"bleed": bleed, "washed_out": washed, "psnr": psnr, "auc": 0.88, "auc_rebal": 0.63,
            "colourfulness": colourfulness}  # fmt: skip


def test_recommend_needs_clearly_less_bleed_at_no_cost() -> None:
    default = eb.LARSSON_DEFAULT
    models = {
        default: model_row(0.5),
        "Larsson16, a / b": model_row(0.45),  # only 10 % less
        "Larsson16, c / d": model_row(0.1, colourfulness=8.0, washed=0.9),  # less by painting less
        "Larsson16, e / f": model_row(0.2, psnr=21.0),  # costs 1 dB
        "ECCV16, T = 1": model_row(0.0),  # a reference, never a decoding
    }
    assert eb.recommend(models) is None
    assert eb.best_alternative(models) == "Larsson16, e / f"  # the figure: least bleed that keeps the colour
    # When nothing that keeps the colour bleeds less than the default, the least bleeding outright.
    fewer = {label: m for label, m in models.items() if label != "Larsson16, e / f"}
    fewer["Larsson16, a / b"] = model_row(0.6)
    assert eb.best_alternative(fewer) == "Larsson16, c / d"
    models["Larsson16, g / h"] = model_row(0.3, psnr=21.95)
    assert eb.recommend(models) == "Larsson16, g / h"


def test_a_candidate_is_scored_beside_the_shipped_default_decoding() -> None:
    candidate = "larsson16-w0.125-random"
    labels, found = eb.predictors("larsson16", candidate)
    shipped = weights.DEFAULT["larsson16"]
    reference = eb.shipped_label(shipped)
    assert labels[eb.LARSSON_DEFAULT] == candidate and labels[reference] == shipped
    lightness = np.linspace(0, 100, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = {k: v for predict in found for k, v in predict(lightness).items()}
    assert set(labels) == set(out)
    # The reference row is exactly the shipped checkpoint's default decoding, as a plain run scores it.
    _, plain = eb.predictors("larsson16")
    np.testing.assert_array_equal(out[reference], plain[0](lightness)[eb.LARSSON_DEFAULT])
    assert not np.array_equal(out[eb.LARSSON_DEFAULT], out[reference])


@pytest.mark.parametrize(
    ("name", "needle"),
    [("eccv16-w0.25-l1", "is not a Larsson16 checkpoint"), ("nope", "not in colorizers/weights.py")],
)
def test_a_candidate_must_be_a_registered_larsson16(name: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        eb.predictors("larsson16", name)
