"""The gateway's stages timed in this process, with the gateway's own functions on the same inputs.

The gateway reports three server-side times per response (decode, Triton, postprocess); running
each stage here splits them further: decode -> {image decode, sRGB -> L + resize}, postprocess ->
{annealed mean, ab upsample + Lab -> sRGB, encode}. Same steps as `service.gateway.colorize.prepare/finish`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from contract import ANNEALED_T_DEFAULT
from service import codec
from service.color import ab_decode, lab

T = TypeVar("T")
_LIMITS: dict[str, Any] = {"max_pixels": 50_000_000, "max_bytes": 64 << 20}
DECODE_STAGES = ("image decode", "sRGB→L + resize")
POST_STAGES = ("annealed mean", "ab upsample + Lab→sRGB", "encode")


def _timed(samples: list[float], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    samples.append((time.perf_counter() - start) * 1e3)
    return value


def _to_l(decoded: codec.DecodedImage, size: int) -> NDArray[Any]:
    lightness = lab.gray_to_l(decoded.pixels) if decoded.is_gray else lab.srgb_to_l(decoded.pixels)
    ab_decode.resize_l(lightness, (size, size))
    return lightness


def _to_rgb(lightness: NDArray[Any], ab: NDArray[Any]) -> NDArray[np.uint8]:
    height, width = lightness.shape
    a, b = ab_decode.upsample_ab(ab, (height, width))
    return lab.lab_planes_to_srgb_uint8(lightness, a, b)


def time_stages(
    images: Sequence[bytes], logits: NDArray[Any], *, working_size: int, output_format: str, reps: int
) -> dict[str, float]:
    """Median ms per stage over `reps` passes over `images` (one logits tensor stands for all)."""
    other = "JPEG" if output_format == "PNG" else "PNG"
    context = f"encode as {other} (context)"
    samples: dict[str, list[float]] = {name: [] for name in (*DECODE_STAGES, *POST_STAGES, context)}
    for _ in range(reps):
        for image in images:
            decoded = _timed(samples["image decode"], codec.decode, image, **_LIMITS)
            lightness = _timed(samples["sRGB→L + resize"], _to_l, decoded, working_size)
            ab = _timed(samples["annealed mean"], ab_decode.annealed_mean, logits, ANNEALED_T_DEFAULT)
            rgb = _timed(samples["ab upsample + Lab→sRGB"], _to_rgb, lightness, ab[0])
            _timed(samples["encode"], codec.encode, rgb, None, output_format)
            _timed(samples[context], codec.encode, rgb, None, other)
    return {name: statistics.median(values) for name, values in samples.items() if values}


def attribute(
    server_ms: Mapping[str, float], client_p50_ms: float, in_process_ms: Mapping[str, float]
) -> dict[str, float]:
    """Split a request's time into stages.

    The gateway's reported decode and postprocess medians are divided among their sub-stages in
    the proportions measured in process; Triton is the reported Triton time; what the client saw
    beyond the gateway's total is gRPC transfer, (de)serialisation and scheduling.
    """
    split: dict[str, float] = {}
    for reported, names in (("decode_ms", DECODE_STAGES), ("postprocess_ms", POST_STAGES)):
        parts = {name: in_process_ms.get(name, 0.0) for name in names}
        total = sum(parts.values())
        for name, ms in parts.items():
            split[name] = server_ms[reported] * (ms / total if total > 0 else 1 / len(parts))
    split["Triton call"] = server_ms["triton_ms"]
    split["gRPC + scheduling"] = max(0.0, client_p50_ms - server_ms["total_ms"])
    order = (*DECODE_STAGES, "Triton call", *POST_STAGES, "gRPC + scheduling")
    return {name: split[name] for name in order}
