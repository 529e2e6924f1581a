"""The gateway's memory under a burst of the largest images it accepts (issue #16, ask 2).

    .venv/bin/python -m bench.memory            # 16 concurrent 7071x7071 PNGs (the 50 M pixel limit)
    .venv/bin/python -m bench.memory --quick    # 8 concurrent 3000x3000 PNGs, a 20 M pixel budget

Starts Triton and one gateway (`bench.stack.Stack`, shared memory on, `PRIORLAB_MAX_PIXELS_IN_FLIGHT`
as given), warms it with small requests, reads the gateway's RSS (`/proc/<pid>/status`, every 20 ms)
before, during and after the burst, and checks two goals:

* the peak stays under `baseline + BYTES_PER_PIXEL x min(budget, burst pixels) + SLACK`: the pixel
  budget, not the number of requests, decides how much is decoded at once;
* RSS a few seconds after the burst is within `RETURN_GOAL` of the baseline (the pipeline frees its
  arrays and `admission.trim_heap` hands glibc's arenas back).

Writes `memory.json`, `memory.md` and `memory.png` into `bench/results/` (`bench/results/quick/`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.config import RESULTS
from bench.overload import call_colorize, custom_gateway, write_report
from bench.plots import _pyplot, _save
from bench.stack import Stack
from service.pb.priorlab.v1 import colorize_pb2

log = logging.getLogger("bench.memory")

BYTES_PER_PIXEL = 25  # measured peak of prepare + postprocess: 19-22 B per input pixel (eccv16, 256)
SLACK_MB = 300.0  # gRPC buffers (request and response bytes), thread stacks, allocator slack
RETURN_GOAL = 0.25  # RSS after the burst within 25 % of the baseline
SETTLE_S = 3.0


@dataclass(frozen=True)
class Plan:
    side: int
    requests: int
    budget: int
    timeout_s: float

    @property
    def pixels(self) -> int:
        return self.side * self.side


FULL = Plan(side=7071, requests=16, budget=100_000_000, timeout_s=900.0)  # 49,999,041 pixels each
QUICK = Plan(side=3000, requests=8, budget=20_000_000, timeout_s=300.0)


def worst_png(side: int) -> bytes:
    """A side x side RGB PNG of a few hundred KB: a smooth gradient row, repeated (decodes to full size)."""
    row = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    rgb = np.stack([row, row[::-1], np.full_like(row, 128)], axis=-1)[None].repeat(side, axis=0)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """(seconds since start, RSS MB) of a process every `period_s`."""

    def __init__(self, pid: int, period_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float]] = []
        self.start_time = time.perf_counter()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.perf_counter() - self.start_time, rss_mb(self.pid)))
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def now(self) -> float:
        return time.perf_counter() - self.start_time


def settled_rss(pid: int, seconds: float) -> float:
    """The median of RSS samples over `seconds`."""
    values = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        values.append(rss_mb(pid))
        time.sleep(0.05)
    return float(np.median(values))


async def burst(target: str, image: bytes, n: int, timeout_s: float) -> list[dict[str, Any]]:
    request = colorize_pb2.ColorizeRequest(image=image, working_size=256)
    return await asyncio.gather(*(call_colorize(target, request, timeout_s) for _ in range(n)))


def run(plan: Plan, out: Path) -> dict[str, Any]:
    image = worst_png(plan.side)
    warm = worst_png(512)
    log.info("burst image: %dx%d, %d bytes", plan.side, plan.side, len(image))
    stack = Stack(logs=out / "logs" / "memory")
    gateway = None
    try:
        gateway = custom_gateway(stack, "gateway-memory", {"max_pixels_in_flight": str(plan.budget)})
        asyncio.run(burst(gateway.target, warm, 4, 60.0))  # code paths loaded, pools allocated
        baseline = settled_rss(gateway.pid, 2.0)
        sampler = Sampler(gateway.pid)
        sampler.start()
        burst_start = sampler.now()
        calls = asyncio.run(burst(gateway.target, image, plan.requests, plan.timeout_s))
        burst_end = sampler.now()
        after = settled_rss(gateway.pid, SETTLE_S)
        sampler.stop()
    finally:
        if gateway is not None:
            gateway.stop()
        stack.close()
    samples = sampler.samples
    peak = max(mb for t, mb in samples if burst_start <= t <= burst_end + 0.5)
    in_flight = min(plan.budget, plan.requests * plan.pixels)
    if plan.pixels > plan.budget:
        in_flight = plan.pixels  # a single image above the budget runs alone
    bound = baseline + (BYTES_PER_PIXEL * in_flight) / 2**20 + SLACK_MB
    codes = [c["code"] for c in calls]
    result = {
        "plan": plan.__dict__ | {"pixels": plan.pixels, "png_bytes": len(image)},
        "baseline_mb": baseline,
        "peak_mb": peak,
        "bound_mb": bound,
        "after_mb": after,
        "after_over_baseline": after / baseline - 1,
        "peak_goal_met": peak <= bound,
        "return_goal_met": after <= baseline * (1 + RETURN_GOAL),
        "codes": {code: codes.count(code) for code in sorted(set(codes))},
        "latency_s": sorted(c["latency_ms"] / 1e3 for c in calls),
        "burst_s": burst_end - burst_start,
        "samples": [(round(t, 3), round(mb, 1)) for t, mb in samples],
        "window": [burst_start, burst_end],
    }
    return result


def markdown(r: dict[str, Any], quick: bool) -> str:
    plan = r["plan"]
    ok = "met" if r["peak_goal_met"] else "**missed**"
    back = "met" if r["return_goal_met"] else "**missed**"
    return "\n".join(
        [
            f"# Gateway memory under a burst of large images{' (quick run)' if quick else ''}",
            "",
            f"{plan['requests']} concurrent Colorize calls (eccv16, working size 256) of a "
            f"{plan['side']}x{plan['side']} PNG ({plan['pixels'] / 1e6:.1f} M pixels, "
            f"{plan['png_bytes']} bytes), "
            f"`PRIORLAB_MAX_PIXELS_IN_FLIGHT={plan['budget']}`. RSS of the gateway process.",
            "",
            "| | MB | goal |",
            "|---|---|---|",
            f"| baseline (after warm-up) | {r['baseline_mb']:.0f} | |",
            f"| peak during the burst | {r['peak_mb']:.0f} | <= {r['bound_mb']:.0f} "
            f"(baseline + {BYTES_PER_PIXEL} B x pixels in flight + {SLACK_MB:.0f} MB): {ok} |",
            f"| {SETTLE_S:.0f} s after the burst | {r['after_mb']:.0f} "
            f"({100 * r['after_over_baseline']:+.0f} %) | "
            f"within {100 * RETURN_GOAL:.0f} % of baseline: {back} |",
            "",
            f"Calls: {r['codes']}; burst {r['burst_s']:.1f} s; latencies "
            f"{', '.join(f'{s:.1f}' for s in r['latency_s'])} s (they queue for the pixel budget).",
            "",
            "![RSS over time](memory.png)",
            "",
        ]
    )


def plot(r: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    t = [s[0] for s in r["samples"]]
    mb = [s[1] for s in r["samples"]]
    ax.plot(t, mb, lw=1, label="gateway RSS")
    ax.axhline(r["bound_mb"], color="tab:red", ls="--", label="peak bound")
    ax.axhline(r["baseline_mb"] * (1 + RETURN_GOAL), color="tab:green", ls=":", label="return bound")
    ax.axvspan(*r["window"], color="0.9", label="burst")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(
        f"{r['plan']['requests']} x {r['plan']['side']}² PNG, budget {r['plan']['budget'] / 1e6:.0f} M px"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 x 3000² with a 20 M pixel budget")
    parser.add_argument("--requests", type=int, help="concurrent calls (default 16, quick 8)")
    parser.add_argument("--side", type=int, help="image side in pixels (default 7071, quick 3000)")
    parser.add_argument("--budget", type=int, help="PRIORLAB_MAX_PIXELS_IN_FLIGHT for the gateway")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results[/quick])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    plan = QUICK if args.quick else FULL
    plan = Plan(
        side=args.side or plan.side,
        requests=args.requests or plan.requests,
        budget=args.budget or plan.budget,
        timeout_s=plan.timeout_s,
    )
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    result = run(plan, out)
    write_report(out, "memory", result, markdown(result, args.quick))
    plot(result, out / "memory.png")
    log.info(
        "baseline %.0f MB, peak %.0f MB (bound %.0f), after %.0f MB (%+.0f %%); codes %s",
        result["baseline_mb"], result["peak_mb"], result["bound_mb"], result["after_mb"],
        100 * result["after_over_baseline"], result["codes"],
    )  # fmt: skip
    return 0 if result["peak_goal_met"] and result["return_goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
