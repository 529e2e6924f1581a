"""Parts 7-9: the service as its users meet it — a hint over HTTP, twice the capacity, a burst of huge images.

Each is its own benchmark module with its own Triton and gateway (`bench.http_hint`, issue #17's
real-time goal; `bench.overload` and `bench.memory`, issue #16's shedding and bounded-memory goals),
run as a child process (`bench.child`) so the figures land in the same report as the speed parts,
with the same ISA and load average beside them. Standalone, each writes the same files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.child import run_child
from bench.context import Context, figures_of, skipped
from bench.figures import Figure


def _child(ctx: Context, module: str, full: list[str], json_name: str, budget_s: float) -> dict[str, Any]:
    """Runs the module (quick or full), returns its JSON document or a `skipped` part."""
    arguments = ["--quick"] if ctx.config.quick else full
    arguments += ["--out", str(ctx.out)]
    budget = min(budget_s, max(30.0, ctx.seconds_left() - 30))
    started = time.time()
    child = run_child(module, arguments, budget, ctx.raw / f"{json_name}.log")
    problem = child.failure(module, budget)
    json_path = ctx.out / f"{json_name}.json"
    if problem is None and (not json_path.is_file() or json_path.stat().st_mtime < started - 1):
        problem = f"{module} wrote no {json_path}: {child.output[-800:]}"
    if problem is not None:
        return skipped(problem)
    document: dict[str, Any] = json.loads(json_path.read_text())
    document["command"] = " ".join(["python", "-m", module, *arguments[:-2]])
    document["markdown"] = str(Path(json_name).with_suffix(".md"))
    return document


def run_http_hint(ctx: Context) -> dict[str, Any]:
    name = "http_hint-quick" if ctx.config.quick else "http_hint"
    doc = _child(ctx, "bench.http_hint", [], name, 300.0)
    if "skipped" in doc:
        return doc
    trip = doc["round_trip_ms"]
    figure = Figure(
        "http_hint_p50_ms",
        "add a hint on a 768×512 photo, HTTP round trip p50 (siggraph17, default working size)",
        trip["p50"],
        doc["goal_p50_ms"],
        "<=",
        unit=" ms",
        context=f"p95 {trip['p95']:.0f} ms, {trip['count']} sequential requests",
    )
    return {"command": doc["command"], "markdown": doc["markdown"], "figures": figures_of(figure)}


def run_overload(ctx: Context) -> dict[str, Any]:
    doc = _child(ctx, "bench.overload", [], "overload", 420.0)
    if "skipped" in doc:
        return doc
    s, cap = doc["overload"], doc["capacity"]
    codes = s["codes"]
    figures = [
        Figure(
            "overload_ok_share",
            f"OK throughput at {doc['plan']['factor']:.0f}× capacity, open loop ÷ closed-loop capacity",
            s["ok_share_of_capacity"],
            0.9,
            context=f"{s['ok_per_s']:.1f} OK/s vs capacity {cap['ok_per_s']:.1f}/s; {codes}",
        ),
        Figure(
            "overload_refusal_max_ms",
            "slowest RESOURCE_EXHAUSTED answer under overload",
            s["refused_max_ms"] if s["refused_max_ms"] is not None else float("nan"),
            50.0,
            "<=",
            unit=" ms",
            context=f"p50 {s['refused_p50_ms'] or 0:.1f} ms, p99 {s['refused_p99_ms'] or 0:.1f} ms",
        ),
        Figure(
            "overload_deadline_exceeded",
            "admitted calls (deadline ≥ 2 s) that ended DEADLINE_EXCEEDED",
            float(s["deadline_exceeded_admitted"]),
            0.0,
            "<=",
            unit="",
            context=f"other codes: {s['other_codes'] or 'none'}",
        ),
    ]
    return {"command": doc["command"], "markdown": doc["markdown"], "figures": figures_of(*figures)}


def run_memory(ctx: Context) -> dict[str, Any]:
    doc = _child(ctx, "bench.memory", [], "memory", 420.0)
    if "skipped" in doc:
        return doc
    plan = doc["plan"]
    burst = f"{plan['requests']} × {plan['side']}² PNG at once"
    figures = [
        Figure(
            "memory_peak_share_of_bound",
            f"gateway peak RSS ÷ its documented bound, {burst}",
            doc["peak_mb"] / doc["bound_mb"],
            1.0,
            "<=",
            context=f"peak {doc['peak_mb']:.0f} MB, bound {doc['bound_mb']:.0f} MB, "
            f"baseline {doc['baseline_mb']:.0f} MB",
        ),
        Figure(
            "memory_after_over_baseline",
            "gateway RSS after the burst ÷ before",
            1 + doc["after_over_baseline"],
            1.25,
            "<=",
            context=f"{doc['after_mb']:.0f} MB after, {doc['baseline_mb']:.0f} MB before",
        ),
    ]
    return {"command": doc["command"], "markdown": doc["markdown"], "figures": figures_of(*figures)}
