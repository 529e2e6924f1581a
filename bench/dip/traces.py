"""Per-iteration traces of DIP denoising, to tune the held-out stop rule offline.

For each (image, σ): a 96² centre crop (`--crop`), Gaussian noise seeded by σ (in 1/255, as
`bench.dip.quality`), then two fits from the same seed to `--cap` iterations:

* the held-out run (the default `AutoStop`'s first run) under `RECORD`, a policy that stops no earlier
  than the default or any quicker setting: `holdout_mse`, the statistic the stopper sees, and
  `holdout_psnr`, its EMA iterate's PSNR to the clean crop;
* the fit on every pixel (`FixedIterations`, to `--cap` or the held-out run's length if longer):
  `all_psnr`, its EMA iterate's PSNR, and `window_psnr`: the PSNR of the mean of its EMA iterates over
  each of `WINDOWS` (iterations lo x c to hi x c, c the default policy's held-out minimum, `window_c`),
  to judge returning an average of the refit's iterates instead of one (an image per window is needed,
  so these cannot be replayed from the PSNR trace).

The stopper only reads the run, so where a policy stops the held-out run and which iteration it picks is
`replay`ed exactly from `holdout_mse`; the refit is the fit on every pixel cut at that iteration
(bit-exact, tested in tests/service/restore/test_engine.py). So any policy at least as quick as `RECORD`
is judged from these arrays: work S + c, gap max(all_psnr) - all_psnr[c - 1]. Also saved: `noise_floor`
(the clipped-noise variance, σ given), `sigma_hat` (in 1/255) and the CPU seconds per iteration of each run.

One .npz per run under --cache (default: bench/results/dip/traces, committed), named
<image stem>_s<σ>_c<crop>_n<cap>.npz; runs already there are skipped, so an interrupted invocation
resumes. Images come from the command line (files or folders;
the repository ships none of the test sets):

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python -m bench.dip.traces IMAGE_OR_DIR ... --sigmas 25,50
    .venv/bin/python -m bench.dip.traces --summary            # what the cache holds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from bench.dip.common import OUT, Image_, noisy_pair
from service.bus.request import AutoStop, DenoiseTask, FixedIterations, Stopping
from service.bus.result import Progress
from service.color.quality import psnr
from service.restore.early_stop import EarlyStopper, estimate_noise_sigma, noise_floor, refit_iterations
from service.restore.engine import restore
from service.restore.recipes import recipe_for

# Committed (about 22 KB a run), so that a fresh checkout can replay and report without recording again.
CACHE = OUT / "traces"
CPU = torch.device("cpu")
# Recording policy: the default's rule with a 5x larger rise, so the default and any quicker setting
# (smaller rise, patience or wait) stop within the recorded curve, and so do rules that wait through a
# stall like barbara's at σ=25 (a 3.3% rise before the real minimum).
RECORD = AutoStop(refit=False, holdout_rise=0.05)
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Averaging windows over the fit on every pixel, as (lo, hi) multiples of the held-out minimum.
WINDOWS = ((1.0, 1.2), (1.0, 1.5), (0.8, 1.6), (1.0, 2.0), (1.2, 2.0), (0.8, 1.2))
# The rule under test (docs/dip.md §3.1, written 2 Dec before its images were recorded): a shorter least
# wait than the default's can pick an earlier minimum, so the windows are recorded around its choice too.
CANDIDATE = AutoStop(holdout_patience=100, refit_scale=1.5, refit_mean_from=1.0)


def trace_path(cache: Path, image: Path, sigma255: int, crop: int, cap: int) -> Path:
    return cache / f"{image.stem}_s{sigma255}_c{crop}_n{cap}.npz"


def replay(holdout_mse: NDArray[np.floating], policy: AutoStop) -> tuple[int, int] | None:
    """(S, c): the iteration where `policy` stops a held-out run whose statistic was `holdout_mse`, and the
    iteration it returns; None if it would run past the recording. The engine's own `EarlyStopper`
    decides, fed a one-pixel iterate whose held-out error is the recorded value (CPU: a decision every
    iteration)."""
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    stopper = EarlyStopper(policy, None, CPU, held_out=(torch.zeros_like(one), one))
    cap = policy.max_iterations or len(holdout_mse)
    for t, value in enumerate(holdout_mse[:cap], start=1):
        x = torch.full_like(one, math.sqrt(float(value)))
        stopper.update(t, x, x, torch.zeros(()))
        if stopper.decide(t) is not None or t == policy.max_iterations:
            choice = stopper.choice()
            return (t, choice[0]) if choice is not None else None
    return None


class WindowMeans:
    """Running sums of a run's iterates over fixed iteration windows ((lo, hi), 1-based, inclusive), for
    the PSNR of each window's mean iterate; fed every iteration's preview."""

    def __init__(self, windows: list[tuple[int, int]]) -> None:
        self.windows = windows
        self.sums: list[NDArray[np.float64] | None] = [None] * len(windows)
        self.seen = 0

    @classmethod
    def around(cls, *minima: int) -> WindowMeans:
        """The `WINDOWS` around each held-out minimum, in that order."""
        return cls([(max(1, round(lo * c)), round(hi * c)) for c in minima for lo, hi in WINDOWS])

    def add(self, iteration: int, image: Image_) -> None:
        self.seen = iteration
        for i, (lo, hi) in enumerate(self.windows):
            if lo <= iteration <= hi:
                acc = self.sums[i]
                self.sums[i] = image.astype(np.float64) if acc is None else acc + image

    def psnr(self, gt: Image_) -> NDArray[np.float32]:
        """Each window's mean iterate's PSNR; NaN where the run ended before the window did."""
        return np.asarray(
            [
                psnr((acc / (hi - lo + 1)).astype(np.float32), gt)
                if acc is not None and hi <= self.seen
                else math.nan
                for acc, (lo, hi) in zip(self.sums, self.windows, strict=True)
            ],
            np.float32,
        )


def fit_traced(
    noisy: Image_,
    gt: Image_,
    task: DenoiseTask,
    stopping: Stopping,
    windows: WindowMeans | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float64], float]:
    """(per-iteration PSNR of the iterate the run returns (the EMA), the stopper's statistic (NaN without
    a stopper), seconds per iteration); `windows` is fed every iterate."""
    trace: list[float] = []

    def on_progress(p: Progress) -> None:
        if p.preview is not None:
            trace.append(psnr(p.preview, gt))
            if windows is not None:
                windows.add(len(trace), p.preview)

    # CPU time, not wall: the long runs are paused (SIGSTOP) while others time things on the machine.
    t = time.process_time()
    result = restore(noisy, task, stopping=stopping, on_progress=on_progress, progress_every=1, preview=True)
    per_iter = (time.process_time() - t) / max(1, result.iterations_run)
    return np.asarray(trace, np.float32), np.asarray(result.statistic, np.float64), per_iter


def record(image: Path, sigma255: int, crop: int, cap: int, out: Path) -> None:
    gt, noisy = noisy_pair(image, crop, sigma255 / 255, seed=sigma255)
    sigma = sigma255 / 255
    task = DenoiseTask(sigma=sigma)
    holdout_psnr, holdout_mse, holdout_s = fit_traced(noisy, gt, task, RECORD)
    minima: list[int] = []
    for policy in (AutoStop(), CANDIDATE):
        stop = replay(holdout_mse, policy)
        c = stop[1] if stop is not None else int(np.argmin(holdout_mse)) + 1
        minima += [] if c in minima else [c]
    means = WindowMeans.around(*minima)
    length = max(cap, len(holdout_mse), max(hi for _, hi in means.windows))
    all_psnr, _, all_s = fit_traced(noisy, gt, task, FixedIterations(length), means)
    window_psnr = means.psnr(gt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        holdout_mse=holdout_mse,
        holdout_psnr=holdout_psnr,
        all_psnr=all_psnr,
        windows=np.asarray(WINDOWS * len(minima), np.float64),
        window_c=np.repeat(minima, len(WINDOWS)),
        window_psnr=window_psnr,
        noisy_psnr=psnr(noisy, gt),
        noise_floor=noise_floor(noisy, sigma),
        sigma_hat=estimate_noise_sigma(noisy) * 255,
        holdout_s_per_iter=holdout_s,
        all_s_per_iter=all_s,
    )
    tmp.rename(out)  # only complete traces count as done


def images_in(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise SystemExit(f"no such image or folder: {p}")
    return found


def outcome(trace: Mapping[str, Any], policy: AutoStop, budget: int) -> dict[str, Any]:
    """What `policy` (held-out run, then the refit) returns on a recorded run whose iteration budget is
    `budget`, against the best iterate of the fit on every pixel; time at the recorded CPU seconds per
    iteration (1 thread: the wall time on a quiet core)."""
    stop = replay(trace["holdout_mse"], policy)
    if stop is None:
        raise ValueError("the recorded held-out run ends before this policy stops; record with a slower one")
    s, chosen = stop
    c = refit_iterations(policy, chosen, budget) if policy.refit else chosen
    all_psnr = trace["all_psnr"]
    if c > len(all_psnr):
        raise ValueError(f"the fit on every pixel was recorded to {len(all_psnr)} iterations, not to {c}")
    best = int(np.argmax(all_psnr)) + 1
    work = s + c if policy.refit else s
    wall = s * float(trace["holdout_s_per_iter"]) + (
        c * float(trace["all_s_per_iter"]) if policy.refit else 0
    )
    returned = float(all_psnr[c - 1]) if policy.refit else float(trace["holdout_psnr"][c - 1])
    if policy.refit and policy.refit_mean_from is not None:
        returned = _window_psnr(trace, chosen, policy.refit_mean_from, policy.refit_scale)
    return {
        "stopped_at": s,
        "held_out_minimum": chosen,
        "iteration": c,
        "psnr": returned,
        "best_iteration": best,
        "best_psnr": float(all_psnr[best - 1]),
        "gap_db": float(all_psnr[best - 1]) - returned,
        "total_iterations": work,
        "wall_s": round(wall, 1),
    }


def _window_psnr(trace: Mapping[str, Any], chosen: int, lo: float, hi: float) -> float:
    """The recorded PSNR of the mean iterate over [lo, hi] x `chosen`: a mean needs the images, so only
    the `WINDOWS` recorded around the same held-out minimum can be judged. `window_c` holds one minimum
    per window (a scalar in traces recorded before 2 Dec, around the default's choice only)."""
    if "windows" not in trace:
        raise ValueError(f"no window means recorded around iteration {chosen}")
    around = np.broadcast_to(np.asarray(trace["window_c"]), (len(trace["windows"]),))
    if chosen not in around:
        raise ValueError(f"no window means recorded around iteration {chosen}")
    for c, (a, b), value in zip(around, trace["windows"], trace["window_psnr"], strict=True):
        if c == chosen and math.isclose(a, lo) and math.isclose(b, hi) and math.isfinite(value):
            return float(value)
    raise ValueError(f"the mean over [{lo:g}, {hi:g}] x the minimum was not recorded")


def report(caches: list[Path], crop: int, skip: set[str], policy: AutoStop) -> dict[str, Any]:
    """`policy` on every run at `crop` cached in `caches` whose image stem is not in `skip`, and the
    spread."""
    runs: list[dict[str, Any]] = []
    for f in sorted(f for cache in caches for f in cache.glob(f"*_c{crop}_n*.npz")):
        stem, sigma = f.stem.rsplit("_s", 1)[0], int(f.stem.rsplit("_s", 1)[1].split("_")[0])
        if stem in skip or f.name.endswith(".tmp.npz"):
            continue
        budget = policy.max_iterations or recipe_for(DenoiseTask(sigma=sigma / 255), 3).iterations
        try:
            runs.append({"image": stem, "sigma": sigma} | outcome(np.load(f), policy, budget))
        except ValueError as exc:  # recorded too short for this policy: say so, judge the others
            print(f"skip {f.name}: {exc}", flush=True)
    gaps: list[float] = [r["gap_db"] for r in runs]
    return {
        "crop": crop,
        "runs": runs,
        "median_gap_db": float(np.median(gaps)) if runs else None,
        "max_gap_db": max(gaps, default=None),
        "within_0_5_db": sum(g <= 0.5 for g in gaps),
        "median_total_iterations": float(np.median([r["total_iterations"] for r in runs])) if runs else None,
    }


def summary(cache: Path) -> None:
    for f in sorted(cache.glob("*.npz")):
        t = np.load(f)
        best = int(np.argmax(t["all_psnr"])) + 1
        hmin = int(np.argmin(t["holdout_mse"])) + 1
        print(
            f"{f.stem:36s} best {best:5d} {float(t['all_psnr'][best - 1]):6.2f} dB  held-out min {hmin:5d}"
            f" of {len(t['holdout_mse'])}  {float(t['all_s_per_iter']) * 1e3:.0f} ms/it"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dip.traces", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="*", type=Path, help="image files or folders of them")
    p.add_argument("--sigmas", default="25,50", help="noise levels, in 1/255")
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--cap", type=int, default=1500, help="least iterations of the fit on every pixel")
    p.add_argument("--limit", type=int, default=0, help="at most this many images per folder/list (0: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--cache", type=Path, nargs="+", default=[CACHE], help="where runs go (one); --report reads all given"
    )
    p.add_argument("--summary", action="store_true", help="print what the cache holds and exit")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the default AutoStop's outcome on the cached runs to this JSON and exit",
    )
    p.add_argument(
        "--skip", default="", help="--report: comma list of image stems to leave out (the dev set)"
    )
    p.add_argument("--refit-scale", type=float, default=AutoStop().refit_scale, help="--report: the policy's")
    p.add_argument(
        "--holdout-patience", type=int, default=AutoStop().holdout_patience, help="--report: the policy's"
    )
    p.add_argument(
        "--refit-mean-from",
        type=lambda v: None if v == "none" else float(v),
        default=AutoStop().refit_mean_from,
        help="--report: the policy's (a WINDOWS lo, or none: the refit's last iterate)",
    )
    args = p.parse_args(argv)
    if args.summary:
        for cache in args.cache:
            summary(cache)
        return 0
    if args.report is not None:
        policy = AutoStop(
            holdout_patience=args.holdout_patience,
            refit_scale=args.refit_scale,
            refit_mean_from=args.refit_mean_from,
        )
        res = report(args.cache, args.crop, set(filter(None, args.skip.split(","))), policy)
        args.report.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.report}: {len(res['runs'])} runs")
        return 0
    if len(args.cache) != 1:
        raise SystemExit(f"recording writes to one --cache, got {len(args.cache)}")
    torch.set_num_threads(args.threads)
    images = images_in(args.images)
    if args.limit:
        images = images[: args.limit]
    sigmas = [int(s) for s in args.sigmas.split(",")]
    for sigma255 in sigmas:
        for image in images:
            out = trace_path(args.cache[0], image, sigma255, args.crop, args.cap)
            if out.exists():
                continue
            t = time.monotonic()
            try:
                record(image, sigma255, args.crop, args.cap, out)
            except ValueError as exc:  # smaller than the crop
                print(f"skip {image.name}: {exc}", flush=True)
                continue
            print(f"{out.name}: {time.monotonic() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
