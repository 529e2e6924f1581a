"""The Colorize pipeline: bytes -> L -> Triton -> annealed mean -> full-resolution ab -> bytes.

Colour is predicted on a working-size square of L and recombined with the input's own
full-resolution L (DeOldify#17, InstColorization#4: the output keeps the input's resolution and
detail). The CPU-heavy numpy stages run in worker threads (numpy releases the GIL), so the event
loop keeps serving other requests while one is being decoded or encoded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from contract import DECODED_VARIANT, MODELS, PUBLIC_MODELS, ModelSpec
from service import ab_decode, codec, lab
from service.metrics import Metrics
from service.settings import Settings
from service.triton import InferenceBackend, ModelInfo


@dataclass(frozen=True)
class ColorizeOptions:
    model: str
    temperature: float
    working_size: int
    output_format: str  # PNG, JPEG, WEBP
    quality: int


@dataclass(frozen=True)
class Timings:
    decode_ms: float
    triton_ms: float
    postprocess_ms: float
    total_ms: float


@dataclass(frozen=True)
class ColorizeResult:
    image: bytes
    width: int
    height: int
    model: ModelInfo
    options: ColorizeOptions
    timings: Timings


@dataclass(frozen=True)
class _Prepared:
    lightness: np.ndarray  # (H, W) float32 L in [0, 100], full resolution
    working: np.ndarray  # (1, 1, S, S) float32 L at the working size
    alpha: np.ndarray | None


def prepare(image: bytes, working_size: int, *, max_pixels: int, max_bytes: int) -> _Prepared:
    """Decode, validate, convert to L at full resolution and at the working size."""
    decoded = codec.decode(image, max_pixels=max_pixels, max_bytes=max_bytes)
    # A gray image needs one table lookup per pixel, not a colour conversion.
    lightness = lab.gray_to_l(decoded.pixels) if decoded.is_gray else lab.srgb_to_l(decoded.pixels)
    working = ab_decode.resize_l(lightness, (working_size, working_size))
    return _Prepared(lightness, working[None, None], decoded.alpha)


def finish(prepared: _Prepared, ab_small: np.ndarray, options: ColorizeOptions) -> bytes:
    """(2, h, w) ab -> bilinear to full resolution -> with the original L -> sRGB -> bytes."""
    height, width = prepared.lightness.shape
    a, b = ab_decode.resize_ab(ab_small, (height, width))
    rgb = lab.lab_planes_to_srgb_uint8(prepared.lightness, a, b)
    return codec.encode(rgb, prepared.alpha, options.output_format, options.quality)


def served_model(model: str, settings: Settings) -> ModelSpec:
    """The Triton model that serves a public model name under this deployment's decode placement."""
    return MODELS[DECODED_VARIANT[model]] if settings.decode_in_triton else MODELS[model]


def served_models(settings: Settings) -> list[ModelSpec]:
    return [served_model(name, settings) for name in PUBLIC_MODELS]


class ColorizePipeline:
    def __init__(self, backend: InferenceBackend, settings: Settings, metrics: Metrics) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._limit = asyncio.Semaphore(settings.max_concurrent_colorize)

    async def colorize(self, image: bytes, options: ColorizeOptions, *, timeout_s: float) -> ColorizeResult:
        spec = served_model(options.model, self._settings)
        async with self._limit:
            self._metrics.in_flight.inc()
            try:
                start = time.perf_counter()
                prepared = await asyncio.to_thread(
                    prepare,
                    image,
                    options.working_size,
                    max_pixels=self._settings.max_pixels,
                    max_bytes=self._settings.max_message_bytes,
                )
                decoded_at = time.perf_counter()
                info = await self._backend.model_info(spec)
                inputs = {"L": prepared.working}
                if "T" in {t.name for t in spec.inputs}:
                    inputs["T"] = np.full((1, 1), options.temperature, np.float32)
                outputs = await self._backend.infer(
                    spec, inputs, timeout_s=max(0.001, timeout_s - (decoded_at - start))
                )
                inferred_at = time.perf_counter()
                encoded = await asyncio.to_thread(self._postprocess, prepared, outputs, options)
                done = time.perf_counter()
            finally:
                self._metrics.in_flight.dec()
        timings = Timings(
            decode_ms=(decoded_at - start) * 1e3,
            triton_ms=(inferred_at - decoded_at) * 1e3,
            postprocess_ms=(done - inferred_at) * 1e3,
            total_ms=(done - start) * 1e3,
        )
        for stage, ms in (
            ("decode", timings.decode_ms),
            ("triton", timings.triton_ms),
            ("postprocess", timings.postprocess_ms),
        ):
            self._metrics.stage_seconds.labels(stage).observe(ms / 1e3)
        height, width = prepared.lightness.shape
        return ColorizeResult(encoded, width, height, info, options, timings)

    @staticmethod
    def _postprocess(prepared: _Prepared, outputs: dict[str, np.ndarray], options: ColorizeOptions) -> bytes:
        if "ab" in outputs:  # decoded in the graph
            ab_small = outputs["ab"][0].astype(np.float32)
        else:
            ab_small = ab_decode.annealed_mean(outputs["logits"], options.temperature)[0]
        return finish(prepared, ab_small, options)
