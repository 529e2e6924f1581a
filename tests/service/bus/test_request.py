"""Tests for service.bus.request validation and service.restore.recipes values."""

from __future__ import annotations

import numpy as np
import pytest

from service.bus.request import (
    AutoStop,
    DenoiseTask,
    EngineOptions,
    FixedIterations,
    InpaintStyle,
    InpaintTask,
    JpegTask,
    SuperResolveTask,
)
from service.restore.recipes import recipe_for


class TestValidation:
    @pytest.mark.parametrize("sigma", [0.0, 25.0, -0.1])
    def test_sigma_in_unit_range(self, sigma: float) -> None:
        with pytest.raises(ValueError, match=str(sigma)):
            DenoiseTask(sigma=sigma)

    def test_factor(self) -> None:
        with pytest.raises(ValueError, match="3"):
            SuperResolveTask(3)  # type: ignore[arg-type]

    def test_mask_must_be_bool_2d(self) -> None:
        with pytest.raises(ValueError, match="float64"):
            InpaintTask(np.zeros((4, 4)))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
            InpaintTask(np.zeros((4, 4, 3), bool))

    def test_mask_all_missing(self) -> None:
        with pytest.raises(ValueError, match="every pixel"):
            InpaintTask(np.ones((4, 4), bool))

    def test_mask_with_channel_axis_is_squeezed(self) -> None:
        assert InpaintTask(np.zeros((4, 5, 1), bool)).mask.shape == (4, 5)

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"patience": 0}, "patience"),
            ({"alpha": 0.0}, "alpha"),
            ({"rule": "x"}, "rule"),
            ({"tau": 0}, "tau"),
            ({"holdout": 0.7}, "holdout.*0.7"),
            ({"holdout": -0.1}, "holdout"),
            ({"holdout_patience": 0}, "holdout_patience"),
            ({"holdout_wait": 0.0}, "holdout_wait"),
        ],
    )
    def test_autostop(self, kwargs: dict[str, object], name: str) -> None:
        with pytest.raises(ValueError, match=name):
            AutoStop(**kwargs)  # type: ignore[arg-type]

    def test_fixed_and_options(self) -> None:
        with pytest.raises(ValueError, match="0"):
            FixedIterations(0)
        with pytest.raises(ValueError, match="sync_every"):
            EngineOptions(sync_every=0)
        # A graph replays one input buffer: the unfused loop makes a new one every iteration.
        for bad in ({"fused_updates": False}, {"compile": True}):
            with pytest.raises(ValueError, match="cuda_graphs"):
                EngineOptions(cuda_graphs=True, **bad)

    def test_cuda_graphs_by_default_where_they_can_run(self) -> None:
        assert EngineOptions().graphs_allowed
        assert not EngineOptions(fused_updates=False).graphs_allowed
        assert not EngineOptions(compile=True).graphs_allowed
        assert not EngineOptions(cuda_graphs=False).graphs_allowed


class TestRecipes:
    """Spot checks against docs/dip.md §1.3."""

    def test_denoise(self) -> None:
        r = recipe_for(DenoiseTask(sigma=25 / 255), 3)
        assert (r.lr, r.iterations, r.reg_noise_std, r.ema) == (0.01, 3000, 1 / 30, 0.99)
        assert r.net.upsample_mode == "bilinear" and r.net.channels_skip == (4,) * 5

    def test_denoise_sigma_50_uses_more_input_noise(self) -> None:
        assert recipe_for(DenoiseTask(sigma=50 / 255), 1).reg_noise_std == 1 / 20

    @pytest.mark.parametrize(("sigma255", "reg"), [(30, 1 / 30), (37, 1 / 30), (38, 1 / 20), (45, 1 / 20)])
    def test_denoise_takes_the_nearer_reference_setting(self, sigma255: int, reg: float) -> None:
        assert recipe_for(DenoiseTask(sigma=sigma255 / 255), 3).reg_noise_std == reg
        # Blind: the estimate stands in for σ; a known σ wins over it.
        assert recipe_for(DenoiseTask(), 3, estimated_sigma=sigma255 / 255).reg_noise_std == reg
        assert (
            recipe_for(DenoiseTask(sigma=25 / 255), 3, estimated_sigma=sigma255 / 255).reg_noise_std == 1 / 30
        )

    def test_jpeg(self) -> None:
        r = recipe_for(JpegTask(), 3)
        assert r.net.in_channels == 3 and r.net.channels_skip == (0, 0, 0, 4, 4) and r.iterations == 2400

    @pytest.mark.parametrize(("factor", "iters", "reg"), [(4, 2000, 0.03), (8, 4000, 0.05)])
    def test_sr(self, factor: int, iters: int, reg: float) -> None:
        r = recipe_for(SuperResolveTask(factor), 3)  # type: ignore[arg-type]
        assert (r.iterations, r.reg_noise_std, r.ema) == (iters, reg, None)

    def test_inpaint_styles(self) -> None:
        m = np.zeros((4, 4), bool)
        text = recipe_for(InpaintTask(m), 3)
        assert text.net.upsample_mode == "nearest" and text.net.channels_skip == (128,) * 5
        assert text.iterations == 6001
        hole = recipe_for(InpaintTask(m, InpaintStyle.LARGE_HOLE), 3)
        assert hole.input_kind == "meshgrid" and hole.net.in_channels == 2
        assert recipe_for(InpaintTask(m, InpaintStyle.PIXELS), 1).lr == 0.001

    def test_output_channels_follow_image(self) -> None:
        assert recipe_for(DenoiseTask(), 1).net.out_channels == 1

    def test_rejects_two_channels(self) -> None:
        with pytest.raises(ValueError, match="2"):
            recipe_for(DenoiseTask(), 2)
