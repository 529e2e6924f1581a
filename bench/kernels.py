"""Part 4: the gateway's numeric kernels against their references, and the model against the machine.

- sRGB <-> Lab (`service.color.lab`) vs scikit-image on a 1024² photo: speed ratio and max abs error
  (errors against skimage fed float64, timings with the inputs the gateway has: uint8 / float32).
- Annealed mean of one 313x64x64 FP16 logits tensor (from Triton) vs the Triton call it follows.
- Colorizer FLOP/s (convolution FLOPs counted on the torch model) vs this machine's sgemm FLOP/s,
  both measured in this run: how close inference comes to the CPU's dense-matmul rate.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import inputs, triton_stats
from bench.config import MODEL_REPOSITORY
from bench.context import Context, figures_of
from bench.figures import Figure
from bench.flops import count_conv_flops, sgemm_gflops
from bench.load import triton_direct
from bench.stats import ratio
from contract import ANNEALED_T_DEFAULT, ECCV16
from service.color import ab_decode, lab

log = logging.getLogger(__name__)

LAB_SPEED_GOAL = 4.0
LAB_ERROR_GOAL = 1e-3
ANNEALED_SHARE_GOAL = 0.25
FLOPS_SHARE_GOAL = 0.5


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `reps` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _lab(ctx: Context) -> tuple[dict[str, Any], list[Figure]]:
    from skimage import color

    size, reps = ctx.config.lab_size, ctx.config.kernel_reps
    rgb = inputs.square(inputs.load_rgb(ctx.photos[0]), size)
    reference = color.rgb2lab(rgb)  # float64
    error_to_lab = float(np.abs(lab.srgb_to_lab(rgb) - reference).max())
    lab32 = reference.astype(np.float32)
    with warnings.catch_warnings():  # skimage warns about negative Z on out-of-gamut colours
        warnings.simplefilter("ignore")
        error_to_rgb = float(np.abs(lab.lab_to_srgb(lab32) - color.lab2rgb(reference)).max())
        ms = {
            "ours_srgb_to_lab": median_ms(lambda: lab.srgb_to_lab(rgb), reps),
            "skimage_rgb2lab": median_ms(lambda: color.rgb2lab(rgb), reps),
            "ours_lab_to_srgb": median_ms(lambda: lab.lab_to_srgb(lab32), reps),
            "skimage_lab2rgb": median_ms(lambda: color.lab2rgb(lab32), reps),
            # The gateway's actual last step: L, a, b planes to gamut-clamped uint8 in one pass.
            "ours_lab_planes_to_srgb_uint8": median_ms(
                lambda: lab.lab_planes_to_srgb_uint8(lab32[..., 0], lab32[..., 1], lab32[..., 2]), reps
            ),
            "skimage_lab2rgb_uint8": median_ms(
                lambda: np.round(color.lab2rgb(lab32) * 255).astype(np.uint8), reps
            ),
        }
    photo = f"{ctx.photos[0].name} at {size}²"
    to_uint8, sk_uint8 = ms["ours_lab_planes_to_srgb_uint8"], ms["skimage_lab2rgb_uint8"]
    figures = [
        Figure(
            "lab_forward_speed",
            f"sRGB→Lab speed: skimage.rgb2lab time ÷ service.color.lab.srgb_to_lab time ({photo}, uint8)",
            ratio(ms["skimage_rgb2lab"], ms["ours_srgb_to_lab"]),
            LAB_SPEED_GOAL,
            ">=",
            context=f"{ms['ours_srgb_to_lab']:.1f} vs {ms['skimage_rgb2lab']:.1f} ms",
        ),
        Figure(
            "lab_inverse_speed",
            f"Lab→sRGB speed: skimage.lab2rgb time ÷ service.color.lab.lab_to_srgb time ({photo}, float32)",
            ratio(ms["skimage_lab2rgb"], ms["ours_lab_to_srgb"]),
            LAB_SPEED_GOAL,
            ">=",
            context=f"{ms['ours_lab_to_srgb']:.1f} vs {ms['skimage_lab2rgb']:.1f} ms; to uint8 as the "
            f"gateway does: {to_uint8:.1f} vs {sk_uint8:.1f} ms = {ratio(sk_uint8, to_uint8):.2f}×",
        ),
        Figure(
            "lab_forward_error",
            "sRGB→Lab max abs error vs skimage (Lab units)",
            error_to_lab,
            LAB_ERROR_GOAL,
            "<=",
            unit="",
        ),
        Figure(
            "lab_inverse_error",
            "Lab→sRGB max abs error vs skimage (sRGB in [0, 1])",
            error_to_rgb,
            LAB_ERROR_GOAL,
            "<=",
            unit="",
        ),
    ]
    return {
        "image": photo,
        "ms": ms,
        "max_abs_error": {"to_lab": error_to_lab, "to_srgb": error_to_rgb},
    }, figures


def _ort_ms(plane: np.ndarray, reps: int) -> float:
    """The served ONNX in process, with the session options the Triton model uses (no spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(MODEL_REPOSITORY / ECCV16.name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    return median_ms(lambda: session.run(None, {"L": plane}), reps)


def run(ctx: Context) -> dict[str, Any]:
    import torch

    from colorizers.eccv16 import ECCVGenerator
    from colorizers.weights import resolve

    cfg = ctx.config
    lab_result, figures = _lab(ctx)

    url = ctx.stack.triton_server().grpc_url
    requests = [inputs.model_inputs(ECCV16, plane) for plane in ctx.l_planes]
    before = triton_stats.snapshot(url, ECCV16.name)
    direct, outputs = asyncio.run(
        triton_direct(
            url,
            ECCV16,
            requests,
            shared_memory=True,
            count=cfg.direct_requests,
            max_seconds=cfg.gateway_seconds * 2,
        )
    )
    server = triton_stats.snapshot(url, ECCV16.name) - before
    logits = outputs["logits"]
    annealed = median_ms(
        lambda: ab_decode.annealed_mean(logits, ANNEALED_T_DEFAULT), max(10, cfg.kernel_reps * 4)
    )
    triton_p50 = direct["infer_ms"]["p50"]
    figures.append(
        Figure(
            "annealed_mean_share",
            f"annealed mean of {tuple(logits.shape[1:])} FP16 logits ÷ the Triton call "
            "(p50, c=1, system shm)",
            ratio(annealed, triton_p50),
            ANNEALED_SHARE_GOAL,
            "<=",
            context=f"{annealed:.2f} ms vs {triton_p50:.1f} ms",
        )
    )

    checkpoint, model = resolve("eccv16")
    if not isinstance(model, ECCVGenerator):
        raise TypeError(f"expected an ECCVGenerator for eccv16, got {type(model).__name__}")
    plane = ctx.l_planes[0]
    flops, layers = count_conv_flops(model, lambda: model.logits(torch.from_numpy(plane)))
    with torch.no_grad():
        eager_ms = median_ms(lambda: model.logits(torch.from_numpy(plane)), cfg.kernel_reps)
    ort_ms = _ort_ms(plane, cfg.kernel_reps)
    triton_ms = server.infer_ms_per_execution(1)
    sgemm = sgemm_gflops(cfg.sgemm_n)
    peak = max(sgemm.values())
    achieved = {
        "triton_compute_infer": ratio(flops / 1e6, triton_ms),  # GFLOP/s = FLOP / ms / 1e6
        "onnxruntime_in_process": ratio(flops / 1e6, ort_ms),
        "torch_eager": ratio(flops / 1e6, eager_ms),
    }
    figures.append(
        Figure(
            "flops_share",
            f"colorizer FLOP/s (Triton compute_infer, batch 1, {plane.shape[-1]}²) ÷ sgemm FLOP/s "
            f"({cfg.sgemm_n}³ FP32, best of torch/numpy)",
            ratio(achieved["triton_compute_infer"], peak),
            FLOPS_SHARE_GOAL,
            ">=",
            context=f"{flops / 1e9:.2f} GFLOP in {triton_ms:.1f} ms = "
            f"{achieved['triton_compute_infer']:.1f} GFLOP/s vs sgemm {peak:.1f} GFLOP/s; "
            "onnxruntime in process "
            f"{ratio(achieved['onnxruntime_in_process'], peak):.2f}×, torch eager "
            f"{ratio(achieved['torch_eager'], peak):.2f}×",
        )
    )
    return {
        "lab": lab_result,
        "annealed_mean_ms": annealed,
        "triton_direct": direct,
        "model": {
            "checkpoint": checkpoint.name,
            "trained": checkpoint.trained,
            "width": checkpoint.width,
            "conv_gflop": flops / 1e9,
            "layers": layers,
            "ms": {
                "triton_compute_infer": triton_ms,
                "onnxruntime_in_process": ort_ms,
                "torch_eager": eager_ms,
            },
            "gflops": achieved,
            "torch_threads": torch.get_num_threads(),
        },
        "sgemm_gflops": sgemm,
        "figures": figures_of(*figures),
    }
