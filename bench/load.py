"""Part 2: the gateway under load, and Triton called directly, both as async gRPC clients.

`colorize_load` drives `priorlab.v1.Colorizer/Colorize` at a fixed concurrency, bounded by a
request count and a time budget, and records every request's latency and status. `triton_direct`
sends the same model the same working-size L through `service.gateway.triton.TritonBackend` (the
gateway's own client, same transport) one at a time: the denominator of gateway p50 ÷ Triton p50.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from bench import plots, stages
from bench.context import Context, figures_of
from bench.figures import Figure
from bench.inputs import model_inputs
from bench.stats import ratio, summarize
from contract import ANNEALED_T_DEFAULT, ECCV16, ModelSpec
from service.gateway.triton import TritonBackend
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc

log = logging.getLogger(__name__)

GATEWAY_OVER_TRITON_GOAL = 1.3
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
_FORMATS = {"PNG": colorize_pb2.IMAGE_FORMAT_PNG, "JPEG": colorize_pb2.IMAGE_FORMAT_JPEG}
_TIMING_FIELDS = ("decode_ms", "triton_ms", "postprocess_ms", "total_ms")


@dataclass(frozen=True)
class Record:
    latency_ms: float
    code: str  # "OK" or the gRPC status name
    server: dict[str, float] | None  # the response's timings


def colorize_requests(
    images: Sequence[bytes], *, working_size: int, output_format: str
) -> list[colorize_pb2.ColorizeRequest]:
    return [
        colorize_pb2.ColorizeRequest(
            image=image,
            temperature=ANNEALED_T_DEFAULT,
            working_size=working_size,
            output_format=_FORMATS[output_format],
        )
        for image in images
    ]


async def _call(
    stub: colorize_pb2_grpc.ColorizerStub, request: colorize_pb2.ColorizeRequest, timeout_s: float
) -> Record:
    start = time.perf_counter()
    try:
        response = await stub.Colorize(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return Record((time.perf_counter() - start) * 1e3, error.code().name, None)
    latency = (time.perf_counter() - start) * 1e3
    timings = {name: float(getattr(response.timings, name)) for name in _TIMING_FIELDS}
    return Record(latency, "OK", timings)


async def colorize_load(
    target: str,
    requests: Sequence[colorize_pb2.ColorizeRequest],
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> dict[str, Any]:
    """`concurrency` workers on one channel until `max_requests` were sent or `max_seconds` passed.

    Each worker first sends one untimed warm-up request (connection, gateway threads, shm slots).
    """
    if concurrency < 1 or max_requests < 1:
        raise ValueError(f"concurrency and max_requests must be >= 1, got {concurrency}, {max_requests}")
    timeout_s = max_seconds + 60.0
    records: list[Record] = []
    issued = 0
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        stub = colorize_pb2_grpc.ColorizerStub(channel)
        await asyncio.gather(
            *(_call(stub, requests[i % len(requests)], timeout_s) for i in range(concurrency))
        )
        start = time.perf_counter()
        stop_at = start + max_seconds

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < stop_at:
                index = issued
                issued += 1
                records.append(await _call(stub, requests[index % len(requests)], timeout_s))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = [r for r in records if r.code == "OK"]
    server = {
        name: statistics.median(r.server[name] for r in ok if r.server) if ok else float("nan")
        for name in _TIMING_FIELDS
    }
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(Counter(r.code for r in records if r.code != "OK")),
        "wall_s": wall,
        "throughput": len(ok) / wall if wall > 0 else float("nan"),
        "latency_ms": summarize([r.latency_ms for r in ok]).as_dict(),
        "server_median_ms": server,
    }


async def triton_direct(
    url: str,
    spec: ModelSpec,
    requests: Sequence[dict[str, np.ndarray]],
    *,
    shared_memory: bool,
    count: int,
    max_seconds: float,
    decode: Callable[[dict[str, np.ndarray]], object] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Sequential (c=1) Triton calls through the gateway's client; returns latencies and the last outputs.

    `decode`, if given, runs on each response and is timed separately (e.g. the annealed mean).
    """
    backend = TritonBackend(url, shared_memory=shared_memory, slots=1)
    infer_ms: list[float] = []
    decode_ms: list[float] = []
    outputs: dict[str, np.ndarray] = {}
    try:
        for warm in requests[:2]:  # untimed: registers the shm regions, warms the model
            await backend.infer(spec, warm, timeout_s=60)
        stop_at = time.perf_counter() + max_seconds
        for i in range(count):
            if time.perf_counter() > stop_at:
                break
            start = time.perf_counter()
            outputs = await backend.infer(spec, requests[i % len(requests)], timeout_s=60)
            inferred = time.perf_counter()
            if decode is not None:
                decode(outputs)
            infer_ms.append((inferred - start) * 1e3)
            decode_ms.append((time.perf_counter() - inferred) * 1e3)
    finally:
        await backend.close()
    result: dict[str, Any] = {
        "model": spec.name,
        "shared_memory": shared_memory,
        "infer_ms": summarize(infer_ms).as_dict(),
    }
    if decode is not None:
        result["decode_ms"] = summarize(decode_ms).as_dict()
        result["total_ms"] = summarize([a + b for a, b in zip(infer_ms, decode_ms, strict=True)]).as_dict()
    return result, outputs


