"""The Colorize pipeline: bytes -> L -> Triton -> annealed mean -> full-resolution ab -> bytes.

Colour is predicted on a working-size square of L and recombined with the input's own
full-resolution L (DeOldify#17, InstColorization#4: the output keeps the input's resolution and
detail). The CPU-heavy stages of a large image run in worker threads (the kernels release the GIL),
so the event loop keeps serving other requests while one is being decoded or encoded. A call alone in
the gateway with a small JPEG (at most `Settings.inline_pixels`, answered as JPEG or PNG, no hints) is
worked on the loop itself, where a thread's two hops would cost more latency than its ~2 ms of work
(`ColorizePipeline._inline`; docs/serving.md §8.3).

Models: eccv16 (313 logits, annealed mean here or, deployed as eccv16_ab, in the graph),
siggraph17 (colour hints; regression ab, plus 529 logits for colour suggestions) and larsson16
(hue and chroma distributions, decoded here by `hue_chroma` with the request's modes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from contract import ANNEALED_T_DEFAULT, DECODED_VARIANT, HINT_MODEL, MODELS, PUBLIC_MODELS, ModelSpec
from service import codec
from service.color import ab_decode, fused, hint_spread, hints, hue_chroma, lab, suggest
from service.errors import InvalidArgument
from service.gateway.admission import TRIM_PIXELS, Admission, PixelBudget, WorkClass, trim_heap
from service.gateway.settings import Settings
from service.gateway.triton import InferenceBackend, ModelInfo
from service.metrics import Metrics

R = TypeVar("R")

# Output formats whose encode of a small image is ~1 ms (simplejpeg; fpng for PNG, docs/serving.md §8.4).
INLINE_OUTPUTS = frozenset({"JPEG", "JPG", "PNG"})


@dataclass(frozen=True)
class ColorizeOptions:
    model: str
    temperature: float | None  # None until the served checkpoint's default fills it in
    working_size: int
    output_format: str  # PNG, JPEG, WEBP; "" = the input's own format where it can be written, else PNG
    quality: int
    hints: tuple[hints.Hint, ...] = ()
    hue_decode: str = hue_chroma.HUE_DEFAULT  # larsson16 only
    chroma_decode: str = hue_chroma.CHROMA_DEFAULT
    hint_spread: bool = True  # siggraph17 with hints: carry them further (service/color/hint_spread.py)


@dataclass(frozen=True)
class Timings:
    decode_ms: float
    triton_ms: float
    postprocess_ms: float
    total_ms: float


@dataclass(frozen=True)
class ColorizeResult:
    image: bytes
    format: str  # what `image` is: PNG, JPEG or WEBP
    width: int
    height: int
    model: ModelInfo
    options: ColorizeOptions
    timings: Timings


@dataclass(frozen=True)
class SuggestedColor:
    rgb: tuple[int, int, int]
    ab: tuple[float, float]
    confidence: float


@dataclass(frozen=True)
class _Prepared:
    lightness: NDArray[np.float32]  # (H, W) float32 L in [0, 100], full resolution
    inputs: dict[str, NDArray[Any]]  # the Triton request, at the working size
    alpha: NDArray[np.uint8] | NDArray[np.uint16] | None  # as decoded (codec.DecodedImage)
    source_format: str  # the input's container (codec.INPUT_FORMATS)

    def output_format(self, requested: str) -> str:
        """JPEG in, JPEG out (and PNG, WebP): what a caller who names no format expects."""
        if requested:
            return requested
        return self.source_format if self.source_format in codec.OUTPUT_FORMATS else "PNG"


# Called with a stage's name as each stage ends: bench.gateway_overhead times the real functions so.
Lap = Callable[[str], None]


def _no_lap(stage: str) -> None:
    pass


def prepare(
    image: bytes,
    spec: ModelSpec,
    options: ColorizeOptions,
    *,
    max_pixels: int,
    max_bytes: int,
    lap: Lap = _no_lap,
) -> _Prepared:
    """Decode and validate; L at full resolution, and the model's inputs at the working size."""
    decoded = codec.decode(image, max_pixels=max_pixels, max_bytes=max_bytes)
    lap("decode")
    size = options.working_size
    pixels: NDArray[Any] = decoded.pixels
    if (
        pixels.ndim == 3
        and pixels.dtype == np.uint8
        and pixels.shape[0] * pixels.shape[1] >= fused.FUSED_L_PIXELS
    ):
        # large images: L rows resized while they are in cache (one pass; the same results)
        lightness, small = fused.srgb8_to_l_resized(pixels, (size, size))
        lap("sRGB→L + resize L")
    else:
        lightness = _lightness(pixels)
        lap("sRGB→L")
        small = fused.resize_l(lightness, (size, size))
        lap("resize L")
    inputs = {"L": small[None, None]}
    names = {t.name for t in spec.inputs}
    if "T" in names:
        inputs["T"] = np.full((1, 1), options.temperature or ANNEALED_T_DEFAULT, np.float32)
    if "ab_hint" in names:
        height, width = lightness.shape
        inputs["ab_hint"], inputs["hint_mask"] = hints.hint_tensors(options.hints, height, width, size)
        lap("hints")
    return _Prepared(lightness, inputs, decoded.alpha, decoded.format)


