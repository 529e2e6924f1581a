"""Part 6: Restore (DIP) speed, measured by `bench.dip.speed` (bench/dip/speed.py); part 6b: auto-stop.

It runs as a child process (`bench.child`: a timeout stops it and the per-config processes it starts)
with its own arguments and a wall-clock budget; its JSON and markdown land in `<results>/dip/` (a quick
run's: `<results>/dip/quick/`) and the report links them.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from bench.child import run_child
from bench.context import Context, figures_of, skipped
from bench.dip import speed
from bench.dip.common import OUT
from bench.figures import Figure
from bench.stats import ratio

MODULE = "bench.dip.speed"


def run(ctx: Context) -> dict[str, Any]:
    arguments = [*ctx.config.dip_args, "--out", str(ctx.out / "dip")]
    json_path = speed.json_path(speed.parse(arguments))  # where the child writes: its own parser says
    budget = min(ctx.config.dip_timeout_s, max(30.0, ctx.seconds_left() - 30))
    started = time.time()
    child = run_child(MODULE, arguments, budget, ctx.raw / "dip_speed.log")
    if child.returncode is None:
        return skipped(f"{MODULE} did not finish within {budget:.0f} s")
    output = child.output
    if child.returncode != 0:
        return skipped(f"{MODULE} failed ({child.returncode}): {output[-800:]}")
    if not json_path.is_file() or json_path.stat().st_mtime < started - 1:  # not an earlier run's table
        return skipped(f"{MODULE} wrote no {json_path}: {output[-800:]}")
    md_path = json_path.with_suffix(".md")
    data = json.loads(json_path.read_text())
    rows, meta = data.get("rows", []), data.get("meta", {})
    return {
        "command": " ".join(["python", "-m", MODULE, *ctx.config.dip_args]),
        "markdown": str(md_path.relative_to(ctx.out)) if md_path.is_file() else None,
        "rows": rows,
        "meta": meta,
        "figures": figures_of(*figures(rows, meta)),
    }


SPEEDUP_GOAL = 0.7  # issue #19: s/iteration <= 0.7x the reference_loop variant's, same host, same run


def figures(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[Figure]:
    """Per task: the service's default variant's s/iteration ÷ reference_loop's (the goal), and the fastest
    variant's achieved FLOP/s as a share of the same run's sgemm FLOP/s."""
    out = []
    isa = meta.get("cpu_capability", "?")
    for task in dict.fromkeys(r["task"] for r in rows):
        ran = {r["variant"]: r for r in rows if r["task"] == task and "s_per_iter_median" in r}
        if not ran:
            continue
        default, reference = ran.get("default"), ran.get("reference_loop")
        if default is not None and reference is not None:
            out.append(
                Figure(
                    f"dip_{task}_default_vs_reference_loop",
                    f"DIP {task} ({default['size']}², {meta.get('threads', '?')} threads, torch ISA {isa}): "
                    f"the service default's s/iteration ÷ reference_loop's",
                    ratio(default["s_per_iter_median"], reference["s_per_iter_median"]),
                    SPEEDUP_GOAL,
                    "<=",
                    context=f"{default['s_per_iter_median']:.3f} vs {reference['s_per_iter_median']:.3f} s "
                    f"({default.get('settings', 'default')})",
                )
            )
        best = min(ran.values(), key=lambda r: r["s_per_iter_median"])
        out.append(
            Figure(
                f"dip_{task}_flops_share",
                f"DIP {task} ({best['variant']}, {best['size']}²): achieved FLOP/s ÷ sgemm FLOP/s",
                ratio(best["achieved_gflops"], float(meta.get("sgemm_gflops") or math.nan)),
                None,
                context=f"{best['s_per_iter_median']:.3f} s/iteration, "
                f"peak RSS {best['peak_rss_mib']:.0f} MiB",
            )
        )
    return out


AUTOSTOP_MODULE = "bench.dip.quality"
REFERENCE_ITERATIONS = 3000  # the reference notebook's fixed count (docs/dip.md §5)
WORK_GOAL = 0.5  # issue #19: median total work <= 0.5x the reference's 3,000 iterations
WITHIN_GOAL = 13 / 14  # ... with the gap to the best iterate <= 0.5 dB on at least 13 of the 14 runs


def run_autostop(ctx: Context) -> dict[str, Any]:
    """The auto-stop table of bench/results/dip/quality.md, with the current default replayed.

    Recording the 14 held-out and all-pixel runs takes hours of one core (`python -m bench.dip.quality
    --only stoprules`); the default stop is replayed here on the recorded held-out curves by the
    engine's own stopper (it only reads the run, so that is where a live run stops), in seconds.
    """
    arguments = ["--only", "", "--replay", "--threads", "1"]
    if not ctx.config.quick:  # a smoke run reads the committed table and rewrites nothing
        child = run_child(AUTOSTOP_MODULE, arguments, 300.0, ctx.raw / "dip_autostop.log")
        if child.returncode != 0:
            why = child.failure(AUTOSTOP_MODULE, 300.0) or f"{AUTOSTOP_MODULE} exited {child.returncode}"
            return skipped(f"{why}: {child.output[-800:]}")
    rules = json.loads((OUT / "quality.json").read_text()).get("stoprules", {})
    if "median_work_vs_reference" not in rules:
        return skipped("bench/results/dip/quality.json has no auto-stop runs recorded with the default")
    rerun, within = rules["rerun"], rules["within_0_5_db"]
    runs = len(rules.get("runs", []))
    figures = [
        Figure(
            "dip_autostop_work",
            f"DIP auto-stop: median total iterations (held-out run + refit) ÷ the reference's fixed "
            f"{REFERENCE_ITERATIONS}",
            rules["median_work_vs_reference"],
            WORK_GOAL,
            "<=",
            context=f"median {rules['median_total_iterations']:.0f} iterations over the {rerun} of {runs} "
            "runs recorded with the default",
        ),
        Figure(
            "dip_autostop_within",
            "DIP auto-stop: share of runs within 0.5 dB of the best iterate",
            within / rerun if rerun else math.nan,
            WITHIN_GOAL,
            context=f"{within} of {rerun} recorded ({runs} in the set); max gap {rules['max_gap_db']:.2f} dB",
        ),
    ]
    return {
        "command": " ".join(["python", "-m", AUTOSTOP_MODULE, *arguments]),
        "markdown": "dip/quality.md",
        "figures": figures_of(*figures),
    }
