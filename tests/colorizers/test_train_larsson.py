from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from colorizers import train_larsson
from colorizers.larsson16 import LarssonColorizer
from colorizers.train_larsson import (
    Targets,
    hue_chroma_gray,
    kl_divergence,
    larsson_loss,
    lightness_tent,
    make_targets,
    window_histograms,
)

RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
BLUE_BIN = int(2 / 3 * 32)  # HSV hue of blue is 2/3 -> bin 21


def test_hue_chroma_gray_follow_hsv() -> None:
    rgb = torch.rand(2, 3, 9, 11)
    rgb[0, :, 0, 0] = 0.5  # a neutral pixel: chroma 0, hue 0 by convention
    hue, chroma, gray = hue_chroma_gray(rgb)
    hsv = color.rgb2hsv(rgb.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(hue.numpy(), hsv[..., 0], atol=1e-5)
    np.testing.assert_allclose(chroma.numpy(), hsv[..., 1] * hsv[..., 2], atol=1e-6)  # c = s·v
    np.testing.assert_allclose(gray.numpy(), rgb.mean(1).numpy(), atol=1e-7)
    assert hue[0, 0, 0] == 0 and chroma[0, 0, 0] == 0


def red_blue_patch() -> torch.Tensor:
    """8x8: columns 0-3 pure red, 4-7 pure blue -> targets at 2x2."""
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[0, :, :, :4] = torch.tensor(RED)[:, None, None]
    rgb[0, :, :, 4:] = torch.tensor(BLUE)[:, None, None]
    return rgb


def test_window_histograms_of_a_hand_made_patch() -> None:
    # The window of cell (i, j) spans pixels 4j-1..4j+5 with edge replication: for j = 0 the
    # columns 0,0,1,2,3 are red and 4,5 blue (5/7 red); for j = 1, column 3 red, 4..7,7,7 blue (1/7).
    targets = make_targets(red_blue_patch())
    assert targets.hue.shape == targets.chroma.shape == (1, 32, 2, 2)
    for row in range(2):
        np.testing.assert_allclose(targets.hue[0, 0, row].numpy(), [5 / 7, 1 / 7], atol=1e-6)
        np.testing.assert_allclose(targets.hue[0, BLUE_BIN, row].numpy(), [2 / 7, 6 / 7], atol=1e-6)
    torch.testing.assert_close(targets.hue.sum(1), torch.ones(1, 2, 2))
    # Chroma 1 everywhere: all mass in the top bin; hue weight (window chroma) 1; gray 1/3 -> tent 1.
    torch.testing.assert_close(targets.chroma[0, 31], torch.ones(2, 2))
    torch.testing.assert_close(targets.hue_weight, torch.ones(1, 2, 2))
    torch.testing.assert_close(targets.chroma_weight, torch.ones(1, 2, 2))


def test_gray_patch_has_no_hue_weight_and_a_tent_chroma_weight() -> None:
    rgb = torch.full((1, 3, 8, 8), 0.9)
    targets = make_targets(rgb)
    torch.testing.assert_close(targets.hue_weight, torch.zeros(1, 2, 2))
    torch.testing.assert_close(targets.chroma_weight, torch.full((1, 2, 2), 0.3))  # 3·(1 - 0.9)
    torch.testing.assert_close(targets.chroma[0, 0], torch.ones(2, 2))  # chroma 0: bin 0


def test_uniform_bins_and_the_tent() -> None:
    values = torch.tensor([[[0.0, 1 / 32 - 1e-6, 1 / 32, 0.999, 1.0, 0.5, 0.5, 0.5]]]).expand(1, 8, 8)
    hist = window_histograms(values.contiguous(), 32)
    assert hist.shape == (1, 32, 2, 2)
    gray = torch.tensor([0.0, 0.1, 1 / 3, 0.5, 2 / 3, 0.9, 1.0])
    torch.testing.assert_close(lightness_tent(gray), torch.tensor([0.0, 0.3, 1.0, 1.0, 1.0, 0.3, 0.0]))


def test_kl_divergence_on_hand_computed_cases() -> None:
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).reshape(2, 2, 1, 1)
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3)]]).reshape(2, 2, 1, 1)
    kl = kl_divergence(target, logits).flatten()
    # KL((1,0) ‖ (1/2,1/2)) = log 2; KL((1/2,1/2) ‖ (1/4,3/4)) = ½ log 2 + ½ log(2/3).
    torch.testing.assert_close(kl, torch.tensor([math.log(2), 0.5 * math.log(2) + 0.5 * math.log(2 / 3)]))
    assert kl_divergence(target, torch.log(target.clamp(min=1e-30))).abs().max() < 1e-6


def test_loss_weights_hue_by_chroma_times_5_and_chroma_by_the_tent() -> None:
    target = torch.zeros(1, 32, 1, 2)
    target[0, 0] = 1.0  # one-hot in bin 0; uniform prediction -> KL = log 32 at both locations
    logits = torch.zeros(1, 32, 1, 2)
    targets = Targets(target, target, torch.tensor([[[0.2, 0.0]]]), torch.tensor([[[1.0, 0.5]]]))
    loss, hue, chroma = larsson_loss(logits, logits, targets)
    log32 = math.log(32)
    assert hue.item() == pytest.approx((0.2 * log32 + 0) / 2)  # mean over the two locations
    assert chroma.item() == pytest.approx((1.0 + 0.5) * log32 / 2)
    assert loss.item() == pytest.approx(5 * hue.item() + chroma.item())


