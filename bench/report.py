"""`REPORT.md` from a results document (the JSON `python -m bench` writes): pure, no measuring."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from bench.figures import format_value, goal_text, verdict

TITLES = {
    "perf_analyzer": "1. Triton models under perf_analyzer",
    "gateway": "2. Gateway under load",
    "baseline": "3. Against the authors' demo pipeline",
    "kernels": "4. Kernels",
    "placement": "5. Decode placement",
    "dip": "6. Restore (DIP) speed",
    "gateway_overhead": "2b. Gateway overhead against the bare codec",
    "autostop": "6b. Restore (DIP) automatic stopping",
    "http_hint": "7. A hint over HTTP (the web page's loop)",
    "overload": "8. Twice the capacity, open loop (shedding)",
    "memory": "9. A burst of the largest images (memory)",
}


def _ms(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table and the blank line after it: every report here, bench.dip's included."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def all_figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every part's figures, each with the host it was measured on: ISA and the part's load average.

    The ISA is the part's own (a part kept from an earlier `--only` run may come from another host).
    """
    return [
        {
            **f,
            "host": f"{part.get('isa', 'ISA not recorded')}, {part.get('date', 'earlier run')}, "
            f"load {part.get('load_before', '?')} → {part.get('load_after', '?')}",
        }
        for part in results.get("parts", {}).values()
        for f in part.get("figures", [])
    ]


def figures_table(figures: Sequence[dict[str, Any]]) -> list[str]:
    return table(
        ("figure", "value", "goal", "verdict", "ISA, load average", "context (absolute numbers, noisy)"),
        (
            (
                f["label"],
                format_value(f["value"], f.get("unit", "")),
                goal_text(f),
                verdict(f),
                f.get("host", "?"),
                f.get("context", ""),
            )
            for f in figures
        ),
    )


