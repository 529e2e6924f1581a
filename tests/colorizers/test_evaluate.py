from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from colorizers import evaluate, weights
from colorizers.dataset import LabImages
from colorizers.eccv16 import ECCVGenerator


class TestAuc:
    def test_all_exact_is_one(self) -> None:
        counts = np.zeros(evaluate.MAX_ERROR + 2)
        counts[0] = 10
        assert evaluate.auc_from_counts(counts) == 1.0

    def test_all_errors_75_by_hand(self) -> None:
        # CMF is 0 below 75 and 1 from 75 on: trapezoid area 75.5 over 150.
        counts = np.zeros(evaluate.MAX_ERROR + 2)
        counts[75] = 4
        assert math.isclose(evaluate.auc_from_counts(counts), 75.5 / 150)

    def test_rebalanced_weights_each_colour_bin_equally(self) -> None:
        # Two pixels of bin 0 exact, one pixel of bin 1 off by 200: plain 2/3, rebalanced (1 + 0) / 2.
        scores = evaluate.Scores()
        error = np.array([[0.0, 0.0, 200.0]])
        bins = np.array([[0, 0, 1]])
        rgb = np.zeros((1, 3, 3), np.uint8)
        scores.add(error, bins, rgb, rgb)
        summary = scores.summary()
        assert math.isclose(summary["auc"], 2 / 3)
        assert math.isclose(summary["auc_rebal"], 0.5)
        assert math.isclose(summary["ab_l2"], 200 / 3)

    def test_fractional_errors_count_from_the_next_integer(self) -> None:
        scores = evaluate.Scores()
        rgb = np.zeros((1, 1, 3), np.uint8)
        scores.add(np.array([[0.5]]), np.array([[0]]), rgb, rgb)  # within every threshold from 1 on
        assert math.isclose(scores.summary()["auc"], (150 - 0.5) / 150)


class TestImageMetrics:
    def test_psnr_by_hand(self) -> None:
        a = np.full((4, 4, 3), 100, np.uint8)
        assert math.isclose(evaluate.psnr(np.full_like(a, 101), a), 20 * math.log10(255))
        assert evaluate.psnr(a, a) == float("inf")

    def test_colourfulness_by_hand(self) -> None:
        assert evaluate.colourfulness(np.full((3, 3, 3), 128, np.uint8)) == 0.0
        red = np.zeros((3, 3, 3), np.uint8)
        red[..., 0] = 255
        # rg = 255, yb = 127.5, no spread: 0.3·√(255² + 127.5²)
        assert math.isclose(evaluate.colourfulness(red), 0.3 * math.hypot(255, 127.5))
        half = red.copy()
        half[:, :1] = 0  # spread adds the σ term
        assert evaluate.colourfulness(half) > 0.3 * math.hypot(170, 85)

    def test_ab_error_and_lab_to_rgb(self) -> None:
        pred, true = np.zeros((2, 1, 1)), np.array([[[3.0]], [[4.0]]])
        assert evaluate.ab_error(pred, true)[0, 0] == 5.0
        white = evaluate.lab_to_rgb8(np.full((2, 2), 100.0), np.zeros((2, 2, 2)))
        assert white.dtype == np.uint8 and np.all(white == 255)
        # far out of gamut (negative Z): clipped without a warning (pytest turns warnings into errors)
        vivid = evaluate.lab_to_rgb8(np.full((1, 1), 50.0), np.array([[[0.0]], [[200.0]]]))
        assert vivid.shape == (1, 1, 3)


GRAY = {"psnr": 20.0, "auc_rebal": 0.6}