def _lightness(pixels: NDArray[Any]) -> NDArray[np.float32]:
    """Full-resolution L of decoded pixels: a gray image by one table lookup per pixel (`lab.gray_to_l`),
    8-bit RGB by the fused kernel (`fused.srgb8_to_l`, within 1e-4 of `lab.srgb_to_l`)."""
    if pixels.ndim == 2:
        return np.asarray(lab.gray_to_l(pixels), np.float32)
    if pixels.dtype == np.uint8:
        return fused.srgb8_to_l(pixels)
    return np.asarray(lab.srgb_to_l(pixels), np.float32)


def finish(
    prepared: _Prepared, ab_small: NDArray[Any], options: ColorizeOptions, *, lap: Lap = _no_lap
) -> tuple[bytes, str]:
    """(2, h, w) ab -> bilinear to full resolution -> with the original L -> sRGB -> (bytes, format)."""
    fmt = prepared.output_format(options.output_format)
    # Bilinear ab to full resolution (resize_ab's taps), with the full-resolution L to uint8 sRGB
    # (lab.lab_planes_to_srgb_uint8's rounding), in one fused pass; for a JPEG the codec takes, the
    # same pass goes on to the Y'CbCr 4:2:0 libjpeg would make of those pixels, so the encoder skips
    # its conversion and downsampling (this stage + encode: 2048² 20.5 -> 17.5 ms, 768x512 2.1 ->
    # 2.0, 512² unchanged at 1.4; bench/results/gateway_overhead.md).
    pixels: NDArray[np.uint8] | codec.YCbCr420
    if codec.takes_ycbcr420(fmt, prepared.alpha):
        height, width = prepared.lightness.shape
        pixels = codec.YCbCr420(*fused.lab_to_ycbcr420_upsampled(prepared.lightness, ab_small), height, width)
    else:
        pixels = fused.lab_to_srgb8_upsampled(prepared.lightness, ab_small)
    lap("ab upsample + Lab→sRGB")
    encoded = codec.encode(pixels, prepared.alpha, fmt, options.quality)
    lap("encode")
    return encoded, fmt


def postprocess(
    prepared: _Prepared,
    outputs: dict[str, NDArray[Any]],
    options: ColorizeOptions,
    *,
    lap: Lap = _no_lap,
) -> tuple[bytes, str]:
    if "ab" in outputs:  # decoded in the graph (eccv16_ab) or regressed (siggraph17)
        ab_small = ab_decode._float32_copy(outputs["ab"][0])
        lap("ab to float32")
        if options.hints and options.hint_spread:
            height, width = prepared.lightness.shape
            patches = hints.working_patches(options.hints, height, width, options.working_size)
            ab_small = hint_spread.spread(prepared.inputs["L"][0, 0], ab_small, patches)
            lap("hint spread")
    elif "hue" in outputs:  # larsson16: decoded with the working-size L the network saw
        # one kernel for the default decode (`fused.hue_chroma_ab`), numpy's for the other methods
        ab_small = fused.hue_chroma_ab(
            outputs["hue"][0], outputs["chroma"][0], prepared.inputs["L"][0, 0],
            hue_method=options.hue_decode, chroma_method=options.chroma_decode,
        )  # fmt: skip
        lap("hue/chroma decode")
    else:
        ab_small = fused.annealed_mean(outputs["logits"], options.temperature or ANNEALED_T_DEFAULT)[0]
        lap("annealed mean")
    return finish(prepared, ab_small, options, lap=lap)


