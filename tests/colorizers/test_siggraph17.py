from __future__ import annotations

import pytest
import torch

from colorizers.siggraph17 import SIGGRAPHGenerator, siggraph17

# reference/colorization.md §1.3: the official key table (weights with shapes; BN blocks have 5 entries).
_CONV = {
    "model1.0": (64, 4, 3, 3),
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
    "model8up.0": (512, 256, 4, 4),
    "model3short8.0": (256, 256, 3, 3),
    "model8.1": (256, 256, 3, 3),
    "model8.3": (256, 256, 3, 3),
    "model9up.0": (256, 128, 4, 4),
    "model2short9.0": (128, 128, 3, 3),
    "model9.1": (128, 128, 3, 3),
    "model10up.0": (128, 128, 4, 4),
    "model1short10.0": (128, 64, 3, 3),
    "model10.1": (128, 128, 3, 3),
    "model_class.0": (529, 256, 1, 1),
    "model_out.0": (2, 128, 1, 1),
}
_TRANSPOSED = {"model8up.0", "model9up.0", "model10up.0"}
_BN = {
    "model1.4": 64,
    "model2.4": 128,
    "model3.6": 256,
    "model4.6": 512,
    "model5.6": 512,
    "model6.6": 512,
    "model7.6": 512,
    "model8.5": 256,
    "model9.3": 128,
}


def official_table() -> dict[str, tuple[int, ...]]:
    table: dict[str, tuple[int, ...]] = {}
    for key, shape in _CONV.items():
        table[f"{key}.weight"] = shape
        table[f"{key}.bias"] = (shape[1],) if key in _TRANSPOSED else (shape[0],)
    for key, channels in _BN.items():
        for name in ("weight", "bias", "running_mean", "running_var"):
            table[f"{key}.{name}"] = (channels,)
        table[f"{key}.num_batches_tracked"] = ()
    return table


def test_state_dict_matches_official_keys_and_shapes() -> None:
    table = official_table()
    assert len(table) == 107
    assert {k: tuple(v.shape) for k, v in SIGGRAPHGenerator().state_dict().items()} == table


def test_parameter_count_is_official_including_the_class_head() -> None:
    model = SIGGRAPHGenerator()
    assert sum(p.numel() for p in model.parameters()) == 34_187_027
    assert sum(p.numel() for p in model.model_class.parameters()) == 135_953


def test_outputs_full_resolution_ab_and_quarter_resolution_logits() -> None:
    model = siggraph17(width=0.125).eval()
    lightness = torch.rand(2, 1, 64, 96) * 100
    with torch.no_grad():
        ab, logits = model.forward_both(lightness, torch.zeros(2, 2, 64, 96), torch.zeros(2, 1, 64, 96))
        assert ab.shape == (2, 2, 64, 96) and logits.shape == (2, 529, 16, 24)
        assert ab.abs().max() <= 110
        # No hints given = zero hints and an empty mask (automatic mode).
        torch.testing.assert_close(model(lightness), ab)


def test_hints_change_the_prediction_and_the_mask_offset_matters() -> None:
    torch.manual_seed(0)
    model = siggraph17(width=0.125).eval()
    lightness = torch.rand(1, 1, 32, 32) * 100
    hint, mask = torch.zeros(1, 2, 32, 32), torch.zeros(1, 1, 32, 32)
    hint[:, :, 10:14, 10:14] = 60.0
    mask[:, :, 10:14, 10:14] = 1.0
    with torch.no_grad():
        automatic = model(lightness)
        guided = model(lightness, hint, mask)
        model.mask_offset = 0.5
        centred = model(lightness, hint, mask)
    assert (guided - automatic).abs().max() > 1e-3
    assert (centred - guided).abs().max() > 1e-3


@pytest.mark.parametrize("offset", [0.25, 1.0])
def test_unknown_mask_convention_is_refused(offset: float) -> None:
    with pytest.raises(ValueError, match=str(offset)):
        SIGGRAPHGenerator(width=0.125, mask_offset=offset)
