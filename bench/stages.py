"""The gateway's stages timed in this process, with the gateway's own functions on the same inputs.

The gateway reports three server-side times per response (decode, Triton, postprocess); running
`service.gateway.colorize.prepare` and `postprocess` here with their `lap` hook splits them further:
decode -> {image decode, sRGB -> L + resize}, postprocess -> {annealed mean, ab upsample + Lab -> sRGB,
encode}. (Until 3 December this module timed the numpy specifications of those steps instead of the
gateway's numba kernels, which overstated the colour stages about fivefold.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from numpy.typing import NDArray

from contract import ECCV16
from service.gateway import colorize

_LIMITS: dict[str, Any] = {"max_pixels": 50_000_000, "max_bytes": 64 << 20}
DECODE_STAGES = ("image decode", "sRGB→L + resize")
POST_STAGES = ("annealed mean", "ab upsample + Lab→sRGB", "encode")
# colorize's lap names -> these stages (large images lap sRGB→L and the resize as one)
_STAGE_OF = {
    "decode": "image decode",
    "sRGB→L": "sRGB→L + resize",
    "resize L": "sRGB→L + resize",
    "sRGB→L + resize L": "sRGB→L + resize",
    "annealed mean": "annealed mean",
    "ab upsample + Lab→sRGB": "ab upsample + Lab→sRGB",
    "encode": "encode",
}


class Laps:
    """The `lap` hook of colorize.prepare/postprocess: ms per stage since the previous lap."""

    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self.ms: dict[str, float] = {}
        self._clock = clock
        self._last = clock()

    def __call__(self, stage: str) -> None:
        now = self._clock()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._last) * 1e3
        self._last = now

    def restart(self) -> None:
        self._last = self._clock()


def time_stages(
    images: Sequence[bytes], logits: NDArray[Any], *, working_size: int, output_format: str, reps: int
) -> dict[str, float]:
    """Median ms per stage over `reps` passes over `images`, through the gateway's eccv16 path with its
    default temperature (one logits tensor stands for all); wall clock, as the responses' timings."""
    other = "JPEG" if output_format == "PNG" else "PNG"
    context = f"encode as {other} (context)"
    samples: dict[str, list[float]] = {name: [] for name in (*DECODE_STAGES, *POST_STAGES, context)}
    for _ in range(reps):
        for image in images:
            for fmt, encode_stage in ((output_format, "encode"), (other, context)):
                options = colorize.ColorizeOptions(
                    model=ECCV16.name, temperature=None, working_size=working_size, output_format=fmt,
                    quality=90,
                )  # fmt: skip
                laps = Laps(time.perf_counter)
                prepared = colorize.prepare(image, ECCV16, options, **_LIMITS, lap=laps)
                laps.restart()
                colorize.postprocess(prepared, {"logits": logits}, options, lap=laps)
                stages: dict[str, float] = {}
                for lap, ms in laps.ms.items():
                    stage = _STAGE_OF[lap]
                    stage = encode_stage if stage == "encode" else stage
                    stages[stage] = stages.get(stage, 0.0) + ms
                if fmt != output_format:  # the other format's run only adds its encode
                    stages = {context: stages[context]}
                for stage, ms in stages.items():
                    samples[stage].append(ms)
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
