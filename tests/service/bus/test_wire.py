"""Request -> engine arguments, engine output -> PNG: torch-free code shared by gateway and worker."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.bus import wire
from service.bus.request import (
    AutoStop,
    DenoiseTask,
    FixedIterations,
    InpaintStyle,
    InpaintTask,
    JpegTask,
)
from service.bus.result import Progress, StopReason
from service.pb.priorlab.v1 import restore_pb2

LIMIT = 1 << 30


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_decode_inputs_splits_alpha_and_builds_the_task() -> None:
    rgba = np.dstack([np.full((8, 10, 3), 50, np.uint8), np.arange(80, dtype=np.uint8).reshape(8, 10)])
    req = restore_pb2.RestoreRequest(image=png(rgba), denoise=restore_pb2.DenoiseParams(sigma=51))
    inputs = wire.decode_inputs(req, max_pixels=LIMIT, max_bytes=LIMIT)
    assert inputs.pixels.shape == (8, 10, 3) and inputs.alpha is not None
    np.testing.assert_array_equal(inputs.alpha, rgba[..., 3])
    assert inputs.task == DenoiseTask(sigma=0.2)
    blind = restore_pb2.RestoreRequest(image=png(rgba), denoise=restore_pb2.DenoiseParams())
    assert wire.decode_inputs(blind, max_pixels=LIMIT, max_bytes=LIMIT).task == DenoiseTask(sigma=None)
    jpeg = restore_pb2.RestoreRequest(image=png(rgba), jpeg=restore_pb2.JpegParams())
    assert isinstance(wire.decode_inputs(jpeg, max_pixels=LIMIT, max_bytes=LIMIT).task, JpegTask)


@pytest.mark.parametrize("missing_white", [False, True])
def test_mask_convention(missing_white: bool) -> None:
    mask = np.full((6, 6), 255, np.uint8)
    mask[2] = 0
    params = restore_pb2.InpaintParams(
        mask=png(mask), style=restore_pb2.INPAINT_STYLE_PIXELS, mask_missing_white=missing_white
    )
    req = restore_pb2.RestoreRequest(image=png(np.zeros((6, 6), np.uint8)), inpaint=params)
    task = wire.decode_inputs(req, max_pixels=LIMIT, max_bytes=LIMIT).task
    assert isinstance(task, InpaintTask) and task.style == InpaintStyle.PIXELS
    expected = (mask == 255) if missing_white else (mask == 0)  # default: black = missing
    np.testing.assert_array_equal(task.mask, expected)


def test_stopping_policy() -> None:
    fixed = restore_pb2.RestoreRequest(fixed_iterations=7)
    assert wire.stopping(fixed, 100) == FixedIterations(7)
    assert wire.stopping(restore_pb2.RestoreRequest(), 100) == AutoStop(max_iterations=100)
    capped = restore_pb2.RestoreRequest(auto_stop=restore_pb2.AutoStopParams(max_iterations=30))
    assert wire.stopping(capped, 100) == AutoStop(max_iterations=30)
    assert wire.progress_every(restore_pb2.RestoreRequest()) == wire.DEFAULT_PROGRESS_EVERY


def test_every_finishing_stop_reason_has_its_own_wire_value() -> None:
    # CANCELLED never reaches a result: the job ends with the CANCELLED status code instead.
    finishing = set(StopReason) - {StopReason.CANCELLED}
    assert set(wire.STOP_REASONS) == finishing
    values = set(wire.STOP_REASONS.values())
    assert len(values) == len(finishing) and restore_pb2.STOP_REASON_UNSPECIFIED not in values
    assert wire.STOP_REASONS[StopReason.HOLDOUT] == restore_pb2.STOP_REASON_HOLDOUT_MINIMUM


def test_png_keeps_16_bit_gray_and_alpha() -> None:
    gray16 = wire.to_samples(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), np.dtype(np.uint16))
    out = decode_png(wire.encode_png(gray16, None))
    assert out.dtype.itemsize == 2 or out.dtype == np.int32  # PIL opens I;16 PNGs as I;16 or I
    np.testing.assert_array_equal(out.astype(np.int64), gray16.astype(np.int64))
    rgb = np.zeros((3, 4, 3), np.uint8)
    alpha = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(decode_png(wire.encode_png(rgb, alpha))[..., 3], alpha)
    assert decode_png(wire.encode_png(gray16[..., None][..., 0].astype(np.uint16), alpha)).shape == (3, 4, 2)


def test_alpha_resized_for_super_resolution() -> None:
    alpha = np.full((4, 5), 200, np.uint8)
    resized = wire.resize_alpha(alpha, (8, 10))
    assert resized.shape == (8, 10) and resized.dtype == np.uint8 and (resized == 200).all()
    assert wire.resize_alpha(alpha, (4, 5)) is alpha


def test_progress_with_small_preview() -> None:
    progress = Progress(
        iteration=3,
        max_iterations=9,
        loss=0.5,
        elapsed_s=1.0,
        eta_s=2.0,
        best_iteration=None,
        preview=np.full((300, 200, 3), 0.5, np.float32),
    )
    message = wire.progress_message(progress)
    assert (message.iteration, message.max_iterations, message.best_iteration) == (3, 9, 0)
    assert max(Image.open(io.BytesIO(message.preview)).size) == wire.PREVIEW_MAX_SIDE


@pytest.mark.parametrize(("height", "width"), [(h, w) for h in (1, 2, 3) for w in (1, 2, 16)] + [(16, 1)])
def test_blind_denoise_is_refused_exactly_where_the_engine_cannot_estimate_sigma(
    height: int, width: int
) -> None:
    """Issue #16: a 16x1 blind denoise was accepted, then failed in the worker. The gateway's check and the
    engine's estimate must refuse the same sizes (the engine's code is run here, so they cannot drift)."""
    from service.errors import InvalidArgument
    from service.restore.early_stop import estimate_noise_sigma  # torch: the worker's own code

    pixels = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    try:
        estimate_noise_sigma(pixels[..., None] / 255.0)
        engine_ok = True
    except ValueError:
        engine_ok = False
    blind = restore_pb2.RestoreRequest(image=png(pixels), denoise=restore_pb2.DenoiseParams())
    try:
        wire.decode_inputs(blind, max_pixels=LIMIT, max_bytes=LIMIT)
        gateway_ok = True
    except InvalidArgument as e:
        assert f"got {width}x{height}: give sigma" in str(e)
        gateway_ok = False
    assert gateway_ok == engine_ok
    given = restore_pb2.RestoreRequest(image=png(pixels), denoise=restore_pb2.DenoiseParams(sigma=25))
    wire.decode_inputs(given, max_pixels=LIMIT, max_bytes=LIMIT)  # σ given: no estimate, any size
