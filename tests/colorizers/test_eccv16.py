from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from colorizers.eccv16 import ECCVGenerator, eccv16
from contract import asset_path

# The official state_dict (richzhang/colorization colorizers/eccv16.py @4f6009ed), from
# reference/colorization.md §1.2: key -> shape, for every one of the 82 entries.
_CONV = {
    "model1.0": (64, 1, 3, 3),
    "model1.2": (64, 64, 3, 3),
    "model2.0": (128, 64, 3, 3),
    "model2.2": (128, 128, 3, 3),
    "model3.0": (256, 128, 3, 3),
    "model3.2": (256, 256, 3, 3),
    "model3.4": (256, 256, 3, 3),
    "model4.0": (512, 256, 3, 3),
    "model4.2": (512, 512, 3, 3),
    "model4.4": (512, 512, 3, 3),
    **{f"model{b}.{i}": (512, 512, 3, 3) for b in (5, 6, 7) for i in (0, 2, 4)},
    "model8.0": (512, 256, 4, 4),
    "model8.2": (256, 256, 3, 3),
    "model8.4": (256, 256, 3, 3),
    "model8.6": (313, 256, 1, 1),
}
_BN = {
    "model1.4": 64,
    "model2.4": 128,
    "model3.6": 256,
    "model4.6": 512,
    "model5.6": 512,
    "model6.6": 512,
    "model7.6": 512,
}


def official_table() -> dict[str, tuple[int, ...]]:
    table: dict[str, tuple[int, ...]] = {}
    for key, shape in _CONV.items():
        table[f"{key}.weight"] = shape
        # ConvTranspose2d weights are (in, out, k, k): its bias has `out` entries.
        table[f"{key}.bias"] = (shape[1],) if key == "model8.0" else (shape[0],)
    for key, channels in _BN.items():
        for name in ("weight", "bias", "running_mean", "running_var"):
            table[f"{key}.{name}"] = (channels,)
        table[f"{key}.num_batches_tracked"] = ()
    table["model_out.weight"] = (2, 313, 1, 1)
    return table


def test_state_dict_matches_official_keys_and_shapes() -> None:
    state = ECCVGenerator().state_dict()
    table = official_table()
    assert len(table) == 82
    assert {k: tuple(v.shape) for k, v in state.items()} == table


def test_parameter_count_is_official() -> None:
    model = ECCVGenerator()
    assert sum(p.numel() for p in model.parameters()) == 32_236_011


def test_official_checkpoint_layout_loads_key_for_key() -> None:
    # A state dict shaped like the authors' release (random values) loads strictly.
    release = {k: torch.randn(v) if v else torch.tensor(0) for k, v in official_table().items()}
    ECCVGenerator().load_state_dict(release, strict=True)


def test_decode_layer_holds_bin_centres_over_110() -> None:
    bins = np.load(asset_path("pts_in_hull.npy"))
    weight = ECCVGenerator(0.25).model_out.weight.detach().numpy().reshape(2, 313)
    np.testing.assert_allclose(weight.T * 110, bins, atol=1e-4)


@pytest.mark.parametrize(("height", "width"), [(256, 256), (64, 96)])
def test_shapes_logits_at_quarter_resolution(height: int, width: int) -> None:
    model = eccv16(width=0.125).eval()
    lightness = torch.rand(2, 1, height, width) * 100
    with torch.no_grad():
        assert model.logits(lightness).shape == (2, 313, height // 4, width // 4)
        assert model(lightness).shape == (2, 2, height, width)


def test_forward_is_softmax_mean_of_logits() -> None:
    torch.manual_seed(0)
    model = eccv16(width=0.125).eval()
    lightness = torch.rand(1, 1, 64, 64) * 100
    bins = torch.from_numpy(np.load(asset_path("pts_in_hull.npy")).astype(np.float32))
    with torch.no_grad():
        probs = F.softmax(model.logits(lightness), dim=1)
        mean = torch.einsum("nqhw,qc->nchw", probs, bins)
        expected = F.interpolate(mean, scale_factor=4, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(lightness), expected, atol=1e-3, rtol=1e-4)


def test_width_scales_hidden_channels_only() -> None:
    model = ECCVGenerator(width=0.25)
    state = model.state_dict()
    assert state["model1.0.weight"].shape == (16, 1, 3, 3)
    assert state["model8.6.weight"].shape == (313, 64, 1, 1)
    assert state["model_out.weight"].shape == (2, 313, 1, 1)


@pytest.mark.parametrize("width", [0.0, -1.0, 1.5])
def test_bad_width_is_refused(width: float) -> None:
    with pytest.raises(ValueError, match=str(width)):
        ECCVGenerator(width=width)


def test_gateway_decode_at_t1_equals_the_models_own_forward() -> None:
    # The gateway's numpy decode (annealed mean at T=1 + bilinear x4) must reproduce upstream's
    # PyTorch forward (softmax mean -> model_out -> upsample4 -> x110) on the same logits.
    from service.color.ab_decode import annealed_mean, resize_ab

    torch.manual_seed(3)
    model = eccv16(width=0.125).eval()
    with torch.no_grad():
        head = model.model8[6]
        assert isinstance(head, torch.nn.Conv2d)
        head.weight.mul_(50)  # peaked logits, like a trained net's, not a fresh init's
    lightness = torch.rand(1, 1, 96, 128) * 100
    with torch.no_grad():
        logits = model.logits(lightness).numpy()
        expected = model(lightness).numpy()[0]
    assert logits.std() > 0.5
    got = resize_ab(annealed_mean(logits, 1.0)[0], (96, 128))
    np.testing.assert_allclose(got, expected, atol=2e-3)
