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


def test_hint_locality_of_a_copying_model_and_of_a_flooding_model() -> None:
    images = [_uniform_image(size=200) * np.array([1, 0, 0], np.float32)[:, None, None]
              + np.array([0, 30, 30], np.float32)[:, None, None]]  # fmt: skip

    def local(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hint * mask  # the hint colour on its pixels, gray elsewhere

    def flood(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total = mask.sum(dim=(1, 2, 3)).clamp(min=1)
        return (hint.sum(dim=(2, 3)) / total[:, None])[:, :, None, None].expand_as(hint)

    near = evaluate_hints.hint_locality(local, images)
    assert near["ab_error_at_hints"] < 1e-4 and near["share_of_hint_pixels_within_10"] == 1.0
    assert near["ab_change_far_from_hints"] == 0.0 and near["images_with_far_pixels"] == 1
    everywhere = evaluate_hints.hint_locality(flood, images)
    assert everywhere["ab_error_at_hints"] < 1e-3
    assert everywhere["ab_change_far_from_hints"] == pytest.approx(np.hypot(30, 30), rel=1e-4)


def test_spread_scores_what_the_gateway_serves_and_its_halo_counts() -> None:
    # A network that colours only the hinted pixels: the gateway's spread carries the colour over the
    # one-colour photo, up to half the image from each hint, so the halo measure (beyond 64 px of
    # every hint) sees the spread's colour there, and sees nothing from the network alone.
    images = [_uniform_image(size=200) * np.array([1, 0, 0], np.float32)[:, None, None]
              + np.array([0, 30, 30], np.float32)[:, None, None]]  # fmt: skip

    def local(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hint * mask

    plain = evaluate_hints.psnr_vs_hints(local, images, (10,))[10][0]
    spread = evaluate_hints.psnr_vs_hints(local, images, (10,), spread=True)[10][0]
    assert spread > plain + 3.0, (plain, spread)
    locality = evaluate_hints.hint_locality(local, images, spread=True)
    assert locality["images_with_far_pixels"] == 1
    assert 0.0 < locality["ab_change_far_from_hints"] < np.hypot(30, 30)
    assert locality["ab_error_at_hints"] < 0.1 * np.hypot(30, 30)
    assert evaluate_hints.hint_locality(local, images)["ab_change_far_from_hints"] == 0.0


def test_quality_bars_read_the_metrics() -> None:
    def scores(colour: float, auc_rebal: float) -> dict[str, float]:
        return {"ab_l2": 1.0, "auc": 0.9, "auc_rebal": auc_rebal, "psnr": 22.0, "colourfulness": colour}

    metrics = {
        "automatic": {
            "gray": scores(0.1, 0.60),
            "model": {**scores(30.0, 0.64), "share_psnr_at_least_gray": 0.85},
            "truth": {"colourfulness": 40.0},
        },
        "gain_at_10_db": 2.5,
        "locality": {"ab_error_at_hints": 8.0, "share_of_hint_pixels_within_10": 0.7,
                     "ab_change_far_from_hints": 6.0, "images_with_far_pixels": 3},
    }  # fmt: skip
    met = {name: ok for name, (ok, _) in evaluate_hints.quality_bars(metrics).items()}
    assert list(met.values()) == [True, True, True, False, True, False]
    assert any("0.75×" in line for line in evaluate_hints.bar_lines(metrics))
