"""Batched DIP (stacked networks under torch.func.vmap) and CUDA graphs vs one job at a time: jobs/s.

    python -m bench.dip.batch --device cuda                  # 256² denoise, K = 1, 4, 16, 200 iterations
    python -m bench.dip.batch --device cpu --quick           # smoke test: 64², K = 1, 2, 5 iterations
    python -m bench.dip.batch --data DIR --image dip/denoising/F16_GT.png   # the committed results' image

The image is `--data`/`--image`: by default samples/aitzgorri.jpg, inside the repository. The committed
results (bench/results/dip/batch.*) used the DIP authors' F16 test image, which is not redistributable:
give its folder with --data. Timing does not depend on the picture; the PSNR columns do.
For each K the same K jobs (256² centre crop, σ = 25, seeds 0..K-1) run through each mode in one
process (`--modes`; see MODES): one after another through `restore(..., FixedIterations(n))`, the same
with CUDA graphs, K threads at once, `restore_batch`, and `restore_batch` with CUDA graphs. Each (K, mode)
first runs a 5-iteration warm-up, so cuDNN's autotuning for its shapes stays out of the timing. jobs/s is
K over the wall time (device synchronised). Agreement: each image's PSNR to the clean image and to the
plain sequential run of its seed (the same function up to float rounding, which Adam amplifies).
Writes bench/results/dip/batch.{json,md,png} (--quick: under quick/). Ratios within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import plots
from bench.config import ROOT
from bench.dip.common import OUT, noisy_pair, out_dir, sync
from bench.report import table
from service.bus.request import DenoiseTask, EngineOptions, FixedIterations
from service.color.quality import psnr
from service.restore.batched import BatchJob, restore_batch
from service.restore.engine import restore

SAMPLES = ROOT / "samples"
IMAGE = "aitzgorri.jpg"  # in SAMPLES, 900 x 599


def _threaded(noisy: np.ndarray, task: DenoiseTask, iterations: int, k: int, device: str) -> None:
    """K `restore` calls in K threads at once (on CUDA each on its own stream): the alternative to
    stacking, overlapping one job's launch gaps with another's kernels."""
    cuda = device.startswith("cuda")

    def one(seed: int) -> None:
        stream = torch.cuda.Stream() if cuda else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            # eager: a graph capture in one thread fails on other threads' launches
            restore(
                noisy, task, stopping=FixedIterations(iterations), seed=seed, device=device, options=EAGER
            )
        if stream is not None:
            stream.synchronize()

    with ThreadPoolExecutor(max_workers=k) as pool:
        list(pool.map(one, range(k)))


GRAPHS, EAGER = EngineOptions(cuda_graphs=True), EngineOptions(cuda_graphs=False)
# mode -> K jobs of n iterations, returning one image per job (None where the mode keeps none)
MODES: dict[str, Callable[[np.ndarray, DenoiseTask, int, int, str], list[np.ndarray] | None]] = {
    "sequential": lambda x, t, n, k, d: [
        restore(x, t, stopping=FixedIterations(n), seed=s, device=d, options=EAGER).image for s in range(k)
    ],
    "sequential_graphs": lambda x, t, n, k, d: [
        restore(x, t, stopping=FixedIterations(n), seed=s, device=d, options=GRAPHS).image for s in range(k)
    ],
    "threads": lambda x, t, n, k, d: _threaded(x, t, n, k, d),
    "batched": lambda x, t, n, k, d: [
        r.image for r in restore_batch([BatchJob(x, t, n, seed=s) for s in range(k)], device=d, options=EAGER)
    ],
    "batched_graphs": lambda x, t, n, k, d: [
        r.image
        for r in restore_batch([BatchJob(x, t, n, seed=s) for s in range(k)], device=d, options=GRAPHS)
    ],
}


def measure(
    k: int, modes: list[str], noisy: np.ndarray, clean: np.ndarray, iterations: int, device: str
) -> dict[str, Any]:
    """Each mode on the same K jobs: wall time, jobs/s, peak device memory, PSNR to the clean image and
    to the plain sequential run's image of the same seed."""
    task = DenoiseTask(sigma=25 / 255)
    cuda = device.startswith("cuda")
    row: dict[str, Any] = {"k": k, "iterations": iterations}
    images: dict[str, list[np.ndarray]] = {}
    for mode in modes:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        out = MODES[mode](noisy, task, iterations, k, device)
        sync(device)
        wall = time.perf_counter() - t
        cell: dict[str, Any] = {"wall_s": wall, "jobs_per_s": k / wall}
        cell["s_per_job_iteration"] = wall / (k * iterations)
        cell["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        if out is not None:
            images[mode] = out
            cell["psnr_clean_mean"] = statistics.mean(psnr(img, clean) for img in out)
        row[mode] = cell
    if "sequential" in images:
        for mode, out in images.items():
            if mode != "sequential":
                agree = [psnr(a, b) for a, b in zip(out, images["sequential"], strict=True)]
                row[mode]["psnr_vs_sequential_min"] = min(agree)
    return row


def _markdown(rows: list[dict[str, Any]], modes: list[str], meta: dict[str, Any]) -> str:
    header = ("K", *modes)

    def jobs_per_s(r: dict[str, Any], m: str) -> str:
        return f"{r[m]['jobs_per_s']:.3f} ({r[m]['jobs_per_s'] / r[modes[0]]['jobs_per_s']:.2f}x)"

    def memory(r: dict[str, Any], m: str) -> str:
        return "-" if r[m]["peak_mem_mib"] is None else f"{r[m]['peak_mem_mib']:.0f}"

    def quality(r: dict[str, Any], m: str) -> str:
        c = r[m]
        text = f"{c['psnr_clean_mean']:.2f}" if "psnr_clean_mean" in c else "-"
        return text + (f" / {c['psnr_vs_sequential_min']:.1f}" if "psnr_vs_sequential_min" in c else "")

    def tabled(cell: Callable[[dict[str, Any], str], str]) -> list[str]:
        return table(header, ((r["k"], *(cell(r, m) for m in modes)) for r in rows))

    lines = [
        "# Batched DIP: K jobs in one stacked step vs one at a time",
        "",
        f"Generated by `python -m bench.dip.batch` on {meta['date']}: {meta['device_name']}, "
        f"torch {meta['torch']}, "
        f"denoise (σ = 25) {meta['image']} {meta['size']}² centre crop, {meta['iterations']} iterations "
        "per job, seeds 0..K-1. A 5-iteration warm-up of each (K, mode) first (cuDNN autotuning); wall "
        "times with the device synchronised.",
        "",
        "Modes: `sequential` is `restore()` one job after another (what one worker slot does today); "
        "`sequential_graphs` the same with `EngineOptions(cuda_graphs=True)` (one CUDA-graph replay per "
        "iteration); `threads` K `restore()` calls in K threads, a CUDA stream each; `batched` "
        "`restore_batch()` (K networks stacked, torch.func.vmap); `batched_graphs` that with CUDA graphs.",
        "",
        "jobs/s (speed-up over `sequential` of the same K):",
        "",
        *tabled(jobs_per_s),
        "Peak device memory, MiB:",
        "",
        *tabled(memory),
        "Quality: mean PSNR to the clean image (dB) / the lowest PSNR of a job's image to the `sequential` "
        "run of its seed:",
        "",
        *tabled(quality),
        "Every mode computes the same fits (float64: stacked and single networks agree to 1e-12, "
        "tests/service/restore/test_batched.py); in float32 the convolution algorithms differ, and Adam's "
        "sign-like first steps amplify the rounding, so trajectories part while the quality stays.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dip.batch", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--batches", default="1,4,16")
    p.add_argument(
        "--modes", default="sequential,sequential_graphs,batched,batched_graphs", help=str(list(MODES))
    )
    p.add_argument("--quick", action="store_true", help="64², 3 iterations, K = 1, 2")
    p.add_argument("--out", type=Path, default=OUT, help="results folder (--quick: its quick/)")
    p.add_argument("--data", type=Path, default=SAMPLES, help="folder holding --image (default: samples/)")
    p.add_argument("--image", default=IMAGE, help=f"path under --data (default: {IMAGE})")
    args = p.parse_args(argv)
    image = args.data / args.image
    if not image.is_file():
        p.error(f"no image {image}: give its folder with --data and its path under it with --image")
    if args.quick:
        args.size, args.iterations, args.batches = 64, 5, "1,2"
    out = out_dir(args.out, args.quick)
    modes = args.modes.split(",")
    try:
        clean, noisy = noisy_pair(image, args.size, 25 / 255, seed=0)
    except ValueError as exc:
        p.error(f"{image}: {exc}")
    rows = []
    for k in (int(x) for x in args.batches.split(",")):
        measure(k, modes, noisy, clean, 5, args.device)  # warm-up: cuDNN autotuning of these shapes
        rows.append(measure(k, modes, noisy, clean, args.iterations, args.device))
        print(f"K={k:3d} " + "  ".join(f"{m} {rows[-1][m]['jobs_per_s']:.3f}" for m in modes), flush=True)
    cuda = args.device.startswith("cuda")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads",
        "image": Path(args.image).stem,
        "size": args.size,
        "iterations": args.iterations,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if cuda else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.json").write_text(json.dumps({"meta": meta, "modes": modes, "rows": rows}, indent=2))
    (out / "batch.md").write_text(_markdown(rows, modes, meta))
    plots.jobs_per_second(
        rows,
        modes,
        out / "batch.png",
        f"DIP denoise {meta['size']}², {meta['device_name']}",
        f"jobs/s ({meta['iterations']} iterations each)",
    )
    print(f"wrote {out}/batch.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