def machine_lines(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    served = results.get("served", {})
    return [
        f"- **Machine**: {m.get('cpu', '?')} ({m.get('isa', '?')}), {m.get('cores', '?')} cores "
        f"({m.get('usable_cores', '?')} usable), {m.get('memory_gib', '?')} GiB, "
        f"{m.get('os', '?')} (kernel {m.get('kernel', '?')}), "
        f"Python {m.get('python', '?')}",
        f"- **Software**: Triton {results.get('triton_version', '?')} (nvidia-pytriton's build, "
        f"Python backend hosting onnxruntime), {packages}",
        f"- **Served model**: checkpoint `{served.get('checkpoint', '?')}` "
        f"({'trained' if served.get('trained') else 'UNTRAINED: speed figures only'}), "
        f"width {served.get('width', '?')}"
        + (
            f", {format_value(served['conv_gflop'])} GFLOP of convolutions per 256² image"
            if "conv_gflop" in served
            else ""
        ),
    ]


def _perf_analyzer(part: dict[str, Any]) -> list[str]:
    s = part.get("settings", {})
    lines = [
        f"perf_analyzer {part.get('perf_analyzer_version', '?')}, one run per level: "
        f"`--concurrency-range c:c -s {s.get('stability_percentage')} --measurement-interval "
        f"{s.get('measurement_interval_ms')} --max-trials {s.get('max_trials')}`, "
        f"`--input-data` = {s.get('inputs')}; with `--shared-memory system` for the shm rows. "
        "Dynamic batch = inferences ÷ executions from Triton's statistics API around each run. "
        "CSVs: `perf_analyzer/`.",
        "",
    ]
    rows = []
    for series in part.get("series", []):
        for r in series["rows"]:
            server = r["server"]
            histogram = ", ".join(f"{b}:{n}" for b, n in server.get("batch_histogram", {}).items())
            rows.append(
                (
                    series["model"],
                    "system shm" if series["shared_memory"] else "gRPC",
                    int(r["concurrency"]),
                    format_value(r["throughput"]),
                    _ms(r["p50_us"] / 1e3),
                    _ms(r["p95_us"] / 1e3),
                    _ms(r["p99_us"] / 1e3),
                    format_value(server["dynamic_batch"]),
                    histogram,
                    {True: "yes", False: "**no**", None: "not checked"}[r.get("stable")],
                )
            )
    lines += table(
        (
            "model",
            "transport",
            "c",
            "infer/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "dyn. batch",
            "batch:executions",
            "stable (-s)",
        ),
        rows,
    )
    return lines


def _gateway(part: dict[str, Any]) -> list[str]:
    s = part.get("settings", {})
    lines = [f"Requests: {s.get('request')}; {s.get('bounds')}; gateway: {s.get('gateway')}.", ""]
    rows = []
    for lv in part.get("levels", []):
        lat, server = lv["latency_ms"], lv["server_median_ms"]
        errors = ", ".join(f"{k} {v}" for k, v in lv["errors"].items()) or "0"
        rows.append(
            (
                lv["concurrency"],
                lv["ok"],
                errors,
                format_value(lv["throughput"]),
                _ms(lat["p50"]),
                _ms(lat["p95"]),
                _ms(lat["p99"]),
                f"{_ms(server['decode_ms'])} / {_ms(server['triton_ms'])} / {_ms(server['postprocess_ms'])}",
            )
        )
    lines += table(
        (
            "c",
            "ok",
            "errors",
            "Colorize/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "server decode / Triton / post ms (median)",
        ),
        rows,
    )
    direct = part.get("triton_direct", {}).get("infer_ms", {})
    lines += [
        f"Triton direct (same model and working size, the gateway's client, system shm, c=1): "
        f"p50 {_ms(direct.get('p50'))} ms, p95 {_ms(direct.get('p95'))} ms "
        f"over {direct.get('count', 0)} calls.",
        "",
        "Where the gateway's c=1 p50 goes (the response's decode / Triton / postprocess medians, split by "
        "the stages timed in process on the same images; the rest is gRPC transfer and scheduling):",
        "",
    ]
    split = part.get("breakdown_c1_ms", {})
    total = sum(split.values()) or math.nan
    lines += table(
        ("stage", "ms", "share"), ((k, _ms(v), f"{100 * v / total:.0f}%") for k, v in split.items())
    )
    stages = part.get("stages_in_process_ms", {})
    lines += ["In-process stage medians (ms): " + ", ".join(f"{k} {_ms(v)}" for k, v in stages.items()), ""]
    return lines


def _baseline(part: dict[str, Any]) -> list[str]:
    s = part.get("settings", {})
    rate = part.get("images_per_s", {})
    return [
        f"Images: {s.get('images')}; weights {s.get('weights')}; torch threads {s.get('torch_threads')}.",
        "",
        *table(("pipeline", "images/s"), ((k, format_value(v)) for k, v in rate.items())),
    ]


def _kernels(part: dict[str, Any]) -> list[str]:
    lab = part.get("lab", {})
    model = part.get("model", {})
    ms = model.get("ms", {})
    gflops = model.get("gflops", {})
    sgemm = part.get("sgemm_gflops", {})
    lines = [
        f"Lab on {lab.get('image')}: "
        + ", ".join(f"{k} {_ms(v)} ms" for k, v in lab.get("ms", {}).items())
        + ".",
        "",
        f"Annealed mean {format_value(part.get('annealed_mean_ms'))} ms per 313×64×64 tensor.",
        "",
        "sgemm: " + ", ".join(f"{k} {format_value(v)} GFLOP/s" for k, v in sgemm.items()) + ".",
        "",
    ]
    lines += table(
        ("colorizer inference (batch 1)", "ms", "GFLOP/s"),
        ((k, _ms(ms.get(k)), format_value(gflops.get(k))) for k in ms),
    )
    return lines


def _placement(part: dict[str, Any]) -> list[str]:
    lines = table(
        ("variant (Triton-direct, c=1)", "Triton call p50 ms", "decode p50 ms", "total p50 ms"),
        (
            (name, _ms(r["infer_ms"]["p50"]), _ms(r["decode_ms"]["p50"]), _ms(r["total_ms"]["p50"]))
            for name, r in part.get("direct", {}).items()
        ),
    )
    if part.get("end_to_end"):
        lines += table(
            ("gateway (end to end, c=1)", "p50 ms", "p95 ms"),
            (
                (k, _ms(v["latency_ms"]["p50"]), _ms(v["latency_ms"]["p95"]))
                for k, v in part["end_to_end"].items()
            ),
        )
    lines += [f"- {deployment}: {choice}" for deployment, choice in part.get("recommendation", {}).items()]
    return [*lines, ""]


def _dip(part: dict[str, Any]) -> list[str]:
    lines = [f"Command: `{part.get('command')}`."]
    if part.get("markdown"):
        lines.append(f"Full table: [{part['markdown']}]({part['markdown']}).")
    lines.append("")
    lines += table(
        ("task", "variant", "size", "s/iteration", "peak RSS MiB", "GFLOP/s"),
        (
            (
                r["task"],
                r["variant"],
                r["size"],
                f"{r['s_per_iter_median']:.3f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{r['achieved_gflops']:.1f}",
            )
            for r in part.get("rows", [])
        ),
    )
    return lines


SECTIONS = {
    "perf_analyzer": _perf_analyzer,
    "gateway": _gateway,
    "baseline": _baseline,
    "kernels": _kernels,
    "placement": _placement,
    "dip": _dip,
}


def _linked(part: dict[str, Any]) -> list[str]:
    """A part measured by its own module: the command and its own report."""
    lines = (
        [
            f"`{part['command']}`"
            + (f"; its report: [{part['markdown']}]({part['markdown']})" if part.get("markdown") else "")
            + ".",
            "",
        ]
        if part.get("command")
        else []
    )
    return lines


def render(results: dict[str, Any]) -> str:
    quick = results.get("quick", False)
    lines = [
        "# priorlab benchmark report",
        "",
        f"Generated by `python -m bench{' --quick' if quick else ''}` on {results.get('generated', '?')}"
        + (" — a **quick smoke run** (tiny settings): do not draw conclusions from it." if quick else "."),
        "Every figure is a ratio of two quantities measured in the same run; absolute times are context "
        "only (this 2-core machine is shared, see the load averages per part).",
        "",
        *machine_lines(results),
        "",
        "## Figures",
        "",
        *figures_table(all_figures(results)),
    ]
    for name, part in results.get("parts", {}).items():
        lines += [f"## {TITLES.get(name, name)}", ""]
        timing = (
            f"_Run {part.get('started', '?')}, {part.get('seconds', math.nan):.0f} s, load average "
            f"{part.get('load_before', '?')} → {part.get('load_after', '?')}._"
        )
        lines += [timing, ""]
        if part.get("skipped"):
            lines += [f"Skipped: {part['skipped']}", ""]
            continue
        if part.get("error"):
            lines += [f"**Failed**: {part['error']}", ""]
            continue
        lines += SECTIONS.get(name, _linked)(part)
        for note in part.get("notes", []):
            lines.append(f"- note: {note}")
        for plot in part.get("plots", []):
            lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines).rstrip() + "\n"
