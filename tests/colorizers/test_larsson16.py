from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color
from torch.nn import functional as F

from colorizers.larsson16 import GRAY_MEAN, LarssonColorizer, hypercolumn_channels, l_to_gray, larsson16


def test_full_width_hypercolumn_has_12417_channels_and_the_published_heads() -> None:
    # reference/colorization.md §4: 1 + 64·2 + 128·2 + 256·3 + 512·6 + 4096·2, "1024 12417" h_fc1 blob.
    assert hypercolumn_channels(1.0) == 1 + 64 * 2 + 128 * 2 + 256 * 3 + 512 * 6 + 4096 * 2 == 12_417
    with torch.device("meta"):  # shapes only: 147M parameters are never allocated
        model = LarssonColorizer(width=1.0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["convs.conv1_1.weight"] == (64, 1, 3, 3)
    assert shapes["convs.conv5_3.weight"] == (512, 512, 3, 3)
    assert shapes["fc6.weight"] == (4096, 512, 7, 7) and shapes["fc7.weight"] == (4096, 4096, 1, 1)
    assert shapes["h_fc1.weight"] == (1024, 12_417, 1, 1)
    assert shapes["prediction_h.weight"] == (32, 1024, 1, 1)
    assert shapes["prediction_c.weight"] == (32, 1024, 1, 1)
    assert len([k for k in shapes if k.startswith("convs.") and k.endswith(".weight")]) == 13
    # ≈ the authors' 588,203,256-byte fp32 caffemodel.h5 (147.05M floats with the HDF5 overhead).
    assert sum(p.numel() for p in model.parameters()) == 147_041_024


@pytest.mark.parametrize("width", [0.125, 0.25])
def test_width_scales_the_hypercolumn_and_the_hidden_layer(width: float) -> None:
    model = larsson16(width=width)
    assert model.h_fc1.in_channels == hypercolumn_channels(width)
    assert model.h_fc1.out_channels == round(1024 * width)
    assert model.prediction_h.out_channels == model.prediction_c.out_channels == 32


@pytest.fixture(scope="module")
def small() -> LarssonColorizer:
    torch.manual_seed(0)
    model = LarssonColorizer(width=0.125).eval()
    with torch.no_grad():  # peaked distributions, so comparisons are not between near-uniform ones
        model.prediction_h.weight.mul_(300)
        model.prediction_c.weight.mul_(300)
    return model


@pytest.mark.parametrize(("height", "width"), [(64, 96), (72, 104)])
def test_explicit_hypercolumn_at_quarter_resolution_equals_the_factored_head(
    small: LarssonColorizer, height: int, width: int
) -> None:
    lightness = torch.rand(2, 1, height, width) * 100
    with torch.no_grad():
        column = small.hypercolumn(lightness)
        assert column.shape == (2, hypercolumn_channels(0.125), height // 4, width // 4)
        hidden = F.relu(small.h_fc1(column))
        hue, chroma = small.logits(lightness)
    torch.testing.assert_close(hue, small.prediction_h(hidden), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chroma, small.prediction_c(hidden), atol=1e-4, rtol=1e-4)
    # Channel 0 is the data layer: the centred gray input, average-pooled 4x4.
    expected = F.avg_pool2d(l_to_gray(lightness) - GRAY_MEAN, 4)
    torch.testing.assert_close(column[:, :1], expected)


def test_forward_gives_distributions_at_quarter_resolution(small: LarssonColorizer) -> None:
    with torch.no_grad():
        hue, chroma = small(torch.rand(3, 1, 96, 64) * 100)
    for p in (hue, chroma):
        assert p.shape == (3, 32, 24, 16) and p.min() >= 0
        torch.testing.assert_close(p.sum(1), torch.ones(3, 24, 16))
    assert hue.max() > 0.5  # the sharpened heads are not uniform


def test_sides_off_the_multiple_of_32_are_edge_padded_and_cropped_back(small: LarssonColorizer) -> None:
    lightness = torch.rand(1, 1, 72, 104) * 100
    padded = F.pad(lightness, (0, 24, 0, 24), mode="replicate")
    with torch.no_grad():
        hue, _ = small(lightness)
        hue_padded, _ = small(padded)
    torch.testing.assert_close(hue, hue_padded[..., :18, :26])


def test_gray_input_is_the_neutral_srgb_value_of_l() -> None:
    lightness = torch.linspace(0, 100, 201)
    neutral = np.stack([lightness.numpy(), np.zeros(201), np.zeros(201)], -1).astype(np.float64)
    want = color.lab2rgb(neutral[None])[0].mean(-1)
    np.testing.assert_allclose(l_to_gray(lightness).numpy(), want, atol=1e-4)


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = LarssonColorizer(width=0.125, dropout=0.5)
    lightness = torch.rand(1, 1, 64, 64) * 100
    with torch.no_grad():
        model.eval()
        a, b = model.logits(lightness)[0], model.logits(lightness)[0]
        torch.testing.assert_close(a, b)
        model.train()
        assert not torch.equal(model.logits(lightness)[0], model.logits(lightness)[0])


@pytest.mark.parametrize(("kwargs", "needle"), [({"width": 0.0}, "width"), ({"dropout": 1.0}, "dropout")])
def test_bad_arguments_are_refused(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        LarssonColorizer(**kwargs)