class TestTemperature:
    def test_best_rebalanced_auc_within_the_bars(self) -> None:
        results = {
            "0.1": {"psnr": 17.0, "auc_rebal": 0.70, "colourfulness": 60.0},  # PSNR too low
            "0.38": {"psnr": 19.5, "auc_rebal": 0.66, "colourfulness": 40.0},
            "1": {"psnr": 20.5, "auc_rebal": 0.64, "colourfulness": 20.0},  # too dull
        }
        assert evaluate.pick_temperature(results, GRAY, truth_colour=50.0) == "0.38"

    def test_a_near_tie_in_auc_goes_to_the_better_psnr(self) -> None:
        results = {
            "0.6": {"psnr": 21.50, "auc_rebal": 0.6306, "colourfulness": 30.4},
            "1": {"psnr": 21.25, "auc_rebal": 0.6315, "colourfulness": 29.2},
            "0.38": {"psnr": 21.53, "auc_rebal": 0.6273, "colourfulness": 32.1},
        }
        assert evaluate.pick_temperature(results, GRAY, truth_colour=44.2) == "0.6"

    def test_falls_back_to_psnr_when_nothing_passes(self) -> None:
        results = {
            "0.1": {"psnr": 15.0, "auc_rebal": 0.70, "colourfulness": 90.0},
            "1": {"psnr": 16.0, "auc_rebal": 0.61, "colourfulness": 10.0},
        }
        assert evaluate.pick_temperature(results, GRAY, truth_colour=50.0) == "1"


def test_evaluate_end_to_end_on_the_tiny_cache(tiny_cache: Path) -> None:
    torch.manual_seed(0)
    metrics, rows = evaluate.evaluate(
        ECCVGenerator(width=0.125),
        LabImages(tiny_cache, "val"),
        size=64,
        temperatures=(0.38, 1.0),
        samples=(0, 2),
    )
    assert metrics["images"] == len(LabImages(tiny_cache, "val"))
    assert set(metrics["temperatures"]) == {"0.38", "1"}
    assert metrics["default_temperature"] in (0.38, 1.0)
    gray = metrics["gray"]
    assert 0 < gray["auc"] < 1 and gray["colourfulness"] < 1.0 and metrics["truth"]["colourfulness"] > 5
    assert len(rows["gray"]) == 2 and rows["1"][0][0].shape == (64, 64, 3)
    card = evaluate.markdown(metrics, "random init", {}, {"grid": "samples.png"})
    assert "| gray (ab = 0) |" in card and "(default)" in card and "![grid](samples.png)" in card
    assert "PSNR at most 1 dB below gray" in card


def test_unknown_checkpoint_is_refused() -> None:
    with pytest.raises(FileNotFoundError, match="neither a registered checkpoint nor a file"):
        evaluate.load_model("no-such-checkpoint")


def test_as_shipped_scores_the_bars_at_the_registered_temperature(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped ECCV16 registered at T = 0.45, which the picker's list lacks.
    shipped = weights.REGISTRY[weights.DEFAULT["eccv16"]]
    name = "eccv16-at-0.45"
    entry = dataclasses.replace(shipped, name=name, meta={**shipped.meta, "temperature": "0.45"})
    monkeypatch.setitem(weights.REGISTRY, name, entry)
    argv = ["--checkpoint", name, "--cache", str(tiny_cache), "--out", str(tmp_path),
            "--results", str(tmp_path), "--size", "64", "--threads", "1", "--temperatures", "0.38", "1",
            "--as-shipped"]  # fmt: skip
    assert evaluate.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["default_temperature"] == float(weights.REGISTRY[name].meta["temperature"]) == 0.45
    assert set(metrics["temperatures"]) == {"0.38", "0.45", "1"}
    assert metrics["picked_temperature"] in (0.38, 0.45, 1.0)
    assert "T = 0.45 (default)" in (tmp_path / "model_card.md").read_text()


def test_as_shipped_needs_a_registered_temperature(tiny_cache: Path) -> None:
    with pytest.raises(SystemExit, match=re.escape("'eccv16-w0.25-random' is no registered")):
        evaluate.main(["--checkpoint", "eccv16-w0.25-random", "--cache", str(tiny_cache), "--as-shipped"])
