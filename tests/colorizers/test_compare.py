from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from colorizers import compare
from colorizers.dataset import LabImages, redistributable
from colorizers.eccv16 import ECCVGenerator
from colorizers.larsson16 import LarssonColorizer
from colorizers.siggraph17 import SIGGRAPHGenerator


def _oracle(images: LabImages, size: int) -> compare.Entry:
    """Colours each crop with its own ground truth, looked up by its L plane."""
    truth = {}
    for i in range(len(images)):
        lab = images.centre_crop(i, size)
        h, w = (lab.shape[1] // 32) * 32, (lab.shape[2] // 32) * 32
        truth[lab[0, :h, :w].tobytes()] = lab[1:, :h, :w]
    return compare.Entry("oracle", "truth", lambda lightness: truth[lightness.tobytes()])


def test_every_decoding_gives_full_size_ab() -> None:
    torch.manual_seed(0)
    lightness = np.linspace(5, 95, 64 * 96, dtype=np.float32).reshape(64, 96)
    colorizers = [
        compare.eccv16(ECCVGenerator(width=0.125).eval(), 0.38),
        compare.siggraph17(SIGGRAPHGenerator(width=0.125).eval()),
        *(
            compare.larsson16(LarssonColorizer(width=0.0625).eval(), h, c)
            for h, c in compare.LARSSON_MODES.values()
        ),
    ]
    for colorize in colorizers:
        ab = colorize(lightness)
        assert ab.shape == (2, 64, 96) and np.isfinite(ab).all()


def test_the_truth_scores_perfectly_and_gray_like_gray(tiny_cache: Path) -> None:
    images = LabImages(tiny_cache, "val")
    gray = compare.Entry("gray again", "none", lambda lightness: np.zeros((2, *lightness.shape), np.float32))
    metrics, rows = compare.compare([_oracle(images, 64), gray], images, size=64, samples=(0,))
    oracle = metrics["models"]["oracle"]
    assert oracle["ab_l2"] < 1e-6 and oracle["auc"] == pytest.approx(1.0, abs=1e-3)
    assert oracle["colourfulness"] == pytest.approx(metrics["truth"]["colourfulness"], rel=1e-6)
    assert metrics["models"]["gray again"]["psnr"] == pytest.approx(metrics["gray"]["psnr"])
    assert metrics["gray"]["auc"] < oracle["auc"]
    assert metrics["images"] == len(images)
    # One grid row: gray | oracle | gray again | truth, the oracle's cell equal to the truth's.
    assert len(rows) == 1 and len(rows[0]) == 4
    np.testing.assert_array_equal(rows[0][1], rows[0][3])
    card = compare.markdown(metrics, "ab" * 32, "grid.png", [("img00.png", "CC0-1.0")])
    assert "| oracle (`truth`) | 0.00 |" in card and "![gray | oracle | gray again | truth](grid.png)" in card
    assert "`img00.png` (CC0-1.0)" in card


def test_only_redistributable_photos_are_shown(tmp_path: Path) -> None:
    rows = [
        "split\tsource\tmember\tlicence",
        "train\ta\tt.jpg\tCC0-1.0",
        "val\timagenet\tn1.JPEG\tImageNet terms (non-commercial research)",
        "val\tlomiri\tbridge.jpg\tCC-BY-SA-4.0",
        "val\tbsds\t1.jpg\tBSDS500 (research use)",
        "val\topencv\tapple.jpg\tApache-2.0/BSD-3-Clause",
        "val\tx\tgpl.jpg\tGPL-2+",
    ]
    (tmp_path / "manifest.tsv").write_text("\n".join(rows) + "\n")
    assert redistributable(tmp_path, "val") == [
        (1, "bridge.jpg", "CC-BY-SA-4.0"),
        (3, "apple.jpg", "Apache-2.0/BSD-3-Clause"),
    ]
