"""`RestoreRequest` protobuf <-> the engine's arguments, and the engine's output -> protobuf and PNG.

Torch-free (numpy + PIL): the gateway validates requests with the same code the worker uses to build the
engine's task, so a request the gateway accepted cannot fail in the worker for its arguments. Errors are
`InvalidArgument`s naming the request field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from service.bus.request import (
    AutoStop,
    DenoiseTask,
    FixedIterations,
    InpaintStyle,
    InpaintTask,
    JpegTask,
    Stopping,
    SuperResolveTask,
    Task,
)
from service.bus.result import Progress, StopReason
from service.codec import decode
from service.errors import InvalidArgument
from service.pb.priorlab.v1 import restore_pb2

TASKS = ("denoise", "inpaint", "super_resolve", "jpeg")
# Blind denoising estimates σ from the finest diagonal Haar band, which needs a 2x2 block
# (`service.restore.early_stop.estimate_noise_sigma`); tests/service/bus/test_wire.py runs the engine's
# estimate on every small size to hold the two together.
BLIND_DENOISE_MIN_SIDE = 2
DEFAULT_PROGRESS_EVERY = 50
PREVIEW_MAX_SIDE = 128

INPAINT_STYLES = {
    restore_pb2.INPAINT_STYLE_UNSPECIFIED: InpaintStyle.TEXT,
    restore_pb2.INPAINT_STYLE_TEXT: InpaintStyle.TEXT,
    restore_pb2.INPAINT_STYLE_LARGE_HOLE: InpaintStyle.LARGE_HOLE,
    restore_pb2.INPAINT_STYLE_REGION: InpaintStyle.REGION,
    restore_pb2.INPAINT_STYLE_PIXELS: InpaintStyle.PIXELS,
}

STOP_REASONS = {
    StopReason.PLATEAU: restore_pb2.STOP_REASON_VARIANCE_PLATEAU,
    StopReason.DISCREPANCY: restore_pb2.STOP_REASON_DISCREPANCY,
    StopReason.HOLDOUT: restore_pb2.STOP_REASON_HOLDOUT_MINIMUM,
    StopReason.MAX_ITERATIONS: restore_pb2.STOP_REASON_MAX_ITERATIONS,
    StopReason.FIXED_ITERATIONS: restore_pb2.STOP_REASON_FIXED_ITERATIONS,
    StopReason.TIME_BUDGET: restore_pb2.STOP_REASON_TIME_BUDGET,
}


@dataclass(frozen=True, eq=False)
class Inputs:
    """A decoded request: pixels (H, W) or (H, W, 3), uint8/uint16; alpha (H, W) or None; the task."""

    pixels: NDArray[Any]
    alpha: NDArray[Any] | None
    task: Task


def decode_inputs(request: restore_pb2.RestoreRequest, *, max_pixels: int, max_bytes: int) -> Inputs:
    """Decode the image (and mask) and build the engine's task; `InvalidArgument` names the field."""
    kind = request.WhichOneof("task")
    if kind is None:
        raise InvalidArgument(f"task is not set: give one of {', '.join(TASKS)}")
    image = decode(request.image, max_pixels=max_pixels, max_bytes=max_bytes)
    height, width = image.size
    task: Task
    if kind == "denoise":
        sigma = None
        if request.denoise.HasField("sigma"):
            sigma = request.denoise.sigma
            if not 0.0 < sigma < 255.0:
                raise InvalidArgument(f"denoise.sigma must be in (0, 255) (0..255 units), got {sigma:g}")
        if sigma is None and min(height, width) < BLIND_DENOISE_MIN_SIDE:
            raise InvalidArgument(
                f"denoise without sigma needs an image of at least {BLIND_DENOISE_MIN_SIDE}x"
                f"{BLIND_DENOISE_MIN_SIDE} pixels to estimate the noise, got {width}x{height}: give sigma"
            )
        task = DenoiseTask(sigma=None if sigma is None else sigma / 255.0)
    elif kind == "super_resolve":
        factor = request.super_resolve.factor
        if factor not in (2, 4, 8):
            raise InvalidArgument(f"super_resolve.factor must be 2, 4 or 8, got {factor}")
        if height * width * factor * factor > max_pixels:
            raise InvalidArgument(
                f"super_resolve.factor {factor} makes a {width * factor}x{height * factor} output, over the "
                f"limit of {max_pixels} pixels"
            )
        task = SuperResolveTask(factor=factor)  # type: ignore[arg-type]  # checked just above
    elif kind == "inpaint":
        task = _inpaint_task(request.inpaint, (height, width), max_pixels=max_pixels, max_bytes=max_bytes)
    else:
        task = JpegTask()
    return Inputs(image.pixels, image.alpha, task)


