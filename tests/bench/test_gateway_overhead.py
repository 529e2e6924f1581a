"""bench.gateway_overhead: its pure parts, and one real gateway pass on a small JPEG."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench import gateway_overhead as go
from bench.inputs import jpeg_bytes
from contract import MODELS, WORKING_SIZE_DEFAULT
from service.color import ab_decode, hue_chroma, lab


def _photo(height: int = 120, width: int = 200) -> np.ndarray:
    """A smooth colourful image (not noise): hue across, lightness down."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, 1 - x / width], axis=-1) * 255
    return rgb.astype(np.uint8)


class TestInputs:
    @pytest.mark.parametrize(("width", "height"), [(768, 512), (512, 512), (96, 160)])
    def test_fit_crops_to_the_aspect_then_resizes(self, width: int, height: int) -> None:
        rgb = _photo()
        out = go.fit(rgb, width, height)
        assert out.shape == (height, width, 3) and out.dtype == np.uint8
        # A centre crop: the middle pixel keeps its colour.
        np.testing.assert_allclose(out[height // 2, width // 2], rgb[60, 100], atol=6)

    @pytest.mark.parametrize("model", go.MODEL_KINDS)
    def test_model_outputs_follow_the_contract(self, model: str) -> None:
        spec = MODELS[model]
        ab = go.true_ab(_photo(), 64)
        outputs = go.model_outputs(spec, ab)
        assert set(outputs) == {t.name for t in spec.outputs}
        for tensor in spec.outputs:
            assert outputs[tensor.name].shape == tensor.shape(1, 64, 64)
            assert outputs[tensor.name].dtype == np.dtype(tensor.numpy_dtype)
            assert np.isfinite(outputs[tensor.name].astype(np.float32)).all()

    def test_eccv16_logits_decode_near_the_true_colour(self) -> None:
        ab = go.true_ab(_photo(), 64)
        logits = go.model_outputs(MODELS["eccv16"], ab)["logits"]
        decoded = ab_decode.annealed_mean(logits, 1.0)[0]
        expected = ab.reshape(2, 16, 4, 16, 4).mean(axis=(2, 4))
        assert np.median(np.abs(decoded - expected)) < 3.0  # Lab units; bins are 10 apart

    def test_larsson16_hue_peaks_at_the_true_hue(self) -> None:
        ab = go.true_ab(_photo(), 64)
        outputs = go.model_outputs(MODELS["larsson16"], ab)
        hue, _ = hue_chroma.hue_from(outputs["hue"][0], "mode")
        small = ab.reshape(2, 16, 4, 16, 4).mean(axis=(2, 4))
        rgb = lab.lab_to_srgb(np.stack([np.full((16, 16), 50.0), *small], axis=-1))
        expected = go._hue(rgb.astype(np.float32))
        circular = np.minimum(np.abs(hue - expected), 1 - np.abs(hue - expected))
        assert np.median(circular) <= 1 / 32


class TestResults:
    @staticmethod
    def _sizes() -> list[dict[str, Any]]:
        return [
            {
                "size": "768x512",
                "jpeg_kib": 80.0,
                "samples": 10,
                "bare_ms": {
                    "pillow": {"decode": 2.0, "encode": 1.5, "total": 3.5},
                    "simplejpeg": {"decode": 1.5, "encode": 1.0, "total": 2.5},
                },
                "fastest_codec": "simplejpeg",
                "gateway_ms": {
                    "eccv16": {"decode": 1.5, "annealed mean": 1.0, "encode": 1.0, "total": 4.0},
                    "siggraph17": {"decode": 1.5, "encode": 1.0, "total": 6.0},
                },
            }
        ]

    def test_figures_divide_by_the_fastest_codec(self) -> None:
        found = {f.key: f for f in go.figures(self._sizes())}
        assert found["gateway_over_codec_eccv16_768x512"].value == pytest.approx(1.6)
        assert found["gateway_over_codec_eccv16_768x512"].met is True
        assert found["gateway_over_codec_siggraph17_768x512"].value == pytest.approx(2.4)
        assert found["gateway_over_codec_siggraph17_768x512"].met is False

    def test_breakdown_rows(self) -> None:
        panels = go.breakdown_rows(self._sizes())
        rows = panels["768x512"]
        assert list(rows) == ["bare codec (simplejpeg)", "gateway, eccv16", "gateway, siggraph17"]
        assert rows["gateway, eccv16"] == {"decode": 1.5, "annealed mean": 1.0, "encode": 1.0}

    def test_render(self) -> None:
        sizes = self._sizes()
        document = {
            "command": "python -m bench.gateway_overhead",
            "generated": "2026-11-30 14:00",
            "quick": False,
            "environment": {
                "cpu": "Xeon",
                "isa": "AVX512 (avx512_bf16)",
                "load_before": 0.5,
                "load_after": 0.6,
                "omp_threads": "1",
            },
            "sizes": sizes,
            "figures": [f.as_dict() for f in go.figures(sizes)],
            "plot": "gateway_overhead.png",
        }
        text = go.render(document)
        assert "| 768x512 | eccv16 | 4.0 | 2.5 (simplejpeg) | 1.60× | ≤ 2.00× | met | 1.14× |" in text
        assert (
            "| 768x512 | siggraph17 | 6.0 | 2.5 (simplejpeg) | 2.40× | ≤ 2.00× | **missed** | 1.71× |" in text
        )
        assert "| 768x512 | 2.00 + 1.50 = 3.50 | 1.50 + 1.00 = 2.50 |" in text
        assert "(ISA AVX512 (avx512_bf16))" in text and "quick" not in text
        assert "![gateway_overhead.png](gateway_overhead.png)" in text


def test_gateway_once_times_the_real_pipeline() -> None:
    image = jpeg_bytes(go.fit(_photo(), 96, 64))
    spec = MODELS["eccv16"]
    outputs = go.model_outputs(spec, go.true_ab(go.fit(_photo(), 96, 64), WORKING_SIZE_DEFAULT))
    stages = go.gateway_once(image, spec, outputs)
    assert list(stages) == [
        "header", "decode", "sRGB→L", "resize L", "annealed mean",
        "ab upsample + Lab→sRGB", "encode", "total",
    ]  # fmt: skip
    parts = sum(v for k, v in stages.items() if k != "total")
    assert stages["total"] == pytest.approx(parts, rel=0.05, abs=0.2)


def test_the_bench_measures_what_the_default_gateway_serves() -> None:
    # PRIORLAB_DECODE_IN_TRITON is off by default: eccv16 is served with its logits (annealed mean in the
    # gateway); if the default ever changes, the bench follows it.
    from service.gateway import colorize
    from service.gateway.settings import Settings

    for kind in go.MODEL_KINDS:
        assert go.served_by_default(kind) == colorize.served_model(kind, Settings())
    assert go.served_by_default("eccv16").name == ("eccv16_ab" if Settings().decode_in_triton else "eccv16")


def test_laps_accumulate_per_stage() -> None:
    laps = go.Laps()
    laps("a")
    laps("b")
    laps("a")
    assert set(laps.ms) == {"a", "b"} and all(v >= 0 for v in laps.ms.values())


def test_codec_candidates_round_trip() -> None:
    rgb = go.fit(_photo(), 64, 48)
    data = jpeg_bytes(rgb)
    for codec in go.codec_candidates():
        decoded = codec.decode(data)
        assert decoded.shape == rgb.shape, codec.name
        again = codec.decode(codec.encode(decoded))
        assert np.abs(again.astype(int) - decoded).mean() < 3, codec.name
