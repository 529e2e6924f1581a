"""gRPC servicers: protobuf <-> domain types and request validation. No pixels are touched here."""

from __future__ import annotations

import grpc

from contract import (
    ANNEALED_T_DEFAULT,
    DEFAULT_MODEL,
    PUBLIC_MODELS,
    WORKING_SIZE_DEFAULT,
    WORKING_SIZE_MAX,
    WORKING_SIZE_MIN,
    WORKING_SIZE_MULTIPLE,
)
from service.colorize import ColorizeOptions, ColorizePipeline, ColorizeResult
from service.errors import InvalidArgument, NotFound
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc
from service.settings import Settings

_FORMATS = {
    colorize_pb2.IMAGE_FORMAT_UNSPECIFIED: "PNG",
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


def colorize_options(request: colorize_pb2.ColorizeRequest) -> ColorizeOptions:
    """Validate a request's options and fill the documented defaults; errors name the field."""
    model = request.model or DEFAULT_MODEL
    if model not in PUBLIC_MODELS:
        raise NotFound(f"model {model!r} is not served; known models: {sorted(PUBLIC_MODELS)}")
    temperature = request.temperature if request.HasField("temperature") else ANNEALED_T_DEFAULT
    if not 0 < temperature <= 1:
        raise InvalidArgument(f"temperature must be in (0, 1], got {temperature}")
    size = request.working_size or WORKING_SIZE_DEFAULT
    if not WORKING_SIZE_MIN <= size <= WORKING_SIZE_MAX or size % WORKING_SIZE_MULTIPLE:
        raise InvalidArgument(
            f"working_size must be a multiple of {WORKING_SIZE_MULTIPLE} in "
            f"[{WORKING_SIZE_MIN}, {WORKING_SIZE_MAX}], got {size}"
        )
    if request.output_format not in _FORMATS:
        raise InvalidArgument(f"output_format {request.output_format} is not one of {sorted(_FORMATS)}")
    quality = request.quality or QUALITY_DEFAULT
    if not 1 <= quality <= 100:
        raise InvalidArgument(f"quality must be in [1, 100], got {quality}")
    if not request.image:
        raise InvalidArgument("image is empty")
    return ColorizeOptions(
        model=model,
        temperature=float(temperature),
        working_size=size,
        output_format=_FORMATS[request.output_format],
        quality=quality,
    )


def colorize_response(result: ColorizeResult) -> colorize_pb2.ColorizeResponse:
    return colorize_pb2.ColorizeResponse(
        image=result.image,
        format=_FORMAT_ENUM[result.options.output_format],
        width=result.width,
        height=result.height,
        model=result.model.name,
        model_version=result.model.version,
        checkpoint=result.model.checkpoint,
        trained=result.model.trained,
        temperature=result.options.temperature,
        working_size=result.options.working_size,
        timings=colorize_pb2.Timings(
            decode_ms=result.timings.decode_ms,
            triton_ms=result.timings.triton_ms,
            postprocess_ms=result.timings.postprocess_ms,
            total_ms=result.timings.total_ms,
        ),
    )


class ColorizerServicer(colorize_pb2_grpc.ColorizerServicer):
    def __init__(self, pipeline: ColorizePipeline, settings: Settings) -> None:
        self._pipeline = pipeline
        self._settings = settings

    async def Colorize(  # noqa: N802 (the proto's method name)
        self, request: colorize_pb2.ColorizeRequest, context: grpc.aio.ServicerContext
    ) -> colorize_pb2.ColorizeResponse:
        options = colorize_options(request)
        remaining = context.time_remaining()
        timeout_s = (
            self._settings.triton_timeout_s
            if remaining is None
            else min(remaining, self._settings.triton_timeout_s)
        )
        result = await self._pipeline.colorize(request.image, options, timeout_s=timeout_s)
        return colorize_response(result)
