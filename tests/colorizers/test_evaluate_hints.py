from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from colorizers import evaluate_hints, run_state
from colorizers.siggraph17 import SIGGRAPHGenerator


def _uniform_image(a: float = 20.0, b: float = -30.0, size: int = 36) -> np.ndarray:
    lab = np.empty((3, size, size), np.float32)
    lab[0] = np.linspace(30, 80, size)[None, :]
    lab[1], lab[2] = a, b
    return lab


def test_a_model_that_returns_the_hinted_truth_scores_high_and_hint_counts_are_exact() -> None:
    masks: list[torch.Tensor] = []

    def colorize(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Spread the mean hint colour everywhere: the truth for a one-colour image, gray without hints.
        masks.append(mask)
        total = mask.sum(dim=(1, 2, 3)).clamp(min=1)
        mean = hint.sum(dim=(2, 3)) / total[:, None]
        return mean[:, :, None, None].expand_as(hint)

    counts = (0, 1, 5, 100)
    psnrs = evaluate_hints.psnr_vs_hints(colorize, [_uniform_image(), _uniform_image(-15, 40)], counts)
    assert all(len(v) == 2 for v in psnrs.values())
    assert all(p < 30 for p in psnrs[0])  # gray against a colourful truth
    assert all(math.isinf(p) or p > 45 for k in counts[1:] for p in psnrs[k])
    mask = masks[0]  # image cropped 36 -> 32, one row per count
    assert mask.shape == (4, 1, 32, 32)
    pixels = mask.sum(dim=(1, 2, 3)).tolist()
    assert pixels[0] == 0 and pixels[1] == 36 and 36 <= pixels[2] <= 5 * 36 and pixels[3] <= 100 * 36


def test_the_same_seed_gives_the_same_hints() -> None:
    images = [_uniform_image()]
    seen: list[torch.Tensor] = []

    def colorize(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen.append(mask.clone())
        return torch.zeros_like(hint)

    for _ in range(2):
        evaluate_hints.psnr_vs_hints(colorize, images, (10,), seed=3)
    assert torch.equal(seen[0], seen[1])


def test_mean_and_standard_error_by_hand() -> None:
    mean, se = evaluate_hints.mean_and_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(se, 1 / math.sqrt(3))


def test_authors_curve_picks_the_columns_of_the_hint_counts(tmp_path: Path) -> None:
    table = np.tile(np.arange(26, dtype=np.float64), (4, 1))
    np.save(tmp_path / "psnrs.npy", table)
    curve = evaluate_hints.authors_curve(tmp_path / "psnrs.npy", (0, 10, 100, 7))
    assert curve == {0: (0.0, 0.0), 10: (8.0, 0.0), 100: (18.0, 0.0)}  # 7 is not in the sweep


def test_unregistered_checkpoint_loads_with_our_mask_convention(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "sg.pth"
    run_state.save_shipped(SIGGRAPHGenerator(width=0.125, mask_offset=0.5), path)
    model, label = evaluate_hints.load_siggraph(str(path))
    assert model.width == 0.125 and model.mask_offset == 0.5 and "mask offset 0.5" in label
    with pytest.raises(FileNotFoundError):
        evaluate_hints.load_siggraph(str(tmp_path / "missing.pth"))