def _inpaint_task(
    params: restore_pb2.InpaintParams, size: tuple[int, int], *, max_pixels: int, max_bytes: int
) -> InpaintTask:
    if params.style not in INPAINT_STYLES:
        raise InvalidArgument(f"inpaint.style {params.style} is not one of {sorted(INPAINT_STYLES)}")
    try:
        mask_image = decode(params.mask, max_pixels=max_pixels, max_bytes=max_bytes)
    except InvalidArgument as e:
        raise InvalidArgument(f"inpaint.mask: {e}") from None
    if mask_image.size != size:
        (mh, mw), (h, w) = mask_image.size, size
        raise InvalidArgument(f"inpaint.mask is {mw}x{mh}, the image is {w}x{h}: they must match")
    gray = mask_image.pixels if mask_image.is_gray else mask_image.pixels.mean(axis=2)
    half = 32768 if mask_image.bit_depth == 16 else 128
    white = np.asarray(gray) >= half
    missing = white if params.mask_missing_white else ~white
    try:
        return InpaintTask(mask=missing, style=INPAINT_STYLES[params.style])
    except ValueError as e:
        raise InvalidArgument(f"inpaint.mask: {e}") from None


def check_stopping(request: restore_pb2.RestoreRequest, max_iterations: int) -> None:
    """Iteration counts within the server's cap; `InvalidArgument` names the field."""
    if request.WhichOneof("stopping") == "fixed_iterations":
        n = request.fixed_iterations
        if not 1 <= n <= max_iterations:
            raise InvalidArgument(f"fixed_iterations must be in 1..{max_iterations}, got {n}")
    elif (cap := request.auto_stop.max_iterations) > max_iterations:
        raise InvalidArgument(f"auto_stop.max_iterations must be at most {max_iterations}, got {cap}")


def stopping(request: restore_pb2.RestoreRequest, default_budget: int) -> Stopping:
    """The engine's stopping policy; an automatic stop without a cap runs at most `default_budget`."""
    if request.WhichOneof("stopping") == "fixed_iterations":
        return FixedIterations(request.fixed_iterations)
    return AutoStop(max_iterations=request.auto_stop.max_iterations or default_budget)


def progress_every(request: restore_pb2.RestoreRequest) -> int:
    return request.progress_every or DEFAULT_PROGRESS_EVERY


def to_samples(image: NDArray[np.float32], dtype: np.dtype[Any]) -> NDArray[Any]:
    """Float [0, 1] -> the input's integer samples, rounded."""
    peak = np.iinfo(dtype).max
    return np.round(np.clip(image, 0.0, 1.0) * peak).astype(dtype)


def resize_alpha(alpha: NDArray[Any], size: tuple[int, int]) -> NDArray[Any]:
    """Alpha (H, W) -> (height, width) = `size`, bicubic, in its own dtype (for super-resolution)."""
    if alpha.shape == size:
        return alpha
    resized = Image.fromarray(alpha.astype(np.float32)).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.clip(np.round(np.asarray(resized)), 0, np.iinfo(alpha.dtype).max).astype(alpha.dtype)


def encode_png(samples: NDArray[Any], alpha: NDArray[Any] | None) -> bytes:
    """PNG of (H, W) or (H, W, 3) samples plus optional alpha. 16-bit gray without alpha stays 16-bit;
    anything else with 16-bit samples is written as 8 bits (PIL has no 16-bit RGB or LA)."""
    if samples.dtype == np.uint16 and samples.ndim == 2 and alpha is None:
        image = Image.fromarray(samples)  # mode I;16
    else:
        planes = [_as_uint8(samples)] if samples.ndim == 2 else [_as_uint8(samples)[..., c] for c in range(3)]
        if alpha is not None:
            planes.append(_as_uint8(alpha))
        image = Image.fromarray(np.dstack(planes) if len(planes) > 1 else planes[0])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _as_uint8(samples: NDArray[Any]) -> NDArray[np.uint8]:
    if samples.dtype == np.uint8:
        return samples
    return ((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def preview_png(image: NDArray[np.float32]) -> bytes:
    """A small 8-bit PNG of the current iterate, at most `PREVIEW_MAX_SIDE` pixels a side."""
    samples = to_samples(image, np.dtype(np.uint8))
    preview = Image.fromarray(samples)
    preview.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    return buffer.getvalue()


def progress_message(progress: Progress) -> restore_pb2.Progress:
    return restore_pb2.Progress(
        iteration=progress.iteration,
        max_iterations=progress.max_iterations,
        loss=progress.loss,
        elapsed_s=progress.elapsed_s,
        eta_s=progress.eta_s,
        best_iteration=progress.best_iteration or 0,
        preview=b"" if progress.preview is None else preview_png(progress.preview),
    )