def work_name(model: str, hints: int, *, spread: bool) -> str:
    """The admission's name for a Colorize call's kind of work. The hint spread costs the gateway about
    2 ms a hint (up to ~2 s at the 1024-hint limit), so hinted calls are timed apart by their count,
    in powers of four: one many-hint call must not make every siggraph17 call look slow."""
    if hints == 0 or not spread:
        return model
    return f"{model}:hints<{4 ** ((hints.bit_length() + 1) // 2)}"


def served_model(model: str, settings: Settings) -> ModelSpec:
    """The Triton model that serves a public model name under this deployment's decode placement."""
    return MODELS[DECODED_VARIANT[model]] if settings.decode_in_triton else MODELS[model]


def served_models(settings: Settings) -> list[ModelSpec]:
    return [served_model(name, settings) for name in PUBLIC_MODELS]


def suggestions_at(
    prepared: _Prepared, logits: NDArray[Any], x: int, y: int, size: int, k: int, seed: int, soften: float
) -> list[SuggestedColor]:
    """Suggestions for input pixel (x, y) from the (529, S/4, S/4) logits, in sRGB at that pixel's L."""
    height, width = prepared.lightness.shape
    if not (0 <= x < width and 0 <= y < height):
        raise InvalidArgument(f"point (x={x}, y={y}) is outside the {width}x{height} image")
    row, col = hints.to_working(x, y, height, width, size)
    stride = size // logits.shape[-1]
    found = suggest.suggest(logits[:, row // stride, col // stride], k, seed, soften)
    lightness = float(prepared.lightness[y, x])
    colours = lab.lab_to_srgb_uint8(np.array([[lightness, *s.ab] for s in found], np.float32))
    return [
        SuggestedColor((int(c[0]), int(c[1]), int(c[2])), s.ab, s.confidence)
        for s, c in zip(found, colours, strict=True)
    ]


class ColorizePipeline:
    """Colorize and SuggestColors: admitted (or refused at once), queued for a slot and for pixels, run.

    Per request: the header is read (`codec.probe`), `Admission.admit` refuses a call whose deadline
    cannot be met or that finds the queue full (RESOURCE_EXHAUSTED + retry-after), the call then waits
    for a pixel reservation (`PixelBudget`, so huge images do not all decode at once) and for one of
    `max_concurrent_colorize` slots, and only then decodes. After a large image the freed heap is
    returned to the system (`admission.trim_heap`).
    """

    def __init__(
        self,
        backend: InferenceBackend,
        settings: Settings,
        metrics: Metrics,
        *,
        admission: Admission | None = None,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._limit = asyncio.Semaphore(settings.max_concurrent_colorize)
        self.admission = admission or Admission(max_queued=settings.max_queued_colorize)
        self.pixels = PixelBudget(settings.max_pixels_in_flight)
        self._large_in_flight = 0
        self._in_flight = 0  # calls holding a slot (`_admitted`): 1 = this call alone

    @contextlib.asynccontextmanager
    async def _admitted(
        self, image: bytes, model: str, working_size: int, timeout_s: float
    ) -> AsyncIterator[codec.ImageHeader]:
        """Admission, then the pixel reservation and a slot; the ticket's cost sample when it ends.
        Yields the image's header."""
        header = codec.probe(
            image, max_pixels=self._settings.max_pixels, max_bytes=self._settings.max_message_bytes
        )
        ticket = self.admission.admit(WorkClass.of(model, working_size, header.pixels), timeout_s)
        completed = False
        large = header.pixels >= TRIM_PIXELS
        try:
            weight = await self.pixels.acquire(header.pixels)
            try:
                async with self._limit:
                    ticket.start()  # DeadlineExceeded if it waited past its deadline: not computed
                    self._large_in_flight += large
                    self._in_flight += 1
                    try:
                        yield header
                    finally:
                        self._large_in_flight -= large
                        self._in_flight -= 1
                completed = True
            finally:
                self.pixels.release(weight)
        finally:
            ticket.finish(completed=completed)
            if large and self._large_in_flight == 0:
                # The last large image is done: hand glibc's freed arenas back (a few ms).
                await asyncio.to_thread(trim_heap)

    def _inline(self, header: codec.ImageHeader, options: ColorizeOptions) -> bool:
        """Whether a call's next stage of colour work runs on the event loop (module docstring): only
        while the call is alone, and only a small JPEG without hints, answered as JPEG or PNG.

        Alone: the two thread hops cost a lone call ~2 ms of latency, but under load the loop must
        stay free to answer and refuse others (on the loop, the slowest overload refusal went from
        28-31 ms to 22-68 ms, docs/serving.md §8.3). Small JPEG: it decodes in ~1 ms and encodes,
        as JPEG or PNG, in ~1 ms; a 512² PNG or WebP takes 3-6 ms to decode, a WebP ~20 ms to
        encode, and spreading hints ~2 ms each (a call may carry up to 1024)."""
        answered_as = (options.output_format or header.format).upper()
        return (
            self._in_flight == 1
            and header.pixels <= self._settings.inline_pixels
            and not options.hints
            and header.format == "JPEG"
            and answered_as in INLINE_OUTPUTS
        )

    @staticmethod
    async def _run(inline: bool, work: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`work(*args, **kwargs)` on the event loop if `inline`, else in a worker thread."""
        if inline:
            return work(*args, **kwargs)
        return await asyncio.to_thread(work, *args, **kwargs)

    async def _prepare(
        self, inline: bool, image: bytes, spec: ModelSpec, options: ColorizeOptions
    ) -> _Prepared:
        return await self._run(
            inline, prepare, image, spec, options,
            max_pixels=self._settings.max_pixels, max_bytes=self._settings.max_message_bytes,
        )  # fmt: skip

    async def colorize(self, image: bytes, options: ColorizeOptions, *, timeout_s: float) -> ColorizeResult:
        spec = served_model(options.model, self._settings)
        arrived = time.perf_counter()
        work = work_name(spec.name, len(options.hints), spread=self._settings.hint_spread)
        async with self._admitted(image, work, options.working_size, timeout_s) as header:
            self._metrics.in_flight.inc()
            try:
                start = time.perf_counter()
                info = await self._backend.model_info(spec)  # cached after the first call
                if options.temperature is None and spec.anneals:
                    options = dataclasses.replace(options, temperature=info.default_temperature)
                if options.hints and not self._settings.hint_spread:
                    options = dataclasses.replace(options, hint_spread=False)
                prepared = await self._prepare(self._inline(header, options), image, spec, options)
                decoded_at = time.perf_counter()
                outputs = await self._backend.infer(
                    spec, prepared.inputs, timeout_s=max(0.001, timeout_s - (decoded_at - arrived))
                )
                inferred_at = time.perf_counter()
                inline = self._inline(header, options)  # asked again: others may have come in meanwhile
                encoded, fmt = await self._run(inline, postprocess, prepared, outputs, options)
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
        return ColorizeResult(encoded, fmt, width, height, info, options, timings)

    async def suggest_colors(
        self, image: bytes, options: ColorizeOptions, *, x: int, y: int, k: int, seed: int, timeout_s: float
    ) -> tuple[list[SuggestedColor], ModelInfo]:
        spec = MODELS[HINT_MODEL]
        arrived = time.perf_counter()
        async with self._admitted(image, f"{spec.name}:suggest", options.working_size, timeout_s) as header:
            prepared = await self._prepare(self._inline(header, options), image, spec, options)
            info = await self._backend.model_info(spec)
            remaining = max(0.001, timeout_s - (time.perf_counter() - arrived))
            outputs = await self._backend.infer(spec, prepared.inputs, timeout_s=remaining)
            found = await asyncio.to_thread(  # k-means over thousands of samples: off the loop
                suggestions_at,
                prepared, outputs["logits"][0], x, y, options.working_size, k, seed, info.suggest_soften,
            )  # fmt: skip
        return found, info