@pytest.mark.parametrize("bf16", [False, True])
def test_one_training_step_decreases_the_loss(bf16: bool) -> None:
    torch.manual_seed(0)
    model = LarssonColorizer(width=0.125, dropout=0.0)
    rgb = torch.rand(2, 3, 1, 1).expand(2, 3, 64, 64).contiguous()  # flat colours: an easy target
    lab = torch.from_numpy(color.rgb2lab(rgb.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2).float()
    targets = make_targets(rgb)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = larsson_loss(*model.logits(lab[:, :1]), targets)[0].item()
    train_larsson.train_step(model, optimizer, lab[:, :1], targets, bf16=bf16)
    with torch.no_grad():
        after = larsson_loss(*model.logits(lab[:, :1]), targets)[0].item()
    assert after < before


def test_lab_to_rgb_inverts_the_caches_lab() -> None:
    rgb = np.random.default_rng(0).uniform(0.05, 0.95, (2, 8, 8, 3))
    lab = torch.from_numpy(color.rgb2lab(rgb)).permute(0, 3, 1, 2).float()
    back = train_larsson.lab_to_rgb(lab).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(back, rgb, atol=1e-4)


def test_training_run_writes_a_loadable_fp16_checkpoint_and_resumes(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--cache", str(tiny_cache), "--width", "0.125", "--crop", "32", "--batch", "2"]
    argv += ["--max-steps", "2", "--threads", "1", "--val-images", "2"]
    argv += ["--run-dir", str(tmp_path / "run"), "--out", str(tmp_path)]
    assert train_larsson.main(argv) == 0
    out = capsys.readouterr().out
    assert "arch='larsson16'" in out and "sha256=" in out
    state = torch.load(tmp_path / "larsson16-w0.125.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = LarssonColorizer(width=0.125)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 2
    # Same command with a larger step budget resumes at step 2 instead of starting over.
    argv[argv.index("--max-steps") + 1] = "3"
    assert train_larsson.main(argv) == 0
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3


def test_a_run_continues_the_weights_it_is_given_and_records_them(tiny_cache: Path, tmp_path: Path) -> None:
    common = [
        "--cache",
        str(tiny_cache),
        "--width",
        "0.125",
        "--crop",
        "32",
        "--batch",
        "2",
        "--threads",
        "1",
    ]
    common += ["--val-images", "2", "--out", str(tmp_path), "--dropout", "0"]
    first = train_larsson.train(
        train_larsson.parse_args(
            [*common, "--max-steps", "2", "--run-dir", str(tmp_path / "a"), "--name", "a"]
        )
    )
    before = json.loads((tmp_path / "a" / "history.json").read_text())[-1]
    argv = [
        *common,
        "--max-steps",
        "1",
        "--run-dir",
        str(tmp_path / "b"),
        "--name",
        "b",
        "--init-from",
        str(first),
    ]
    train_larsson.train(train_larsson.parse_args([*argv, "--lr", "1e-12"]))
    log = (tmp_path / "b" / "train.log").read_text()
    assert f"starting from the weights of {first}" in log
    start = json.loads((tmp_path / "b" / "history.json").read_text())[0]
    # The curve starts at the given weights: their validation (fp16 rounding apart), not a random net's.
    assert start["step"] == 0 and start["init_from"] == str(first)
    assert start["val_loss"] == pytest.approx(before["val_loss"], rel=1e-3)
    assert f"'init_from': '{first}'" in (tmp_path / "b" / "registry_entry.txt").read_text()
    shipped = torch.load(first, weights_only=True)
    continued = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for key, value in shipped.items():  # lr ~ 0: one step leaves the given weights as they were
        torch.testing.assert_close(continued[key], value.to(continued[key].dtype), atol=1e-3, rtol=0)


def test_init_from_refuses_another_architecture(tiny_cache: Path, tmp_path: Path) -> None:
    argv = ["--cache", str(tiny_cache), "--crop", "32", "--batch", "2", "--threads", "1", "--max-steps", "1"]
    argv += ["--val-images", "2", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="is a eccv16 checkpoint, not larsson16"):
        train_larsson.train(train_larsson.parse_args([*argv, "--init-from", "eccv16-w0.25-l1"]))


def test_crop_must_be_a_multiple_of_32() -> None:
    with pytest.raises(SystemExit):
        train_larsson.parse_args(["--crop", "48"])


def test_ground_truth_histograms_decode_back_to_the_images_colours(
    colour_image: Callable[..., Image.Image],
) -> None:
    # Targets and the gateway's decode agree on the hue convention, the bins and the H/4 grid: the
    # distributions of an image, decoded by the paper's rules, give back its own ab. Photo-like
    # saturation: the decode's gray comes from L, so the most saturated yellows cannot come back.
    from service.color import ab_decode, hue_chroma

    rgb = 0.5 + 0.5 * (np.asarray(colour_image(np.random.default_rng(1), 128, 160), np.float64) / 255 - 0.5)
    lab = color.rgb2lab(rgb)
    targets = make_targets(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
    lightness = lab[..., 0].astype(np.float32)
    ab = hue_chroma.decode_ab(targets.hue[0].numpy(), targets.chroma[0].numpy(), lightness)
    error = np.hypot(*(ab_decode.resize_ab(ab, (128, 160)) - lab[..., 1:].transpose(2, 0, 1)))
    assert np.hypot(lab[..., 1], lab[..., 2]).mean() > 20  # a colourful image
    assert np.median(error) < 2.5 and np.quantile(error, 0.9) < 6.0
