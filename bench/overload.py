"""Colorize at twice its capacity, open loop: the gateway sheds instead of collapsing (issue #16, ask 1).

    .venv/bin/python -m bench.overload            # capacity 30 s, then 2x capacity for 3 minutes
    .venv/bin/python -m bench.overload --quick    # capacity 8 s, then 2x for 20 s: proves it runs

Starts Triton and one gateway (`bench.stack.Stack`, shared memory on, the `make run` settings), then:

1. capacity: a closed loop of `CAPACITY_CONCURRENCY` callers sending 512x512 JPEGs (eccv16, working
   size 256); OK calls per second is the capacity;
2. overload: an open loop at `--factor` (2) x capacity, evenly spaced arrivals that do not wait for
   answers, each call with a deadline drawn in turn from `DEADLINES_S` (2, 5 and 10 s).

The goals (issue #16): OK throughput >= 90 % of capacity; every call that is not OK is
RESOURCE_EXHAUSTED, answered within 50 ms, with a `retry-after`; no admitted call with a deadline of
at least 2 s ends DEADLINE_EXCEEDED. Before admission control, this load went 146, 144, 21, then 0 OK
calls per 10 s with only DEADLINE_EXCEEDED after the first 20 s.

Writes `overload.json`, `overload.md` and `overload.png` into `bench/results/` (`bench/results/quick/`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from bench.config import EVAL_IMAGES, RESULTS, ROOT
from bench.machine import group_cpu_seconds, isa, load_average
from bench.plots import _pyplot, _save
from bench.stack import Stack
from bench.stats import percentile
from service.launch.gateway import GatewayProcess, start_gateway
from service.launch.stack import COMPUTE_NICE_DEFAULT
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc

log = logging.getLogger("bench.overload")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
]
# The gateway's Colorize slots (max_concurrent_colorize): 8 callers left the cores a quarter idle, which
# understated the capacity the overload is measured against.
CAPACITY_CONCURRENCY = 16
DEADLINES_S = (2.0, 5.0, 10.0)
WINDOW_S = 10.0
OK_SHARE_GOAL = 0.9
REFUSAL_MS_GOAL = 50.0
CPU_COLUMNS = ("gateway", "triton", "client")


@dataclass(frozen=True)
class Plan:
    capacity_s: float
    overload_s: float
    factor: float
    triton_nice: int = COMPUTE_NICE_DEFAULT


FULL = Plan(capacity_s=30.0, overload_s=180.0, factor=2.0)
QUICK = Plan(capacity_s=8.0, overload_s=20.0, factor=2.0)


def custom_gateway(stack: Stack, name: str, settings: Mapping[str, str]) -> GatewayProcess:
    """A gateway on the stack's Triton, `make run`'s shape (shm, decode here) plus `settings`.

    The caller stops it (before `stack.close()`, which then keeps its log with the others).
    """
    triton = stack.triton_server()
    values = {"triton_url": triton.grpc_url, "triton_shared_memory": "1", "health_poll_s": "0.5", **settings}
    gateway = start_gateway(values, stack.workdir, name=name, cwd=ROOT)
    log.info("%s pid %d on %s with %s", name, gateway.pid, gateway.target, dict(settings))
    return gateway


@contextlib.contextmanager
def cpu_use(groups: Mapping[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each process group (and this client) used inside the block, with its wall time.

    On a 2-core host the client, the gateway and Triton share the cores: this says where they went.
    """
    used: dict[str, float] = {}
    before = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    client, wall = time.process_time(), time.perf_counter()
    yield used
    for name, pgid in groups.items():
        used[name] = round(group_cpu_seconds(pgid) - before[name], 2)
    used["client"] = round(time.process_time() - client, 2)
    used["wall"] = round(time.perf_counter() - wall, 2)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage-collector pass in this process, the load generator, while it measures.

    Its full passes over the thousands of call records held the client's loop for tens of ms, which
    the slowest refusals then showed as the gateway's latency (issue #16 measures the gateway's).
    The few thousand cycles a run leaves (caught RPC errors) are freed afterwards.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def write_report(out: Path, name: str, result: Mapping[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown)
    log.info("wrote %s/%s.{json,md}", out, name)


async def call_colorize(
    target_or_stub: str | colorize_pb2_grpc.ColorizerStub,
    request: colorize_pb2.ColorizeRequest,
    timeout_s: float,
) -> dict[str, Any]:
    """One call: its start (perf_counter), latency, status name and the `retry-after` it carried."""
    if isinstance(target_or_stub, str):
        async with grpc.aio.insecure_channel(target_or_stub, options=CHANNEL_OPTIONS) as channel:
            return await call_colorize(colorize_pb2_grpc.ColorizerStub(channel), request, timeout_s)
    start = time.perf_counter()
    retry_after = None
    try:
        await target_or_stub.Colorize(request, timeout=timeout_s)
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
        metadata = dict(error.trailing_metadata() or ()) | dict(error.initial_metadata() or ())
        retry_after = metadata.get("retry-after")
    return {
        "start": start,
        "latency_ms": (time.perf_counter() - start) * 1e3,
        "code": code,
        "deadline_s": timeout_s,
        "retry_after": retry_after,
    }


def jpeg_512() -> bytes:
    source = sorted(EVAL_IMAGES.glob("*.jpg"))[0]
    with Image.open(source) as image:
        square = image.convert("RGB").resize((512, 512), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    square.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_request(image: bytes) -> colorize_pb2.ColorizeRequest:
    return colorize_pb2.ColorizeRequest(
        image=image, model="eccv16", working_size=256, output_format=colorize_pb2.IMAGE_FORMAT_JPEG
    )


async def capacity(target: str, request: colorize_pb2.ColorizeRequest, seconds: float) -> dict[str, Any]:
    """OK calls per second of a closed loop (the calls of the first second are warm-up, not counted)."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = colorize_pb2_grpc.ColorizerStub(channel)
        for _ in range(3):
            await call_colorize(stub, request, 30.0)
        start = time.perf_counter()
        end = start + seconds
        calls: list[dict[str, Any]] = []

        async def worker() -> None:
            while time.perf_counter() < end:
                calls.append(await call_colorize(stub, request, 30.0))

        await asyncio.gather(*(worker() for _ in range(CAPACITY_CONCURRENCY)))
    counted = [c for c in calls if c["start"] >= start + 1.0 and c["code"] == "OK"]
    span = max(c["start"] + c["latency_ms"] / 1e3 for c in counted) - (start + 1.0)
    latencies = [c["latency_ms"] for c in counted]
    return {
        "ok_per_s": len(counted) / span,
        "calls": len(calls),
        "codes": _codes(calls),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
    }


async def open_loop(
    target: str, request: colorize_pb2.ColorizeRequest, rate: float, seconds: float
) -> tuple[list[dict[str, Any]], float]:
    """Arrivals every 1/rate s that never wait for an answer; returns the calls and the start time."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = colorize_pb2_grpc.ColorizerStub(channel)
        start = time.perf_counter()
        tasks = []
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            deadline = DEADLINES_S[i % len(DEADLINES_S)]
            tasks.append(asyncio.create_task(call_colorize(stub, request, deadline)))
        calls = list(await asyncio.gather(*tasks))
    return calls, start


def _codes(calls: list[dict[str, Any]]) -> dict[str, int]:
    codes = [c["code"] for c in calls]
    return {code: codes.count(code) for code in sorted(set(codes))}


def summarize(calls: list[dict[str, Any]], start: float, seconds: float, cap: float) -> dict[str, Any]:
    windows = []
    for w in range(int(seconds // WINDOW_S) or 1):
        lo, hi = start + w * WINDOW_S, start + min(seconds, (w + 1) * WINDOW_S)
        inside = [c for c in calls if lo <= c["start"] < hi]
        windows.append({"t": w * WINDOW_S, "seconds": hi - lo, **_codes(inside)})
    done = [c["start"] + c["latency_ms"] / 1e3 for c in calls if c["code"] == "OK"]
    ok_rate = len(done) / max(1e-9, max(done, default=start) - start) if done else 0.0
    refused = [c for c in calls if c["code"] == "RESOURCE_EXHAUSTED"]
    refused_ms = [c["latency_ms"] for c in refused]
    other = {k: v for k, v in _codes(calls).items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
    late_admitted = [
        c for c in calls if c["code"] == "DEADLINE_EXCEEDED" and c["deadline_s"] >= 2.0
    ]  # refusals are answered at once, so a DEADLINE_EXCEEDED call was admitted
    ok_latencies = [c["latency_ms"] for c in calls if c["code"] == "OK"]
    return {
        "calls": len(calls),
        "codes": _codes(calls),
        "windows": windows,
        "ok_per_s": ok_rate,
        "ok_share_of_capacity": ok_rate / cap if cap else 0.0,
        "refused_p50_ms": percentile(refused_ms, 50) if refused_ms else None,
        "refused_p99_ms": percentile(refused_ms, 99) if refused_ms else None,
        "refused_max_ms": max(refused_ms) if refused_ms else None,
        "refused_with_retry_after": sum(1 for c in refused if c["retry_after"] is not None),
        "retry_after_values": sorted({str(c["retry_after"]) for c in refused}),
        "ok_p50_ms": percentile(ok_latencies, 50) if ok_latencies else None,
        "ok_p99_ms": percentile(ok_latencies, 99) if ok_latencies else None,
        "other_codes": other,
        "deadline_exceeded_admitted": len(late_admitted),
    }


def goals(s: Mapping[str, Any]) -> dict[str, bool]:
    refused_max = s["refused_max_ms"]
    return {
        "ok_throughput": s["ok_share_of_capacity"] >= OK_SHARE_GOAL,
        "only_resource_exhausted": not s["other_codes"],
        "refusals_fast": refused_max is None or refused_max <= REFUSAL_MS_GOAL,
        "retry_after_sent": s["refused_with_retry_after"] == s["codes"].get("RESOURCE_EXHAUSTED", 0),
        "no_deadline_exceeded": s["deadline_exceeded_admitted"] == 0,
    }


def run(plan: Plan, out: Path) -> dict[str, Any]:
    request = make_request(jpeg_512())
    stack = Stack(logs=out / "logs" / "overload", triton_nice=plan.triton_nice)
    gateway = None
    try:
        gateway = custom_gateway(stack, "gateway-overload", {})
        groups = {"gateway": gateway.pid, "triton": stack.triton_server().pid}
        load_before = load_average()
        with cpu_use(groups) as cap_cpu:
            cap = asyncio.run(capacity(gateway.target, request, plan.capacity_s))
        rate = plan.factor * cap["ok_per_s"]
        log.info(
            "capacity %.1f OK/s; open loop at %.1f req/s for %.0f s", cap["ok_per_s"], rate, plan.overload_s
        )
        with cpu_use(groups) as over_cpu, collector_paused():
            calls, start = asyncio.run(open_loop(gateway.target, request, rate, plan.overload_s))
    finally:
        if gateway is not None:
            gateway.stop()
        stack.close()
    summary = summarize(calls, start, plan.overload_s, cap["ok_per_s"])
    return {
        "plan": plan.__dict__,
        "isa": isa(),
        "load_average": {"before": load_before, "after": load_average()},
        "cpu_s": {"capacity": cap_cpu, "overload": over_cpu},
        "deadlines_s": DEADLINES_S,
        "capacity": cap,
        "rate_per_s": rate,
        "overload": summary,
        "goals": goals(summary),
        "timeline": [(round(c["start"] - start, 3), round(c["latency_ms"], 1), c["code"]) for c in calls],
    }


def markdown(r: Mapping[str, Any], quick: bool) -> str:
    s, cap, g = r["overload"], r["capacity"], r["goals"]

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    rows = [
        f"| OK throughput | {s['ok_per_s']:.1f}/s = {100 * s['ok_share_of_capacity']:.0f} % of capacity | "
        f">= {100 * OK_SHARE_GOAL:.0f} %: {mark(g['ok_throughput'])} |",
        f"| calls not OK | {sum(v for k, v in s['codes'].items() if k != 'OK')}: {s['codes']} | "
        f"all RESOURCE_EXHAUSTED: {mark(g['only_resource_exhausted'])} |",
        f"| refusal latency p50 / p99 / max | {ms(s['refused_p50_ms'])} / {ms(s['refused_p99_ms'])} / "
        f"{ms(s['refused_max_ms'])} ms | <= {REFUSAL_MS_GOAL:.0f} ms: {mark(g['refusals_fast'])} |",
        f"| refusals with `retry-after` | {s['refused_with_retry_after']} "
        f"(values {', '.join(s['retry_after_values'])}) "
        f"| all: {mark(g['retry_after_sent'])} |",
        f"| admitted calls ending DEADLINE_EXCEEDED (deadline >= 2 s) | {s['deadline_exceeded_admitted']} | "
        f"0: {mark(g['no_deadline_exceeded'])} |",
        f"| OK latency p50 / p99 | {ms(s['ok_p50_ms'])} / {ms(s['ok_p99_ms'])} ms | |",
    ]
    cpu_rows = "\n".join(
        f"| {phase} | {use['wall']:.0f} | "
        + " | ".join(f"{use[name]:.1f} ({100 * use[name] / use['wall']:.0f} %)" for name in CPU_COLUMNS)
        + f" | {sum(use[name] for name in CPU_COLUMNS) / use['wall']:.2f} |"
        for phase, use in r["cpu_s"].items()
    )
    windows = "\n".join(
        f"| {w['t']:.0f} | {w.get('OK', 0)} | {w.get('RESOURCE_EXHAUSTED', 0)} "
        f"| {w.get('DEADLINE_EXCEEDED', 0)} |"
        for w in s["windows"]
    )
    plan = r["plan"]
    deadlines = ", ".join(f"{d:.0f}" for d in r["deadlines_s"])
    return f"""# Colorize at {plan["factor"]:.0f}x capacity, open loop{" (quick run)" if quick else ""}

512x512 JPEG, eccv16 at working size 256, JPEG out. Capacity: a closed loop of {CAPACITY_CONCURRENCY}
callers for {plan["capacity_s"]:.0f} s: {cap["ok_per_s"]:.1f} OK/s (p50 {cap["p50_ms"]:.0f} ms). Then
{r["rate_per_s"]:.1f} req/s for {plan["overload_s"]:.0f} s, evenly spaced, deadlines {deadlines} s
in turn. Triton's niceness (in the bench's session): {plan.get("triton_nice", 0)}.

| measure | value | goal |
|---|---|---|
{chr(10).join(rows)}

CPU seconds per phase ({r["isa"]}; load average {r["load_average"]["before"]} before,
{r["load_average"]["after"]} after; the client runs on the same cores):

| phase | wall s | {" | ".join(CPU_COLUMNS)} | cores busy |
|---|---|{"---|" * len(CPU_COLUMNS)}---|
{cpu_rows}

Calls per {WINDOW_S:.0f} s window of arrival:

| t (s) | OK | RESOURCE_EXHAUSTED | DEADLINE_EXCEEDED |
|---|---|---|---|
{windows}

![per-second outcomes](overload.png)
"""


def plot(r: Mapping[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    seconds = int(r["plan"]["overload_s"]) + 1
    for code, colour in (
        ("OK", "tab:green"),
        ("RESOURCE_EXHAUSTED", "tab:orange"),
        ("DEADLINE_EXCEEDED", "tab:red"),
    ):
        counts = [0] * seconds
        for t, _, c in r["timeline"]:
            if c == code and int(t) < seconds:
                counts[int(t)] += 1
        ax.plot(range(seconds), counts, lw=1, color=colour, label=code)
    ax.axhline(r["capacity"]["ok_per_s"], color="k", ls="--", lw=1, label="capacity")
    ax.set_xlabel("arrival second")
    ax.set_ylabel("calls per second")
    ax.set_title(f"open loop at {r['rate_per_s']:.1f} req/s ({r['plan']['factor']:.0f}x capacity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 s capacity, 20 s overload")
    parser.add_argument("--factor", type=float, help="offered load / capacity (default 2)")
    parser.add_argument("--seconds", type=float, help="overload duration (default 180, quick 20)")
    parser.add_argument(
        "--triton-nice",
        type=int,
        default=COMPUTE_NICE_DEFAULT,
        help=f"Triton's niceness, in our session (default {COMPUTE_NICE_DEFAULT}, as make run)",
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results[/quick])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    plan = QUICK if args.quick else FULL
    plan = Plan(
        plan.capacity_s, args.seconds or plan.overload_s, args.factor or plan.factor, args.triton_nice
    )
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    result = run(plan, out)
    write_report(out, "overload", result, markdown(result, args.quick))
    plot(result, out / "overload.png")
    log.info("%s", json.dumps({k: v for k, v in result["overload"].items() if k != "windows"}))
    log.info("goals %s", result["goals"])
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
