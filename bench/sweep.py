"""Part 1: perf_analyzer against every served model, concurrency 1..4, with and without system shm.

One perf_analyzer run per (model, transport, concurrency), so Triton's statistics before and after
give that level's achieved dynamic batch (inferences ÷ executions) and batch-size histogram. Inputs
are the L planes of real photos (`--input-data`). A level that cannot stabilise within the trial
budget on a busy machine is measured once more with the stability check off and flagged unstable.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import inputs, perf_analyzer, plots, triton_stats
from bench.context import Context, figures_of, skipped
from bench.figures import Figure
from bench.perf_analyzer import Installation
from contract import DEFAULT_MODEL, MODELS, ModelSpec

log = logging.getLogger(__name__)

DYNAMIC_BATCH_GOAL = 1.8
UNCHECKED = 1000  # a stability percentage no measurement fails: the check is off
_UNSTABLE = "stable measurement"  # perf_analyzer: "Failed to obtain stable measurement ..."


def _measure(
    ctx: Context, pa: Installation, url: str, spec: ModelSpec, data: Path, shm: bool, concurrency: int
) -> dict[str, Any]:
    cfg = ctx.config
    mode = "shm" if shm else "grpc"
    csv_path = ctx.raw / "perf_analyzer" / f"{spec.name}_{mode}_c{concurrency}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    args = [
        str(pa.binary),
        *("-m", spec.name, "-u", url, "-i", "grpc", "--input-data", str(data)),
        *("--concurrency-range", f"{concurrency}:{concurrency}"),
        *("--measurement-interval", str(cfg.pa_interval_ms), "-f", str(csv_path)),
    ]
    if shm:
        size = inputs.output_bytes(spec, cfg.working_size)
        args += ["--shared-memory", "system", "--output-shared-memory-size", str(size)]
    attempts = [["-s", str(cfg.pa_stability), "--max-trials", str(cfg.pa_max_trials)]]
    if cfg.pa_stability < UNCHECKED:
        attempts.append(["-s", str(UNCHECKED), "--max-trials", "3"])  # check off: the numbers, flagged
    # True: passed the -s check; False: failed it, measured with the check off; None: never checked.
    stable: bool | None = True if cfg.pa_stability < UNCHECKED else None
    output = ""
    before = triton_stats.snapshot(url, spec.name)
    for attempt, extra in enumerate(attempts):
        csv_path.unlink(missing_ok=True)
        timeout = (int(extra[-1]) + 4) * cfg.pa_interval_ms / 1000 + 60
        result = subprocess.run(
            args + extra, env=pa.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        output = result.stdout + result.stderr
        log_path = ctx.raw / "perf_analyzer" / f"{spec.name}_{mode}_c{concurrency}_{attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(output)
        if result.returncode == 0 and csv_path.is_file():
            break
        if _UNSTABLE not in output:
            raise RuntimeError(f"perf_analyzer failed ({result.returncode}): {output[-1500:]}")
        stable = False
    else:
        raise RuntimeError(f"perf_analyzer never produced a result: {output[-1500:]}")
    server = triton_stats.snapshot(url, spec.name) - before
    rows = perf_analyzer.parse_csv(csv_path.read_text())
    if not rows:
        raise RuntimeError(f"perf_analyzer wrote no rows to {csv_path}")
    return {**rows[0], "stable": stable, "server": server.as_dict()}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One CSV per (model, transport): perf_analyzer's columns plus the achieved dynamic batch."""
    keys = [k for k in rows[0] if k != "server"] + ["dynamic_batch", "inferences", "executions"]
    lines = [",".join(keys)]
    for row in rows:
        values = {
            **row,
            "dynamic_batch": row["server"]["dynamic_batch"],
            "inferences": row["server"]["inference_count"],
            "executions": row["server"]["execution_count"],
        }
        lines.append(",".join(str(values[k]) for k in keys))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def run(ctx: Context) -> dict[str, Any]:
    try:
        pa = perf_analyzer.install()
        version = pa.version()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return skipped(f"perf_analyzer is not available: {exc}")
    url = ctx.stack.triton_server().grpc_url
    served = triton_stats.ready_models(url)
    served.sort(key=lambda name: name != DEFAULT_MODEL)  # the reference model first, then the others
    part_end = time.monotonic() + ctx.config.pa_budget_s
    notes = [
        f"{name}: served but not in contract.MODELS, so no inputs to build"
        for name in served
        if name not in MODELS
    ]
    series: list[dict[str, Any]] = []
    measured = [name for name in served if name in MODELS]
    remaining = 2 * len(measured)  # (model, transport) series still to run
    for name in measured:
        spec = MODELS[name]
        data = inputs.write_input_data(ctx.raw / f"input_data_{name}.json", spec, ctx.l_planes)
        for shm in (False, True):
            # An equal share of what is left per series, so every served model gets its rows (one model
            # spending the whole budget left siggraph17 out of a report); a fast one passes on its rest.
            stop_at = time.monotonic() + (part_end - time.monotonic()) / remaining
            remaining -= 1
            rows = []
            for concurrency in ctx.config.pa_concurrency:
                if time.monotonic() > stop_at:  # the part's budget keeps the run under 20 minutes
                    notes.append(
                        f"{name} shm={shm} c={concurrency}: not run, the part's time budget was spent"
                    )
                    break
                try:
                    row = _measure(ctx, pa, url, spec, data, shm, concurrency)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one model must not sink the part
                    notes.append(f"{name} shm={shm} c={concurrency}: {exc}"[:400])
                    log.warning("perf_analyzer %s shm=%s c=%d failed: %s", name, shm, concurrency, exc)
                    break
                log.info(
                    "perf_analyzer %s shm=%s c=%d: %.1f infer/s p95 %.1f ms batch %.2f%s",
                    name,
                    shm,
                    concurrency,
                    row["throughput"],
                    row["p95_us"] / 1e3,
                    row["server"]["dynamic_batch"],
                    {True: "", False: " (unstable)", None: " (stability not checked)"}[row["stable"]],
                )
                rows.append(row)
            if rows:
                _write_csv(ctx.out / "perf_analyzer" / f"{name}_{'shm' if shm else 'grpc'}.csv", rows)
                series.append({"model": name, "shared_memory": shm, "rows": rows})
    plot = plots.throughput_latency(series, ctx.out / "perf_analyzer_throughput_latency.png")
    figures = []
    for entry in series:
        if entry["model"] != DEFAULT_MODEL or not entry["rows"]:
            continue
        top = entry["rows"][-1]
        transport = "system shm" if entry["shared_memory"] else "plain gRPC"
        figures.append(
            Figure(
                key=f"dynamic_batch_{'shm' if entry['shared_memory'] else 'grpc'}",
                label=f"achieved dynamic batch (inferences ÷ executions), {entry['model']}, "
                f"perf_analyzer c={int(top['concurrency'])}, {transport}",
                value=float(top["server"]["dynamic_batch"]),
                goal=DYNAMIC_BATCH_GOAL,
                direction=">=",
                unit="",
                context=f"{top['server']['inference_count']} inferences in "
                f"{top['server']['execution_count']} executions; {top['throughput']:.1f} infer/s, "
                f"p95 {top['p95_us'] / 1e3:.1f} ms"
                + ("; unstable measurement" if top["stable"] is False else ""),
            )
        )
    if not figures:
        figures.append(
            Figure(
                "dynamic_batch_grpc", "achieved dynamic batch at c=4", math.nan, DYNAMIC_BATCH_GOAL, ">=", ""
            )
        )
    return {
        "perf_analyzer_version": version,
        "settings": {
            "concurrency": list(ctx.config.pa_concurrency),
            "measurement_interval_ms": ctx.config.pa_interval_ms,
            "stability_percentage": ctx.config.pa_stability,
            "max_trials": ctx.config.pa_max_trials,
            "inputs": f"L of {len(ctx.l_planes)} photos at {ctx.config.working_size}²",
        },
        "series": series,
        "notes": notes,
        "plots": [plot.name] if plot else [],
        "figures": figures_of(*figures),
    }
