"""Part 3: the authors' demo pipeline, re-implemented plainly, against ours on the same images.

The baseline follows richzhang/colorization `demo_release.py` + `colorizers/util.py`: PIL bicubic
resize of the RGB image to 256², `skimage.color.rgb2lab` of the original and the resized image,
PyTorch eager forward of ECCV16 (softmax mean, x4 bilinear, x110: `ECCVGenerator.forward`),
bilinear ab to the original size, concatenated with the original L, `skimage.color.lab2rgb`,
encoded as ours is. Same weights as Triton serves (`colorizers.weights.resolve`), under
`torch.no_grad()` (the demo builds an autograd graph; leaving it out favours the baseline).

Ours is the whole service: gRPC Colorize through the gateway and Triton. The two alternate in
rounds over the same JPEGs, so a load change on the machine hits both.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from bench.context import Context, figures_of
from bench.figures import Figure
from bench.load import colorize_load, colorize_requests
from bench.stats import ratio

log = logging.getLogger(__name__)

THROUGHPUT_GOAL = 2.0


def colorize_baseline(image: bytes, model: Any, *, size: int = 256, output_format: str = "PNG") -> bytes:
    """One image through the demo pipeline (torch and skimage imported by the caller's process)."""
    import torch
    from skimage import color
    from torch.nn import functional as F

    rgb = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    rgb_rs = np.asarray(Image.fromarray(rgb).resize((size, size), resample=Image.Resampling.BICUBIC))
    lab_orig, lab_rs = color.rgb2lab(rgb), color.rgb2lab(rgb_rs)
    tens_orig_l = torch.Tensor(lab_orig[:, :, 0])[None, None]
    tens_rs_l = torch.Tensor(lab_rs[:, :, 0])[None, None]
    with torch.no_grad():
        out_ab = model(tens_rs_l)
        if out_ab.shape[2:] != tens_orig_l.shape[2:]:
            out_ab = F.interpolate(out_ab, size=tens_orig_l.shape[2:], mode="bilinear")
        out_lab = torch.cat((tens_orig_l, out_ab), dim=1)
    out_rgb = color.lab2rgb(out_lab.numpy()[0].transpose((1, 2, 0)))
    buffer = io.BytesIO()
    Image.fromarray(np.round(out_rgb * 255).astype(np.uint8)).save(buffer, format=output_format)
    return buffer.getvalue()


def _baseline_pass(
    images: Sequence[bytes], model: Any, size: int, fmt: str, max_s: float
) -> tuple[int, float]:
    start = time.perf_counter()
    done = 0
    for image in images:
        colorize_baseline(image, model, size=size, output_format=fmt)
        done += 1
        if time.perf_counter() - start > max_s:
            break
    return done, time.perf_counter() - start


def run(ctx: Context) -> dict[str, Any]:
    import torch

    from colorizers.weights import resolve

    cfg = ctx.config
    checkpoint, model = resolve("eccv16")
    gateway = ctx.stack.gateway(shared_memory=True)
    images = ctx.jpegs
    requests = colorize_requests(images, working_size=cfg.working_size, output_format=cfg.output_format)
    colorize_baseline(images[0], model, size=cfg.working_size, output_format=cfg.output_format)  # warm-up
    totals = {"baseline": [0, 0.0], "ours_c1": [0, 0.0], f"ours_c{cfg.baseline_concurrency}": [0, 0.0]}
    max_s = cfg.gateway_seconds * 5
    for _ in range(cfg.baseline_rounds):
        done, seconds = _baseline_pass(images, model, cfg.working_size, cfg.output_format, max_s)
        totals["baseline"][0] += done
        totals["baseline"][1] += seconds
        for concurrency in (1, cfg.baseline_concurrency):
            level = asyncio.run(
                colorize_load(
                    gateway.target,
                    requests,
                    concurrency=concurrency,
                    max_requests=len(images),
                    max_seconds=max_s,
                )
            )
            totals[f"ours_c{concurrency}"][0] += level["ok"]
            totals[f"ours_c{concurrency}"][1] += level["wall_s"]
    throughput = {name: ratio(float(n), s) for name, (n, s) in totals.items()}
    log.info("baseline vs ours (images/s): %s", {k: round(v, 2) for k, v in throughput.items()})
    ours_key = max((k for k in throughput if k.startswith("ours")), key=lambda k: throughput[k])
    figures = [
        Figure(
            key="throughput_over_baseline",
            label=f"our end-to-end throughput ({ours_key.replace('ours_c', 'c=')}, gRPC Colorize) ÷ "
            "the authors' demo pipeline's (sequential, torch eager)",
            value=ratio(throughput[ours_key], throughput["baseline"]),
            goal=THROUGHPUT_GOAL,
            direction=">=",
            context=f"{throughput[ours_key]:.2f} vs {throughput['baseline']:.2f} images/s "
            f"({cfg.request_size}² JPEG in, {cfg.output_format} out); at c=1 ours is "
            f"{ratio(throughput['ours_c1'], throughput['baseline']):.2f}×",
        )
    ]
    return {
        "settings": {
            "images": f"{len(images)} photos as {cfg.request_size}² JPEG, "
            f"{cfg.baseline_rounds} interleaved rounds",
            "weights": f"{checkpoint.name} (trained: {checkpoint.trained})",
            "torch_threads": torch.get_num_threads(),
        },
        "images_per_s": throughput,
        "counts": {k: {"images": n, "seconds": s} for k, (n, s) in totals.items()},
        "figures": figures_of(*figures),
    }
