"""DIP engine speed: s/iteration, peak RSS, achieved GFLOP/s vs sgemm, per task network and speed trick.

    .venv/bin/python -m bench.dip.speed          # full: 256², 5 warm-up + 20 timed iterations per config
    .venv/bin/python -m bench.dip.speed --quick  # smoke test: 64², 1 + 3 iterations, 2 tasks x 2 variants
    python -m bench.dip.speed --device cuda --variants fused,cuda_graphs   # GPU: writes speed_cuda.*

Each (task, variant) runs in a fresh subprocess (so peak RSS is its own) through the real engine
(`restore(..., FixedIterations)`), timing iterations with the progress hook. The sgemm reference is a
2048³ fp32 `torch.mm` measured in this run with the same thread count. Compare medians, and only trust runs
whose cpu/wall is close to the thread count (dip.md §5: the machine is shared; the reference code ran
0.88 s/iteration at 256² on 2 threads). Writes bench/results/dip/speed.{json,md} (--quick: under quick/).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import ROOT
from bench.dip.common import OUT, out_dir
from bench.flops import sgemm_gflops
from bench.machine import load_average
from bench.report import table
from bench.stats import percentile
from service.bus.request import (
    DenoiseTask,
    EngineOptions,
    FixedIterations,
    InpaintTask,
    JpegTask,
    SuperResolveTask,
    Task,
)
from service.worker.engine import restore
from service.worker.problem import make_problem
from service.worker.recipes import recipe_for
from service.worker.skip import skip

REFERENCE_S_PER_ITER = 0.88  # dip.md §5, reference code, 256², 2 threads
VARIANTS: dict[str, EngineOptions] = {
    # temporaries for noise and EMA, like the notebooks
    "reference_loop": EngineOptions(fused_updates=False),
    "fused": EngineOptions(fused_updates=True, cuda_graphs=False),
    "channels_last": EngineOptions(fused_updates=True, channels_last=True, cuda_graphs=False),
    "compile": EngineOptions(fused_updates=True, compile=True),
    "compile_channels_last": EngineOptions(fused_updates=True, compile=True, channels_last=True),
    "cuda_graphs": EngineOptions(fused_updates=True, cuda_graphs=True),  # as `fused` on CPU
}
TASKS = ["denoise", "jpeg", "sr4", "inpaint"]


def _task(name: str, size: int) -> tuple[Task, tuple[int, int]]:
    """The task and its input size for a `size`² network output."""
    if name == "denoise":
        return DenoiseTask(sigma=25 / 255), (size, size)
    if name == "jpeg":
        return JpegTask(), (size, size)
    if name == "sr4":
        return SuperResolveTask(4), (size // 4, size // 4)
    if name == "inpaint":
        mask = np.zeros((size, size), bool)
        mask[::7] = True
        return InpaintTask(mask), (size, size)
    raise ValueError(f"unknown task {name!r}; choose from {TASKS}")


def _flops_per_iteration(task: Task, hw: tuple[int, int], channels: int = 3) -> float:
    """Forward + backward FLOPs of one iteration, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    recipe = recipe_for(task, channels)
    img = np.full((*hw, channels), 0.5, np.float32)
    problem = make_problem(img, task, recipe.net, torch.device("cpu"))
    net = skip(recipe.net)
    z = torch.rand(1, recipe.net.in_channels, *problem.out_size)
    counter = FlopCounterMode(display=False)
    with counter:
        problem.loss(net(z)).backward()
    return float(counter.get_total_flops())


def _sgemm_n(device: str) -> int:
    return 8192 if device.startswith("cuda") else 2048  # 8192: big enough to fill the GPU


def _sgemm_gflops(device: str) -> float:
    """torch's FP32 matmul rate on the device: best of 5 on the CPU, of 20 on a GPU."""
    reps = 20 if device.startswith("cuda") else 5
    return sgemm_gflops(_sgemm_n(device), reps, device, numpy=False)["torch"]


def run_one(
    task_name: str, variant: str, size: int, warmup: int, timed: int, device: str = "cpu"
) -> dict[str, Any]:
    """One config in this process: per-iteration wall and CPU times through the engine."""
    task, hw = _task(task_name, size)
    img = np.random.default_rng(0).random((*hw, 3)).astype(np.float32)
    stamps: list[tuple[float, float]] = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    restore(
        img,
        task,
        stopping=FixedIterations(warmup + timed),
        on_progress=lambda p: stamps.append((time.perf_counter(), time.process_time())),
        progress_every=1,
        options=VARIANTS[variant],
        device=device,
    )
    total = time.perf_counter() - t0
    walls = [b[0] - a[0] for a, b in zip(stamps[warmup - 1 :], stamps[warmup:], strict=False)]
    cpus = [b[1] - a[1] for a, b in zip(stamps[warmup - 1 :], stamps[warmup:], strict=False)]
    flops = _flops_per_iteration(task, hw)
    median = percentile(walls, 50)
    return {
        "task": task_name,
        "variant": variant,
        "size": size,
        "s_per_iter_median": median,
        "s_per_iter_p10": percentile(walls, 10),
        "s_per_iter_p90": percentile(walls, 90),
        "cpu_per_wall": sum(cpus) / sum(walls),
        "first_iteration_s": stamps[0][0] - t0,  # setup + compile + first step
        "total_s": total,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before,
        "gflop_per_iter": flops / 1e9,
        "achieved_gflops": flops / median / 1e9,
        "threads": torch.get_num_threads(),
        "device": device,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
    }


COLUMNS = ("task", "variant", "s/iter (median)", "p10-p90", "cpu/wall", "GFLOP/iter", "GFLOP/s", "% sgemm",
           "peak RSS MiB", "first iter s")  # fmt: skip


