"""`python -m bench`: every benchmark part in one process tree, then JSON + REPORT.md + PNG plots.

    .venv/bin/python -m bench                  # full run, < 30 min on 2 cores -> bench/results/
    .venv/bin/python -m bench --quick          # ~2 min smoke run, tiny settings -> bench/results/quick/
    .venv/bin/python -m bench --only kernels   # one part (or a comma list); others kept from the last run

Triton and the gateways are started here on free 127.0.0.1 ports and stopped by PID when the run
ends, also on Ctrl-C or SIGTERM. Results are written after every part, so a failure keeps the rest.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import machine, report, triton_stats
from bench.config import PARTS, RESULTS, BenchConfig
from bench.context import Context
from bench.figures import format_value, goal_text, verdict
from bench.stack import Stack

log = logging.getLogger("bench")

MODULES = {
    "perf_analyzer": "bench.sweep",
    "gateway": "bench.load",
    "gateway_overhead": "bench.gateway_overhead",
    "baseline": "bench.baseline",
    "kernels": "bench.kernels",
    "placement": "bench.placement",
    "dip": "bench.dip_hook",
    "autostop": "bench.dip_hook:run_autostop",
    "http_hint": "bench.service_parts:run_http_hint",
    "overload": "bench.service_parts:run_overload",
    "memory": "bench.service_parts:run_memory",
}


def clean(value: Any) -> Any:
    """NaN/inf -> None, recursively, so the JSON is standard (json.dumps would write bare NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _parts(only: str | None) -> list[str]:
    if not only:
        return list(PARTS)
    chosen = [p.strip() for p in only.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    return [p for p in PARTS if p in chosen]


def _served() -> dict[str, Any]:
    from colorizers.weights import DEFAULT, REGISTRY

    checkpoint = REGISTRY[DEFAULT["eccv16"]]
    return {"checkpoint": checkpoint.name, "trained": checkpoint.trained, "width": checkpoint.width}


def write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = clean(results)
    (out / "results.json").write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    (out / "REPORT.md").write_text(report.render(document))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally that stops the servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny settings (~2 min)")
    parser.add_argument("--only", help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results[/quick])")
    parser.add_argument("--budget-min", type=float, help="wall-clock budget (default 29 full, 8 quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    config = BenchConfig.smoke() if args.quick else BenchConfig.full()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    parts = _parts(args.only)
    budget_s = 60 * (args.budget_min or (8 if args.quick else 29))
    signal.signal(signal.SIGTERM, _terminate)

    previous = out / "results.json"
    results: dict[str, Any] = {}
    if args.only and previous.is_file():
        results = json.loads(previous.read_text())
        if results.get("quick") != config.quick:
            results = {}
    results.update(
        generated=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        quick=config.quick,
        machine=machine.describe(),
        served={**results.get("served", {}), **_served()},
    )
    results.setdefault("parts", {})
    stack = Stack(logs=out / "raw" / "logs")
    ctx = Context(config, out, stack, deadline=time.monotonic() + budget_s)
    try:
        for name in parts:
            log.info("== part %s (%.0f s left)", name, ctx.seconds_left())
            started, load_before, clock = datetime.datetime.now(), machine.load_average(), time.monotonic()
            try:
                module, _, function = MODULES[name].partition(":")
                part = getattr(importlib.import_module(module), function or "run")(ctx)
            except Exception as exc:  # one broken part must not cost the others' results
                log.exception("part %s failed", name)
                part = {"error": f"{type(exc).__name__}: {exc}", "figures": []}
            part.update(
                isa=machine.isa(),  # parts kept from an earlier run (--only) keep the host they ran on
                date=started.strftime("%Y-%m-%d"),
                started=started.strftime("%H:%M:%S"),
                seconds=time.monotonic() - clock,
                load_before=load_before,
                load_after=machine.load_average(),
            )
            if name == "kernels" and "model" in part:
                results["served"]["conv_gflop"] = part["model"]["conv_gflop"]
            results["parts"][name] = part
            results["parts"] = {p: results["parts"][p] for p in PARTS if p in results["parts"]}
            if stack.triton is not None:
                results["triton_version"] = triton_stats.server_version(stack.triton.grpc_url)
            write(out, results)
    finally:
        stack.close()
    kind = "QUICK: noisy smoke run" if config.quick else "full run"
    print(f"\nwrote {out / 'REPORT.md'} and results.json ({kind})")
    for figure in report.all_figures(clean(results)):
        print(
            f"  {format_value(figure['value'], figure.get('unit', '')):>10}  goal {goal_text(figure):<8} "
            f"{verdict(figure).strip('*'):<12} {figure['label']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
