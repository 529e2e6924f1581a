"""gRPC servicers: protobuf <-> domain types and request validation. No pixels are touched here."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from contract import (
    ANNEALED_T_DEFAULT,
    DEFAULT_MODEL,
    HINT_MODEL,
    HUE_CHROMA_MODEL,
    MODELS,
    PUBLIC_MODELS,
    WORKING_SIZE_DEFAULT,
    WORKING_SIZE_MAX,
    WORKING_SIZE_MIN,
    WORKING_SIZE_MULTIPLE,
)
from service.color import hue_chroma
from service.color.hints import MAX_HINTS, Hint
from service.errors import InvalidArgument, NotFound, echo
from service.gateway.colorize import ColorizeOptions, ColorizePipeline, ColorizeResult, SuggestedColor
from service.gateway.settings import Settings
from service.gateway.triton import ModelInfo
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc

_FORMATS = {
    colorize_pb2.IMAGE_FORMAT_UNSPECIFIED: "",  # as the input (JPEG, PNG, WebP), else PNG
    colorize_pb2.IMAGE_FORMAT_PNG: "PNG",
    colorize_pb2.IMAGE_FORMAT_JPEG: "JPEG",
    colorize_pb2.IMAGE_FORMAT_WEBP: "WEBP",
}
_FORMAT_ENUM = {
    "PNG": colorize_pb2.IMAGE_FORMAT_PNG,
    "JPEG": colorize_pb2.IMAGE_FORMAT_JPEG,
    "WEBP": colorize_pb2.IMAGE_FORMAT_WEBP,
}
QUALITY_DEFAULT = 90
SUGGESTIONS_DEFAULT = 5
SUGGESTIONS_MAX = 16


def _hints(messages: Sequence[colorize_pb2.ColorHint]) -> tuple[Hint, ...]:
    """Proto hints -> domain hints; bounds are checked once the image's size is known."""
    if len(messages) > MAX_HINTS:
        raise InvalidArgument(f"{len(messages)} hints given; at most {MAX_HINTS} are accepted")
    found = []
    for i, h in enumerate(messages):
        if not h.HasField("color"):
            raise InvalidArgument(f"hint {i} at (x={h.x}, y={h.y}) has no color")
        found.append(Hint(h.x, h.y, (h.color.r, h.color.g, h.color.b), h.patch_size or 1))
    return tuple(found)


def _working_size(requested: int) -> int:
    size = requested or WORKING_SIZE_DEFAULT
    if not WORKING_SIZE_MIN <= size <= WORKING_SIZE_MAX or size % WORKING_SIZE_MULTIPLE:
        raise InvalidArgument(
            f"working_size must be a multiple of {WORKING_SIZE_MULTIPLE} in "
            f"[{WORKING_SIZE_MIN}, {WORKING_SIZE_MAX}], got {size}"
        )
    return size


def colorize_options(request: colorize_pb2.ColorizeRequest) -> ColorizeOptions:
    """Validate a request's options and fill the documented defaults; errors name the field."""
    hints = _hints(request.hints)
    model = request.model or (HINT_MODEL if hints else DEFAULT_MODEL)
    if model not in PUBLIC_MODELS:
        raise NotFound(f"model {echo(model)} is not served; known models: {sorted(PUBLIC_MODELS)}")
    if hints and model != HINT_MODEL:
        raise InvalidArgument(f"model {model!r} takes no colour hints; {HINT_MODEL!r} does")
    # Unset: the served checkpoint's own default (its config), decided once the model is known.
    temperature = request.temperature if request.HasField("temperature") else None
    if temperature is not None and not 0 < temperature <= 1:
        raise InvalidArgument(f"temperature must be in (0, 1], got {temperature}")
    if temperature is not None and not MODELS[model].anneals:
        annealing = sorted(name for name in PUBLIC_MODELS if MODELS[name].anneals)
        raise InvalidArgument(
            f"temperature {temperature:g} does not apply to {model!r}: only {annealing} decode an annealed"
            " mean"
        )
    size = _working_size(request.working_size)
    if request.output_format not in _FORMATS:
        raise InvalidArgument(f"output_format {request.output_format} is not one of {sorted(_FORMATS)}")
    quality = request.quality or QUALITY_DEFAULT
    if not 1 <= quality <= 100:
        raise InvalidArgument(f"quality must be in [1, 100], got {quality}")
    if not request.image:
        raise InvalidArgument("image is empty")
    hue_decode, chroma_decode = _decode_modes(request, model)
    return ColorizeOptions(
        model=model,
        temperature=None if temperature is None else float(temperature),
        working_size=size,
        output_format=_FORMATS[request.output_format],
        quality=quality,
        hints=hints,
        hue_decode=hue_decode,
        chroma_decode=chroma_decode,
    )


