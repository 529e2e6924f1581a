"""Part 6: Restore (DIP) speed, measured by `bench.dip.speed` (bench/dip/speed.py).

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
