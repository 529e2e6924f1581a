"""Real-time feel of the web page: the round trip of "add a hint, get the updated image" over HTTP.

Issue #17's goal: adding a hint on a 768x512 photo returns the updated image in <= 300 ms at p50,
through the HTTP API at the default working size. This plays the page's loop: one client, one
request at a time, each POST /v1/colorize carrying the photo and the hints placed so far (one more
each time, up to `--max-hints`, then it starts over), siggraph17, the photo's own format out
(JPEG) — what app.js sends; `--format png` for a PNG answer.

    python -m bench.http_hint                    # starts Triton and a gateway with its HTTP port
    python -m bench.http_hint --url http://127.0.0.1:8080   # a running gateway (`make run`)
    python -m bench.http_hint --quick            # a few requests: proves the path, measures nothing

Writes bench/results/http_hint.{json,md} (`--quick`: http_hint-quick.*, marked as not a measurement).
Sequential on purpose: it is the latency one user feels, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from bench import machine
from bench.config import MODEL_REPOSITORY, RESULTS, ROOT
from bench.report import table
from bench.stats import summarize
from service.launch.gateway import start_gateway
from service.launch.process import free_port
from service.launch.triton import TritonServer

log = logging.getLogger("bench.http_hint")

GOAL_P50_MS = 300.0
SIZE = (768, 512)
PHOTO = ROOT / "samples" / "aitzgorri.jpg"
_TIMING = re.compile(r"(\w+);dur=([\d.]+)")


@dataclass(frozen=True)
class Plan:
    requests: int
    warmup: int
    max_hints: int
    seed: int


def photo_jpeg(path: Path, size: tuple[int, int] = SIZE) -> bytes:
    """The photo cropped to the aspect of `size` and resized to it, as a quality-90 JPEG."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    target = size[0] / size[1]
    if width / height > target:
        crop = int(height * target)
        image = image.crop(((width - crop) // 2, 0, (width - crop) // 2 + crop, height))
    else:
        crop = int(width / target)
        image = image.crop((0, (height - crop) // 2, width, (height - crop) // 2 + crop))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def hint_sequence(plan: Plan, size: tuple[int, int]) -> list[list[str]]:
    """For each request, the hints placed so far: one more each time, back to one after `max_hints`."""
    rng = random.Random(plan.seed)
    sequence: list[list[str]] = []
    placed: list[str] = []
    for _ in range(plan.warmup + plan.requests):
        if len(placed) >= plan.max_hints:
            placed = []
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        placed = [*placed, f"{x},{y},#{rng.randrange(1 << 24):06x}"]
        sequence.append(placed)
    return sequence


async def measure(base: str, image: bytes, plan: Plan, output_format: str) -> dict[str, Any]:
    """Round trips (client clock) and the gateway's own stage times (Server-Timing), in ms."""
    round_trips: list[float] = []
    server: dict[str, list[float]] = {}
    async with aiohttp.ClientSession() as session:
        for i, hints in enumerate(hint_sequence(plan, SIZE)):
            form = aiohttp.FormData()
            form.add_field("image", image, filename="photo.jpg", content_type="image/jpeg")
            form.add_field("model", "siggraph17")
            if output_format:
                form.add_field("output_format", output_format)
            for hint in hints:
                form.add_field("hint", hint)
            start = time.perf_counter()
            async with session.post(f"{base}/v1/colorize", data=form) as reply:
                body = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"HTTP {reply.status}: {body[:300]!r}")
                timing = reply.headers.get("Server-Timing", "")
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if i < plan.warmup:
                continue
            round_trips.append(elapsed_ms)
            for stage, ms in _TIMING.findall(timing):
                server.setdefault(stage, []).append(float(ms))
    return {
        "round_trip_ms": summarize(round_trips).as_dict(),
        "server_ms": {stage: summarize(values).as_dict() for stage, values in server.items()},
    }


def run(base: str | None, plan: Plan, photo: Path, output_format: str = "") -> dict[str, Any]:
    image = photo_jpeg(photo)
    results: dict[str, Any] = {
        "machine": machine.describe(),
        "load_average_before": machine.load_average(),
        "photo": str(photo.relative_to(ROOT) if photo.is_relative_to(ROOT) else photo),
        "size": list(SIZE),
        "request_bytes": len(image),
        "plan": plan.__dict__,
        "goal_p50_ms": GOAL_P50_MS,
        "output_format": output_format or "the input's (JPEG), as the page asks",
    }
    if base is not None:
        results["target"] = base
        results |= asyncio.run(measure(base, image, plan, output_format))
        return results
    workdir = Path(tempfile.mkdtemp(prefix="priorlab-http-hint-"))
    triton = TritonServer.start(MODEL_REPOSITORY, workdir / "triton")
    try:
        port = free_port()
        settings = {
            "triton_url": triton.grpc_url,
            "triton_shared_memory": "1",
            "health_poll_s": "0.5",
            "http_port": str(port),
        }
        gateway = start_gateway(settings, workdir, name="http-hint-gateway", cwd=ROOT)
        try:
            results["target"] = "a gateway process started here (make run's shape: shm, decode here)"
            results |= asyncio.run(measure(f"http://127.0.0.1:{port}", image, plan, output_format))
        finally:
            gateway.stop()
    finally:
        triton.stop()
    results["load_average_after"] = machine.load_average()
    return results


def markdown(results: dict[str, Any], quick: bool) -> str:
    trip = results["round_trip_ms"]
    met = trip["p50"] <= GOAL_P50_MS
    lines = [
        "# Adding a hint through the HTTP API (bench/http_hint.py)",
        "",
        "**A --quick run: it proves the benchmark works; its numbers are no measurement.**" if quick else "",
        "",
        f"{results['size'][0]}x{results['size'][1]} JPEG ({results['request_bytes']} bytes) from "
        f"`{results['photo']}`, siggraph17 at the default working size, {results['output_format']} out; "
        "one request at a time, "
        f"1 to {results['plan']['max_hints']} hints; {trip['count']} requests after "
        f"{results['plan']['warmup']} warm-up. Target: {results['target']}.",
        "",
        f"Machine: {results['machine'].get('cpu', '?')}, load average before "
        f"{results['load_average_before']:.2f}.",
        "",
        *table(
            ["figure", "measured", "goal", ""],
            [
                [
                    "round trip p50 (ms)",
                    f"{trip['p50']:.1f}",
                    f"<= {GOAL_P50_MS:.0f}",
                    "met" if met else "**missed**",
                ]
            ],
        ),
        "",
        *table(
            ["stage (ms)", "p50", "p95", "max"],
            [["round trip (client)", f"{trip['p50']:.1f}", f"{trip['p95']:.1f}", f"{trip['max']:.1f}"]]
            + [
                [f"gateway {stage}", f"{s['p50']:.1f}", f"{s['p95']:.1f}", f"{s['max']:.1f}"]
                for stage, s in results["server_ms"].items()
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_hint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running gateway's HTTP API (default: start Triton and a gateway)")
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-hints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="", choices=["", "png", "jpeg", "webp"], help="output format")
    parser.add_argument("--quick", action="store_true", help="5 requests after 1 warm-up: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    plan = (
        Plan(5, 1, 3, args.seed)
        if args.quick
        else Plan(args.requests, args.warmup, args.max_hints, args.seed)
    )
    results = run(args.url.rstrip("/") if args.url else None, plan, args.photo, args.format)
    results["quick"] = args.quick
    name = "http_hint-quick" if args.quick else "http_hint"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results, args.quick)
    (args.out / f"{name}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
