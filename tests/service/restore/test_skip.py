"""Tests for service.restore.skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.bus.request import DenoiseTask, InpaintStyle, InpaintTask, JpegTask, SuperResolveTask
from service.restore.recipes import recipe_for
from service.restore.skip import SkipConfig, skip


def _count(cfg: SkipConfig) -> int:
    return sum(p.numel() for p in skip(cfg).parameters())


def _table_count(cfg: SkipConfig) -> int:
    """Parameters from the layer table of docs/dip.md §1.1: conv = in·out·k² + out, BN = 2·C."""

    def conv(i: int, o: int, k: int) -> int:
        return i * o * k * k + o

    total, cin, n = 0, cfg.in_channels, cfg.num_scales
    for i in range(n):
        d, u, s = cfg.channels_down[i], cfg.channels_up[i], cfg.channels_skip[i]
        k = d if i == n - 1 else cfg.channels_up[i + 1]
        if s:
            total += conv(cin, s, cfg.filter_size_skip) + 2 * s
        total += conv(cin, d, cfg.filter_size_down) + 2 * d + conv(d, d, cfg.filter_size_down) + 2 * d
        total += 2 * (s + k) + conv(s + k, u, cfg.filter_size_up) + 2 * u
        if cfg.need1x1_up:
            total += conv(u, u, 1) + 2 * u
        cin = d
    return total + conv(cfg.channels_up[0], cfg.out_channels, 1)


class TestSkip:
    def test_denoise_sr_net_parameter_count(self) -> None:
        # docs/dip.md §1.1: counted on the reference get_net(32, 'skip', ..., 128/128/4, 5 scales), 3 outputs.
        assert _count(recipe_for(DenoiseTask(), 3).net) == 2_217_831
        assert _count(recipe_for(SuperResolveTask(4), 3).net) == 2_217_831

    @pytest.mark.parametrize("style", list(InpaintStyle))
    def test_parameter_count_matches_layer_table(self, style: InpaintStyle) -> None:
        for task in (JpegTask(), DenoiseTask(), InpaintTask(np.zeros((4, 4), bool), style)):
            cfg = recipe_for(task, 3).net
            assert _count(cfg) == _table_count(cfg)

    @pytest.mark.parametrize(
        "task",
        [
            DenoiseTask(),
            JpegTask(),
            SuperResolveTask(8),
            InpaintTask(np.zeros((4, 4), bool), InpaintStyle.TEXT),
            InpaintTask(np.zeros((4, 4), bool), InpaintStyle.LARGE_HOLE),
            InpaintTask(np.zeros((4, 4), bool), InpaintStyle.REGION),
        ],
        ids=["denoise", "jpeg", "sr8", "text", "hole", "region"],
    )
    @pytest.mark.parametrize("channels", [1, 3])
    def test_output_shape_and_range(self, task: object, channels: int) -> None:
        cfg = recipe_for(task, channels).net  # type: ignore[arg-type]
        torch.manual_seed(0)
        net = skip(cfg)
        side = cfg.min_size
        z = torch.rand(1, cfg.in_channels, side, side + cfg.size_multiple)
        with torch.no_grad():
            out = net(z)
        assert out.shape == (1, channels, side, side + cfg.size_multiple)
        assert float(out.min()) > 0.0 and float(out.max()) < 1.0  # sigmoid head

    def test_batchnorm_stays_in_train_mode(self) -> None:
        # The reference never calls net.eval(): every pass uses the image's own BN statistics.
        net = skip()
        assert all(m.training for m in net.modules())

    def test_size_constraints(self) -> None:
        assert SkipConfig().size_multiple == 32 and SkipConfig().min_size == 64
        # Depth 6 with 5x5 down convs: the deepest level needs 3 px for its reflection pad of 2.
        six = recipe_for(InpaintTask(np.zeros((4, 4), bool), InpaintStyle.REGION), 3).net
        assert six.size_multiple == 64 and six.min_size == 192

    def test_rejects_mismatched_channel_lists(self) -> None:
        with pytest.raises(ValueError, match=r"same non-zero length"):
            SkipConfig(channels_down=(8, 8), channels_up=(8,), channels_skip=(4,))

    def test_rejects_unknown_upsample_mode(self) -> None:
        with pytest.raises(ValueError, match="bicubic"):
            SkipConfig(upsample_mode="bicubic")  # type: ignore[arg-type]


class TestThinBatchNorm:
    """skip.BatchNorm2d: a thin NHWC input goes through the NCHW kernel, with nn.BatchNorm2d's results."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize(("channels", "side"), [(8, 128), (4, 32), (16, 64)])
    def test_matches_torch_batchnorm(self, dtype: torch.dtype, channels: int, side: int) -> None:
        from service.restore.skip import BatchNorm2d

        gen = torch.Generator().manual_seed(channels * side)
        x = torch.randn(1, channels, side, side, generator=gen).mul(3).add(1).to(dtype)
        grad = torch.randn(x.shape, generator=gen).to(dtype)
        ours, oracle = BatchNorm2d(channels), torch.nn.BatchNorm2d(channels)
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5, generator=gen)
            ours.bias.uniform_(-1, 1, generator=gen)
        oracle.load_state_dict(ours.state_dict())
        x_ours = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        x_oracle = x.clone().requires_grad_(True)  # NCHW: the oracle never takes our path
        y_ours, y_oracle = ours(x_ours), oracle(x_oracle)
        y_ours.backward(grad.contiguous(memory_format=torch.channels_last))
        y_oracle.backward(grad)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        sums = 1e-3 if dtype == torch.float32 else 5e-3  # parameter grads: sums of 16 k terms, any order
        assert y_ours.is_contiguous(memory_format=torch.channels_last)  # the layout the next conv expects
        torch.testing.assert_close(y_ours.float(), y_oracle.float(), atol=tol, rtol=tol)
        dx_ours, dx_oracle = x_ours.grad, x_oracle.grad
        assert dx_ours is not None and dx_oracle is not None
        torch.testing.assert_close(dx_ours.float(), dx_oracle.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(ours.weight.grad, oracle.weight.grad, atol=sums, rtol=sums)
        torch.testing.assert_close(ours.bias.grad, oracle.bias.grad, atol=sums, rtol=sums)
        torch.testing.assert_close(ours.running_var, oracle.running_var)

    @pytest.mark.parametrize(
        ("channels", "dtype", "nchw_kernel"),
        [
            (8, torch.float32, True),
            (8, torch.bfloat16, True),
            (4, torch.float32, True),
            (4, torch.bfloat16, False),  # the one thin case where the NHWC kernel keeps up
            (16, torch.float32, False),
            (128, torch.bfloat16, False),
        ],
    )
    def test_only_thin_layers_change_layout(
        self, monkeypatch: pytest.MonkeyPatch, channels: int, dtype: torch.dtype, nchw_kernel: bool
    ) -> None:
        from service.restore.skip import BatchNorm2d

        seen: list[bool] = []
        parent = torch.nn.BatchNorm2d.forward

        def spy(self: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.is_contiguous())
            return parent(self, x)

        monkeypatch.setattr(torch.nn.BatchNorm2d, "forward", spy)
        x = torch.randn(1, channels, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
        BatchNorm2d(channels)(x)
        BatchNorm2d(channels)(x.contiguous())  # an NCHW input is passed through as it is
        assert seen == [nchw_kernel, True]