def _cells(r: dict[str, Any], sgemm_gflops: float) -> tuple[str, ...]:
    return (
        r["task"],
        r["variant"],
        f"**{r['s_per_iter_median']:.3f}**",
        f"{r['s_per_iter_p10']:.3f}-{r['s_per_iter_p90']:.3f}",
        f"{r['cpu_per_wall']:.2f}",
        f"{r['gflop_per_iter']:.1f}",
        f"{r['achieved_gflops']:.0f}",
        f"{100 * r['achieved_gflops'] / sgemm_gflops:.0f}%",
        f"{r['peak_rss_mib']:.0f}",
        f"{r['first_iteration_s']:.1f}",
    )


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cuda = meta.get("device", "cpu") != "cpu"
    n = _sgemm_n(meta.get("device", "cpu"))
    lines = [
        f"# DIP engine speed ({meta.get('device_name', 'CPU')})",
        "",
        f"Generated by `python -m bench.dip.speed` on {meta['date']}: torch {meta['torch']}, "
        f"{meta['threads']} threads, "
        f"{meta['size']}² network output, {meta['warmup']} warm-up + {meta['timed']} timed iterations, "
        f"load average before/after {meta['load_before']} / {meta['load_after']}.",
        f"sgemm ({n}³ fp32 torch.mm, same run): **{meta['sgemm_gflops']:.0f} GFLOP/s** "
        f"(before {meta['sgemm_before']:.0f}, after {meta['sgemm_after']:.0f}). "
        f"Reference code: {REFERENCE_S_PER_ITER} s/iteration at 256² on 2 CPU threads (dip.md §5).",
    ]
    if cuda:
        lines += [
            "On CUDA the convolutions run through cuDNN, which PyTorch lets use TF32 by default, while this "
            "sgemm is full fp32, so % sgemm can pass 100%. s/iter is timed from host callbacks that read "
            "the loss (one sync per iteration), so it includes the launch gaps a real run has too. "
            "peak RSS is the host process; peak GPU memory is in speed_cuda.json.",
        ]
    else:
        lines += [
            f"This host's vector ISA as torch sees it: **{meta.get('cpu_capability', '?')}**; at this run's "
            f"sgemm rate the ≈116 GFLOP of one denoise iteration take at least "
            f"{116 / meta['sgemm_gflops']:.2f} s, so compare % of sgemm and the ratios between variants of "
            "one run, not seconds across hosts.",
        ]
    lines += ["", *table(COLUMNS, (_cells(r, meta["sgemm_gflops"]) for r in rows))]
    lines += ["Fastest variant per task (median s/iteration; speed-up over `reference_loop`, one run):", ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        of_task = {r["variant"]: r for r in rows if r["task"] == task}
        best = min(of_task.values(), key=lambda r: r["s_per_iter_median"])
        line = f"* {task}: `{best['variant']}` {best['s_per_iter_median']:.3f} s"
        if "reference_loop" in of_task:
            speedup = of_task["reference_loop"]["s_per_iter_median"] / best["s_per_iter_median"]
            line += f" ({speedup:.2f}x)"
        lines.append(line)
    lines += [
        "",
        "cpu/wall well below the thread count means another process took the cores: rerun when quiet.",
        "",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.dip.speed", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="64², 1 + 3 iterations, 2 tasks x 2 variants: a smoke test"
    )
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timed", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (a GPU run writes speed_cuda.*)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path, default=OUT, help="results folder (--quick: its quick/)")
    p.add_argument("--one", nargs=2, metavar=("TASK", "VARIANT"), help=argparse.SUPPRESS)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with --quick's settings applied (the part-6 hook reads where a run writes)."""
    args = parser().parse_args(argv)
    if args.quick:
        args.size, args.warmup, args.timed = 64, 1, 3
        if args.variants == ",".join(VARIANTS):
            args.variants = "reference_loop,fused"
        if args.tasks == ",".join(TASKS):
            args.tasks = "denoise,jpeg"
    return args


def json_path(args: argparse.Namespace) -> Path:
    """Where this run's table goes (the markdown beside it, .md): speed.json, or speed_cuda.json."""
    stem = "speed" if args.device == "cpu" else "speed_cuda"
    return out_dir(args.out, args.quick) / f"{stem}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        row = run_one(args.one[0], args.one[1], args.size, args.warmup, args.timed, args.device)
        print(json.dumps(row))
        return 0

    load_before = load_average()
    sgemm_before = _sgemm_gflops(args.device)
    rows = []
    for task in args.tasks.split(","):
        for variant in args.variants.split(","):
            # A fresh process per config, so the peak RSS is its own.
            cmd = [sys.executable, "-m", "bench.dip.speed", "--one", task, variant, "--size", str(args.size)]
            cmd += ["--warmup", str(args.warmup), "--timed", str(args.timed), "--threads", str(args.threads)]
            cmd += ["--device", args.device]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            speed = f"{row['s_per_iter_median']:.3f} s/iter cpu/wall {row['cpu_per_wall']:.2f}"
            print(f"{task:8s} {variant:22s} {speed}", flush=True)
    sgemm_after = _sgemm_gflops(args.device)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "threads": args.threads,
        "size": args.size,
        "warmup": args.warmup,
        "timed": args.timed,
        "sgemm_gflops": max(sgemm_before, sgemm_after),
        "sgemm_before": sgemm_before,
        "sgemm_after": sgemm_after,
        "load_before": load_before,
        "load_after": load_average(),
        "quick": args.quick,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU",
    }
    path = json_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    path.with_suffix(".md").write_text(_markdown(rows, meta))
    print(f"wrote {path} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
