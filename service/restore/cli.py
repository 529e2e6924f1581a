"""Restore one image file from the command line.

    python -m service.restore.cli denoise in.png out.png --sigma 25
    python -m service.restore.cli inpaint in.png out.png --mask mask.png [--style text]
    python -m service.restore.cli sr in.png out.png --factor 4
    python -m service.restore.cli jpeg in.jpg out.png [--iterations 1200]

8- and 16-bit PNGs keep their bit depth; an alpha channel is carried through (resized for SR). The mask
file is white where pixels are known (the reference notebooks' convention) unless --mask-missing-white.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import imageio.v3 as iio
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from service.bus.request import (
    AutoStop,
    DenoiseTask,
    FixedIterations,
    InpaintStyle,
    InpaintTask,
    JpegTask,
    Stopping,
    SuperResolveTask,
    Task,
)
from service.bus.result import Progress

logger = logging.getLogger("service.restore.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service.restore.cli", description=__doc__.splitlines()[0])
    p.add_argument("task", choices=["denoise", "inpaint", "sr", "jpeg"])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--sigma", type=float, help="noise std on the 0..255 scale (denoise); omit for blind")
    p.add_argument("--mask", help="inpaint: mask image, white = known pixels")
    p.add_argument("--mask-missing-white", action="store_true", help="inpaint: white = missing instead")
    p.add_argument("--style", choices=[s.value for s in InpaintStyle], default=InpaintStyle.TEXT.value)
    p.add_argument("--factor", type=int, choices=[2, 4, 8], default=4, help="sr: upscaling factor")
    p.add_argument("--iterations", type=int, help="fixed iteration count (default: automatic early stop)")
    p.add_argument("--max-iterations", type=int, help="cap for the automatic stop (default: task budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:n (default: CUDA when present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--time-budget", type=float, default=None, help="seconds")
    p.add_argument("--progress-every", type=int, default=50)
    return p


def _task(args: argparse.Namespace, shape: tuple[int, ...]) -> Task:
    if args.task == "denoise":
        return DenoiseTask(sigma=None if args.sigma is None else args.sigma / 255.0)
    if args.task == "sr":
        return SuperResolveTask(factor=args.factor)
    if args.task == "jpeg":
        return JpegTask()
    if args.mask is None:
        raise SystemExit("inpaint needs --mask")
    mask = np.asarray(Image.open(args.mask).convert("L")) >= 128
    if mask.shape != shape[:2]:
        raise SystemExit(f"mask is {mask.shape}, image is {shape[:2]}")
    return InpaintTask(mask=mask if args.mask_missing_white else ~mask, style=InpaintStyle(args.style))


def _resize_alpha(alpha: NDArray[np.generic], factor: int) -> NDArray[np.generic]:
    h, w = alpha.shape
    size = (w * factor, h * factor)
    resized = Image.fromarray(alpha.astype(np.float32)).resize(size, Image.Resampling.BICUBIC)
    peak = 255 if alpha.dtype == np.uint8 else 65535
    return np.clip(np.asarray(resized), 0, peak).astype(alpha.dtype)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import torch  # after logging is set up: importing torch is the slow part

    from service.restore.engine import restore

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pixels = iio.imread(args.input)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise SystemExit(f"expected an 8- or 16-bit image, got {pixels.dtype}")
    alpha = None
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):  # grey+alpha or RGBA: restore colour only
        pixels, alpha = pixels[..., :-1], pixels[..., -1]
    stopping: Stopping = (
        FixedIterations(args.iterations) if args.iterations else AutoStop(max_iterations=args.max_iterations)
    )

    def report(p: Progress) -> None:
        logger.info("iteration %d/%d loss %.5f eta %.0fs", p.iteration, p.max_iterations, p.loss, p.eta_s)

    result = restore(
        pixels,
        _task(args, pixels.shape),
        stopping=stopping,
        seed=args.seed,
        on_progress=report,
        progress_every=args.progress_every,
        time_budget_s=args.time_budget,
        device=args.device,
    )
    peak = np.iinfo(pixels.dtype).max
    out = np.round(result.image * peak).astype(pixels.dtype)
    if alpha is not None:
        if args.task == "sr":
            alpha = _resize_alpha(alpha, args.factor)
        out = np.concatenate([out if out.ndim == 3 else out[..., None], alpha[..., None]], axis=2)
    iio.imwrite(args.output, out)
    logger.info(
        "wrote %s: iterate %d of %d, stopped by %s, %.1fs",
        args.output,
        result.iteration,
        result.iterations_run,
        result.stop_reason,
        result.elapsed_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