def _level(
    target: str, requests: Sequence[colorize_pb2.ColorizeRequest], concurrency: int, ctx: Context
) -> dict[str, Any]:
    level = asyncio.run(
        colorize_load(
            target,
            requests,
            concurrency=concurrency,
            max_requests=ctx.config.gateway_requests,
            max_seconds=ctx.config.gateway_seconds,
        )
    )
    lat = level["latency_ms"]
    errors = sum(level["errors"].values())
    log.info(
        "gateway c=%d: %.2f req/s, p50 %.1f ms, p99 %.1f ms, %d errors",
        concurrency, level["throughput"], lat["p50"], lat["p99"], errors,
    )  # fmt: skip
    return level


def _ratio_figure(key: str, level: dict[str, Any], direct_p50: float, fmt: str, cfg: Any) -> Figure:
    gateway_p50 = level["latency_ms"]["p50"]
    return Figure(
        key=key,
        label=f"gateway Colorize p50 ÷ Triton-direct p50 ({ECCV16.name}, {cfg.working_size}², c=1, "
        f"system shm; {cfg.request_size}² JPEG in, {fmt} out)",
        value=ratio(gateway_p50, direct_p50),
        goal=GATEWAY_OVER_TRITON_GOAL,
        direction="<=",
        context=f"gateway p50 {gateway_p50:.1f} ms, Triton-direct p50 {direct_p50:.1f} ms",
    )


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    gateway = ctx.stack.gateway(shared_memory=True)
    url = ctx.stack.triton_server().grpc_url
    direct, outputs = asyncio.run(
        triton_direct(
            url,
            ECCV16,
            [model_inputs(ECCV16, plane) for plane in ctx.l_planes],
            shared_memory=True,
            count=cfg.direct_requests,
            max_seconds=cfg.gateway_seconds * 2,
        )
    )
    direct_p50 = direct["infer_ms"]["p50"]
    requests = colorize_requests(ctx.jpegs, working_size=cfg.working_size, output_format=cfg.output_format)
    levels = [_level(gateway.target, requests, c, ctx) for c in cfg.gateway_concurrency]
    # The API's default output is PNG, whose zlib encode costs more than everything else the gateway
    # does; c=1 once more with the other format shows the gateway without it.
    other = "JPEG" if cfg.output_format == "PNG" else "PNG"
    other_requests = colorize_requests(ctx.jpegs, working_size=cfg.working_size, output_format=other)
    other_c1 = _level(gateway.target, other_requests, 1, ctx)
    in_process = stages.time_stages(
        ctx.jpegs, outputs["logits"], working_size=cfg.working_size, output_format=cfg.output_format,
        reps=cfg.stage_reps,
    )  # fmt: skip
    first = levels[0]
    split = stages.attribute(first["server_median_ms"], first["latency_ms"]["p50"], in_process)
    figures = [
        _ratio_figure("gateway_over_triton_c1", first, direct_p50, cfg.output_format, cfg),
        _ratio_figure(f"gateway_over_triton_c1_{other.lower()}", other_c1, direct_p50, other, cfg),
    ]
    out_plots = [
        plots.gateway_load(levels, ctx.out / "gateway_load.png"),
        plots.breakdown(
            split, ctx.out / "gateway_breakdown.png", "gateway Colorize at c=1: where the p50 goes"
        ),
    ]
    return {
        "settings": {
            "request": f"{cfg.request_size}² JPEG (q90) of {len(ctx.jpegs)} photos, "
            f"working size {cfg.working_size}, {cfg.output_format} out, T={ANNEALED_T_DEFAULT}",
            "bounds": f"≤ {cfg.gateway_requests} requests or {cfg.gateway_seconds:.0f} s per level",
            "gateway": "python -m service.gateway, system shared memory to Triton (make run's shape)",
        },
        "triton_direct": direct,
        "levels": levels,
        "c1_other_format": {"output_format": other, **other_c1},
        "stages_in_process_ms": in_process,
        "breakdown_c1_ms": split,
        "plots": [p.name for p in out_plots if p],
        "figures": figures_of(*figures),
    }