def _decode_modes(request: colorize_pb2.ColorizeRequest, model: str) -> tuple[str, str]:
    """The hue and chroma decode rules (larsson16 only; empty = the paper's defaults)."""
    if (request.hue_decode or request.chroma_decode) and model != HUE_CHROMA_MODEL:
        raise InvalidArgument(f"hue_decode and chroma_decode apply to {HUE_CHROMA_MODEL!r}, not {model!r}")
    hue = request.hue_decode or hue_chroma.HUE_DEFAULT
    chroma = request.chroma_decode or hue_chroma.CHROMA_DEFAULT
    if hue not in hue_chroma.HUE_METHODS:
        raise InvalidArgument(f"hue_decode must be one of {list(hue_chroma.HUE_METHODS)}, got {echo(hue)}")
    if chroma not in hue_chroma.CHROMA_METHODS:
        raise InvalidArgument(
            f"chroma_decode must be one of {list(hue_chroma.CHROMA_METHODS)}, got {echo(chroma)}"
        )
    return hue, chroma


def colorize_response(result: ColorizeResult) -> colorize_pb2.ColorizeResponse:
    return colorize_pb2.ColorizeResponse(
        image=result.image,
        format=_FORMAT_ENUM[result.format],
        width=result.width,
        height=result.height,
        model=result.model.name,
        model_version=result.model.version,
        checkpoint=result.model.checkpoint,
        trained=result.model.trained,
        # Only what was applied: unset for a model without an annealed mean.
        temperature=result.options.temperature,
        working_size=result.options.working_size,
        timings=colorize_pb2.Timings(
            decode_ms=result.timings.decode_ms,
            triton_ms=result.timings.triton_ms,
            postprocess_ms=result.timings.postprocess_ms,
            total_ms=result.timings.total_ms,
        ),
    )


def suggest_options(request: colorize_pb2.SuggestColorsRequest) -> tuple[ColorizeOptions, int]:
    if not request.image:
        raise InvalidArgument("image is empty")
    k = request.k or SUGGESTIONS_DEFAULT
    if not 1 <= k <= SUGGESTIONS_MAX:
        raise InvalidArgument(f"k must be in [1, {SUGGESTIONS_MAX}], got {k}")
    options = ColorizeOptions(
        model=HINT_MODEL, temperature=ANNEALED_T_DEFAULT, working_size=_working_size(request.working_size),
        output_format="PNG", quality=QUALITY_DEFAULT, hints=_hints(request.hints),
    )  # fmt: skip
    return options, k


def suggest_response(found: list[SuggestedColor], info: ModelInfo) -> colorize_pb2.SuggestColorsResponse:
    return colorize_pb2.SuggestColorsResponse(
        colors=[
            colorize_pb2.SuggestedColor(
                color=colorize_pb2.Rgb(r=s.rgb[0], g=s.rgb[1], b=s.rgb[2]),
                a=s.ab[0],
                b=s.ab[1],
                confidence=s.confidence,
            )
            for s in found
        ],
        model=info.name,
        model_version=info.version,
        checkpoint=info.checkpoint,
        trained=info.trained,
    )


class ColorizerServicer(colorize_pb2_grpc.ColorizerServicer):
    def __init__(self, pipeline: ColorizePipeline, settings: Settings) -> None:
        self._pipeline = pipeline
        self._settings = settings

    async def Colorize(  # noqa: N802 (the proto's method name)
        self, request: colorize_pb2.ColorizeRequest, context: grpc.aio.ServicerContext
    ) -> colorize_pb2.ColorizeResponse:
        options = colorize_options(request)
        result = await self._pipeline.colorize(request.image, options, timeout_s=self._timeout(context))
        return colorize_response(result)

    async def SuggestColors(  # noqa: N802 (the proto's method name)
        self, request: colorize_pb2.SuggestColorsRequest, context: grpc.aio.ServicerContext
    ) -> colorize_pb2.SuggestColorsResponse:
        options, k = suggest_options(request)
        found, info = await self._pipeline.suggest_colors(
            request.image, options, x=request.x, y=request.y, k=k, seed=request.seed,
            timeout_s=self._timeout(context),
        )  # fmt: skip
        return suggest_response(found, info)

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        """The client's remaining deadline, or `triton_timeout_s` when it set none; propagated to Triton.

        Not capped: a client that gives a 15-minute deadline for huge images (they queue for the pixel
        budget) means it; admission refuses at once what cannot finish within it.
        """
        remaining = context.time_remaining()
        return self._settings.triton_timeout_s if remaining is None else remaining
