"""Part 6: Restore (DIP) speed, measured by `bench/dip/speed.py` when it exists (owned by the Restore work).

It runs as a child process (its own session, so a timeout stops it and the per-config processes it
starts, by its process-group id) with its own arguments and a wall-clock budget; its JSON and
markdown land in `<results>/dip/` and the report links them. Absent script: the part is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from bench.config import ROOT
from bench.context import Context, figures_of, skipped
from bench.figures import Figure

SCRIPT = ROOT / "bench" / "dip" / "speed.py"


def run(ctx: Context) -> dict[str, Any]:
    if not SCRIPT.is_file():
        return skipped(f"{SCRIPT.relative_to(ROOT)} does not exist yet")
    out = ctx.out / "dip"
    budget = min(ctx.config.dip_timeout_s, max(30.0, ctx.seconds_left() - 30))
    started = time.time()
    command = [sys.executable, str(SCRIPT), *ctx.config.dip_args, "--out", str(out)]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return skipped(f"bench/dip/speed.py did not finish within {budget:.0f} s")
    finally:
        if process.poll() is None:  # interrupted: leave no DIP process behind
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    ctx.raw.mkdir(parents=True, exist_ok=True)
    (ctx.raw / "dip_speed.log").write_text(output)
    if process.returncode != 0:
        return skipped(f"bench/dip/speed.py failed ({process.returncode}): {output[-800:]}")
    # Where it writes has changed before (speed_quick.json, quick/speed.json): take what this run wrote.
    written = sorted(
        (p for p in out.rglob("*.json") if p.stat().st_mtime >= started - 1), key=lambda p: p.stat().st_mtime
    )
    if not written:
        return skipped(f"bench/dip/speed.py wrote no JSON under {out}: {output[-800:]}")
    json_path = written[-1]
    md_path = json_path.with_suffix(".md")
    data = json.loads(json_path.read_text())
    rows, meta = data.get("rows", []), data.get("meta", {})
    figures = []
    sgemm = float(meta.get("sgemm_gflops") or 0)
    for task in dict.fromkeys(r["task"] for r in rows):
        best = min((r for r in rows if r["task"] == task), key=lambda r: r["s_per_iter_median"])
        figures.append(
            Figure(
                f"dip_{task}_flops_share",
                f"DIP {task} ({best['variant']}, {best['size']}²): achieved FLOP/s ÷ sgemm FLOP/s",
                best["achieved_gflops"] / sgemm if sgemm else float("nan"),
                None,
                context=f"{best['s_per_iter_median']:.3f} s/iteration, "
                f"peak RSS {best['peak_rss_mib']:.0f} MiB",
            )
        )
    return {
        "command": " ".join(["python", "bench/dip/speed.py", *ctx.config.dip_args]),
        "markdown": str(md_path.relative_to(ctx.out)) if md_path.is_file() else None,
        "rows": rows,
        "meta": meta,
        "figures": figures_of(*figures),
    }
