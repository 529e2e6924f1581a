"""The gateway's own work on one image against the bare codec on the same image (issue #19, ask 3).

    .venv/bin/python -m bench.gateway_overhead            # -> bench/results/gateway_overhead.{json,md,png}
    .venv/bin/python -m bench.gateway_overhead --quick    # -> bench/results/quick/
    .venv/bin/python -m bench --only gateway_overhead     # the same, as a part of the benchmark report

For each size (768×512, 512², 2048²) the photos of samples/ (or PRIORLAB_BENCH_DATA) are centre-cropped
to the size's aspect, resized and written as JPEG q90; then, in one loop that interleaves them:

- the bare codec: decode + encode of that JPEG (q90, 4:2:0) with every codec candidate importable here;
- the gateway's own work with its real functions, `service.gateway.colorize.prepare` and `postprocess`
  (JPEG in, JPEG out, working size 256), per model kind. Triton is replaced by a precomputed output of
  the model's shape, made from the photo's own colours (a peaked distribution around its true ab), so
  the decoders see realistic values; the Triton call is not the gateway's work and is excluded.

The figure is gateway ÷ bare codec per size and model, against the fastest candidate's bare time (the
strictest denominator). The stages come from the same calls (the `lap` hook of `prepare`/`postprocess`).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bench import machine, plots
from bench.config import RESULTS
from bench.figures import Figure, format_value, goal_text, verdict
from bench.inputs import jpeg_bytes, load_rgb, photo_paths
from bench.report import table
from bench.stages import Laps
from contract import WORKING_SIZE_DEFAULT, ModelSpec
from service import codec as service_codec
from service.color import ab_decode, lab
from service.gateway import colorize
from service.gateway.settings import Settings

log = logging.getLogger(__name__)

GOAL = 2.0  # gateway's own time <= 2x the bare codec's on the same image
SIZES: tuple[tuple[int, int], ...] = ((768, 512), (512, 512), (2048, 2048))  # (width, height)
MODEL_KINDS = ("eccv16", "siggraph17", "larsson16")  # 313-bin annealed mean, direct ab, hue/chroma
QUALITY = 90
_LIMITS = {"max_pixels": 50_000_000, "max_bytes": 64 << 20}
Clock = Callable[[], float]
# cpu (default): the measuring thread's CPU time. Both sides run on that one thread (OpenCV set to one
# thread, OMP_NUM_THREADS=1 for BLAS), so processes sharing the core do not stretch either side; on
# this shared 2-core machine wall-clock medians of the 5-20 ms colour stages were inflated 2-7x by
# preemption while the 1-2 ms codec calls mostly were not. wall: time.perf_counter, for a quiet host.
CLOCKS: dict[str, Clock] = {"cpu": time.thread_time, "wall": time.perf_counter}


# ---- inputs ----------------------------------------------------------------------------------------


# What the colour stages are, and what was tried for them (docs/serving.md §8 has the full account).
FUSED_NOTES = (
    "Colour stages are fused numba kernels (service/color/fused.py, one thread, compiled at import), "
    "each tested against the numpy spec and skimage/PIL/torch. Before them (numpy chains, 30 Nov "
    "15:03): 6.0-8.5x; e.g. 768x512 eccv16 sRGB→L 2.16, resize L 1.88, annealed mean 2.65, "
    "ab upsample + Lab→sRGB 8.46 ms.",
    "Tried and not kept (512², cpu clock): lookup tables passed as arguments (LLVM cannot prove they "
    "do not alias the output: loops stay scalar; module-global tables vectorise: Lab→sRGB 3.3 -> "
    "1.3 ms at 768x512); interleaved uint8 stores in the Lab→sRGB loop (not vectorised: 13.5 ns/px, "
    "vs 2.2 ns/px for three planes + cv2.merge 0.13 ns/px); one packed threshold table instead of two "
    "(2.24 vs 2.35 ns/px: noise); L by an arithmetic cube root (3 Newton steps) instead of the "
    "interpolated table (1.35 vs 0.68 ms); annealed mean in 256-pixel blocks (offset indices defeat "
    "numba's non-negative-index proof: 2.9 ms, whole rows 0.69, four bins a pass 0.64); 512-bit "
    "vectors (NUMBA_CPU_FEATURES -prefer-256-bit: annealed mean 0.64 -> 0.53 ms, the rest unchanged; "
    "a process-wide setting, not adopted then; adopted 3 Dec, below).",
    "The lookups are the floor: an AVX2/AVX-512 gather costs 0.35-0.5 ns an element on this host. "
    "Second round (30 Nov, micro = the kernel in a loop, thread CPU, quiet window): the exact uint8 "
    "rounding in one packed lookup per channel (code + the threshold's 24-bit position in its "
    "bucket, exact because the bucket count is a power of two) plus 32-bit gather indices (64-bit "
    "ones made LLVM emit vpgatherqd): ab up + Lab→sRGB 512² 0.72 -> 0.54 ms, 2048² 12.4 -> 9.2 ms "
    "(the packed table with 64-bit indices alone: -4..7 %); 32-bit indices for the L(Y) table: "
    "sRGB→L 0.48 -> 0.41, 7.7 -> 6.5 ms; resize L with the horizontal pass as a vertical one "
    "between two cv2 transposes and four taps a pass: 512² 0.34 -> 0.21 ms, 2048² 2.47 -> 2.1; "
    "annealed mean with 2^r by a degree-5 Chebyshev polynomial, one FMA per exponent and eight "
    "bins a pass: 0.66 -> 0.53 ms; larsson16's decode as one kernel (reciprocals per pixel, the "
    "CMF redone with divisions near the quantile so its bin stays numpy's; 16 KiB tables that stay "
    "warm): 1.3-1.8 -> 0.41 ms micro, 0.5-0.7 in the pipeline; sRGB→L with the vertical resize "
    "pass in one kernel from 2048² up (2048² 10.4 -> 9.8 ms; slower below 2048², so not used "
    "there); Lab→sRGB in blocks of rows merged straight into the output (12 MB less at 2048²; "
    "9.35 -> 9.17 ms warm). The JPEG header by a marker parser instead of a Pillow open: "
    "codec.probe 25.6 -> 4.3 us, and decode's own Pillow open (~25 us) gone.",
    "Tried and not kept (second round): the L(Y) interpolation pair as one 64-bit gather (512² "
    "0.456 -> 0.479 ms, 2048² 7.19 -> 7.59); three uint8 planes into sRGB→L (the kernel 0.48 -> "
    "0.32 ms at 512²: the RGB deinterleave costs a third) but cv2.split of the whole image costs "
    "0.12 ms at 512² and 3.5 at 2048² (net 0.44 / 8.98 vs 0.48 / 7.92), and into reused 32 "
    "Ki-pixel block buffers 512² 0.463 -> 0.415, 2048² 7.60 -> 7.67: too little for a second path.",
    "Order effect: each pass runs the bare codecs, then eccv16, siggraph17, larsson16; at 2048² the "
    "first model's big buffers page-fault after the codecs' frees moved glibc's mmap threshold "
    "(sRGB→L + resize 12.6 vs 9.2 ms for the next models; one traced eccv16 Lab→sRGB took 2022 "
    "minor faults and 15.0 vs 10.1 ms); eccv16 carries that cost here, as a request after a heap "
    "trim (admission.trim_heap) does in the gateway.",
    "JPEG out from Y'CbCr planes (30 Nov, 19:45): for a JPEG without alpha the Lab kernel goes on "
    "to libjpeg's own fixed-point Y'CbCr of its uint8 sRGB and the 4:2:0 chroma average (jccolor.c, "
    "jcsample.c; fused.lab_to_ycbcr420_upsampled, codec.ycbcr420 the numpy statement) and the codec "
    "encodes the planes (simplejpeg.encode_jpeg_yuv_planes), so libjpeg's conversion and "
    "downsampling and the cv2.merge are skipped (the stage keeps its name, ab upsample + Lab→sRGB). "
    "The JPEG is byte-identical to encoding the sRGB where the width is a multiple of 16 (every size "
    "here); otherwise only the last 16 columns can differ (TurboJPEG pads planes by repeating the "
    "last chroma sample). Medians of three interleaved before/after runs (eccv16 / siggraph17 / "
    "larsson16): that stage + encode 768x512 2.12 / 2.42 / 2.13 -> 1.98 / 2.24 / 1.97 ms, 2048² "
    "20.5 / 21.5 / 20.6 -> 17.5 / 18.4 / 17.5 (encode 9.8 -> 7.2), 512² 1.42 / 1.56 / 1.46 -> "
    "1.42 / 1.54 / 1.37 (the Y'CbCr pass and 2x2 average cost the kernel +0.07 ms, the encode "
    "saves 0.07-0.14); ratios 768x512 2.28 / 2.14 / 2.22 -> 2.25 / 2.04 / 2.14, 2048² 2.15 / 2.02 "
    "/ 1.99 -> 2.03 / 1.93 / 1.87; at 512² no gain beyond the bare codec's run-to-run spread "
    "(1.6-1.9 ms; 2.17 / 1.90 / 2.07 -> 2.36 / 2.07 / 2.20 with gateway totals 3.8 / 3.4 / 3.6 -> "
    "3.9 / 3.4 / 3.7 ms).",
    "Third round (3 Dec). A helper kernel holding a loop, called from another kernel as a function, "
    "ran scalar in the process that compiled it, while later processes loaded the inlined, "
    "vectorised code from numba's cache: Lab→sRGB at 512² 2.5 ms compiling vs 0.43 ms cached (a "
    "gateway without a writable cache dir, or the first after an upgrade, paid ~2 ms a request; "
    "every earlier figure here was a cached run). Such helpers are now inlined in numba's IR "
    "(service.color.jit.kernel(inline=True); fresh 0.42 ms, cached 0.39), and a test checks that "
    "no kernel calls another out of line. On AVX-512 hosts the kernels now use 512-bit vectors "
    "(jit.vector_features; LLVM prefers 256-bit on Intel since Skylake-SP): in alternating runs "
    "annealed mean 0.60-0.62 -> 0.49-0.50 ms, ab upsample + Lab→Y'CbCr 768x512 0.93-1.00 -> "
    "0.79-0.86 ms. Annealed mean: the max pass eight bins a pass and 2^r by a degree-4 polynomial "
    "(relative error 4e-6, within 3e-5 ab of degree 5): micro 0.477 -> 0.422 ms at 256-bit.",
    "Default placement of eccv16's annealed mean (python -m bench --only placement, 30 Nov, CPU "
    "Triton on this host, c=1): end to end p50 gateway decode 106.3 ms vs eccv16_ab 123.9 ms "
    "(shm), 99.2 vs 124.2 ms (gRPC); Triton-direct 38.0 vs 46.8 ms (shm): the graph's softmax on "
    "the CPU costs more than the gateway's 1 ms kernel, so PRIORLAB_DECODE_IN_TRITON stays off "
    "and this bench measures eccv16 with its logits (what the default gateway runs).",
    "An AMD EPYC with AVX-512 and avx512_bf16, no AMX (4 Dec): the codec is 25-30 % faster than on "
    "the Intel host and every colour stage as fast or faster except ab upsample + Lab→Y'CbCr (2048² "
    "11.1 vs 8.4 ms), so the ratio lands at 1.92-2.28x in four runs. Its gathers are slow: with the "
    "quantizer's lookup replaced by arithmetic (wrong codes; a probe, synthetic Lab, thread CPU) the "
    "pass takes 0.58 instead of 1.25 ms at 768x512 and 8.5 instead of 15.5 at 2048², so the three "
    "gathers a pixel are half of it. 256-bit vectors are slower still (1.8 / 20.6 ms). With the table "
    "passed as an argument, LLVM emits scalar lookups (no vpgatherdd in the kernel's assembly): 1.07 "
    "/ 14.1 ms (-14 %, ratio about -0.1). Not adopted: on the Intel host the gathers are the fast "
    "path, so it needs a per-CPU choice made at start-up, and alone it would not bring this host "
    "under 2x.",
)


def numba_vectors() -> str:
    """The vector width the gateway's kernels were compiled for in this process (service.color.jit)."""
    from numba.core import registry

    features = registry.cpu_target.target_context.codegen()._tm_features
    return "512-bit allowed (AVX-512)" if "-prefer-256-bit" in features else "LLVM's default"


def fit(rgb: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """Centre crop to width:height, then PIL bicubic to width x height."""
    rows, cols = rgb.shape[:2]
    if cols * height > rows * width:  # too wide: keep the full height
        crop_w, crop_h = rows * width // height, rows
    else:
        crop_w, crop_h = cols, cols * height // width
    top, left = (rows - crop_h) // 2, (cols - crop_w) // 2
    image = Image.fromarray(np.ascontiguousarray(rgb[top : top + crop_h, left : left + crop_w]))
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


def true_ab(rgb: NDArray[np.uint8], size: int) -> NDArray[np.float32]:
    """(2, size, size) ab of the photo at the working size: what a perfect colorizer would predict."""
    small = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(lab.srgb_to_lab(small)[..., 1:].transpose(2, 0, 1), np.float32)


def _pooled(ab: NDArray[np.float32], stride: int) -> NDArray[np.float32]:
    _, rows, cols = ab.shape
    return ab.reshape(2, rows // stride, stride, cols // stride, stride).mean(axis=(2, 4))


def _peaked(distance2: NDArray[Any], width: float) -> NDArray[np.float16]:
    """Logits of a distribution peaked where `distance2` (bins, h, w) is small."""
    return (-distance2 / np.float32(2 * width * width)).astype(np.float16)[None]


def model_outputs(spec: ModelSpec, ab: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
    """Triton's answer for `spec`, shaped by the contract, peaked around the photo's true ab `(2, S, S)`."""
    size = ab.shape[-1]
    outputs: dict[str, NDArray[Any]] = {}
    for tensor in spec.outputs:
        stride = tensor.stride
        small = _pooled(ab, stride) if stride > 1 else ab
        if tensor.name == "ab":
            outputs["ab"] = small[None].astype(tensor.numpy_dtype)
        elif tensor.name == "logits":
            grid = ab_decode.ab_bins() if tensor.dims[0] == ab_decode.ab_bins().shape[0] else _grid_bins()
            d2 = ((grid[:, :, None, None] - small[None]) ** 2).sum(axis=1)
            outputs["logits"] = _peaked(d2, 10.0)
        elif tensor.name in ("hue", "chroma"):
            rgb = lab.lab_to_srgb(np.stack([np.full(small.shape[1:], 50.0, np.float32), *small], axis=-1))
            value = _hue(rgb) if tensor.name == "hue" else rgb.max(axis=-1) - rgb.min(axis=-1)
            centres = (np.arange(tensor.dims[0], dtype=np.float32) + 0.5) / tensor.dims[0]
            d2 = (centres[:, None, None] - value[None]) ** 2
            outputs[tensor.name] = np.exp(_peaked(d2, 0.05).astype(np.float32)).astype(np.float16)
        else:
            raise ValueError(f"no synthetic output for {spec.name}'s {tensor.name!r}")
        if outputs[tensor.name].shape != tensor.shape(1, size, size):
            raise ValueError(f"{tensor.name}: made {outputs[tensor.name].shape}, contract says otherwise")
    return outputs


def _grid_bins() -> NDArray[np.float32]:
    """SIGGRAPH17's 23x23 ab grid, a-major, 10 units apart from -110."""
    axis = np.arange(-110, 120, 10, dtype=np.float32)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)


def _hue(rgb: NDArray[np.float32]) -> NDArray[np.float32]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b) / (2 * np.pi) % 1.0).astype(np.float32)


# ---- the two sides of the ratio --------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """A JPEG codec candidate for the bare-codec baseline: decode to RGB, encode RGB at q90, 4:2:0."""

    name: str
    decode: Callable[[bytes], NDArray[np.uint8]]
    encode: Callable[[NDArray[np.uint8]], bytes]


def codec_candidates() -> list[Codec]:
    """Every candidate importable here (Pillow always)."""
    found = [Codec("pillow", _pil_decode, _pil_encode)]
    try:
        import simplejpeg
    except ImportError:
        log.info("simplejpeg not installed: not a candidate")
    else:
        found.append(
            Codec(
                "simplejpeg",
                lambda data: simplejpeg.decode_jpeg(data, colorspace="RGB"),
                lambda rgb: simplejpeg.encode_jpeg(rgb, QUALITY, colorspace="RGB", colorsubsampling="420"),
            )
        )
    try:
        import turbojpeg

        tj = turbojpeg.TurboJPEG()  # OSError/RuntimeError: no (or too old a) libturbojpeg
    except (ImportError, OSError, RuntimeError) as exc:
        log.info("PyTurboJPEG not usable: %s", exc)
    else:
        found.append(
            Codec(
                "pyturbojpeg",
                lambda data: tj.decode(data, pixel_format=turbojpeg.TJPF_RGB),
                lambda rgb: tj.encode(rgb, QUALITY, turbojpeg.TJPF_RGB, turbojpeg.TJSAMP_420),
            )
        )
    return found


def _pil_decode(data: bytes) -> NDArray[np.uint8]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def _pil_encode(rgb: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()


def served_by_default(kind: str) -> ModelSpec:
    """The Triton model a gateway with default settings serves for a public model name (eccv16 with its
    logits, or eccv16_ab if `PRIORLAB_DECODE_IN_TRITON` ever defaults to on): the work it really does."""
    return colorize.served_model(kind, Settings())


def gateway_once(
    image: bytes, spec: ModelSpec, outputs: Mapping[str, NDArray[Any]], clock: Clock = time.thread_time
) -> dict[str, float]:
    """One JPEG-in, JPEG-out Colorize without Triton: ms per stage and 'total'."""
    options = colorize.ColorizeOptions(
        model=spec.name,
        temperature=None,
        working_size=WORKING_SIZE_DEFAULT,
        output_format="",
        quality=QUALITY,
    )
    laps = Laps(clock)
    laps.restart()
    start = clock()
    service_codec.probe(image, **_LIMITS)  # admission reads the header first (ColorizePipeline._admitted)
    laps("header")
    prepared = colorize.prepare(image, spec, options, **_LIMITS, lap=laps)
    prepared_at = clock()
    laps.restart()  # the Triton call would be here: not the gateway's work
    post_start = clock()
    encoded, fmt = colorize.postprocess(prepared, dict(outputs), options, lap=laps)
    end = clock()
    if fmt != "JPEG" or not encoded:
        raise RuntimeError(f"{spec.name}: expected JPEG out, got {fmt} ({len(encoded)} bytes)")
    return {**laps.ms, "total": (prepared_at - start + end - post_start) * 1e3}


# ---- one run ---------------------------------------------------------------------------------------


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items() if values}


def measure_size(
    width: int,
    height: int,
    photos: Sequence[NDArray[np.uint8]],
    codecs: Sequence[Codec],
    reps: int,
    clock: Clock = time.thread_time,
) -> dict[str, Any]:
    """Bare codec per candidate and the gateway per model kind on the same JPEGs, interleaved."""
    jpegs = [jpeg_bytes(fit(rgb, width, height), QUALITY) for rgb in photos]
    specs = [served_by_default(kind) for kind in MODEL_KINDS]
    outputs = {
        spec.name: [
            model_outputs(spec, true_ab(fit(rgb, width, height), WORKING_SIZE_DEFAULT)) for rgb in photos
        ]
        for spec in specs
    }
    bare: dict[str, dict[str, list[float]]] = {
        c.name: {"decode": [], "encode": [], "total": []} for c in codecs
    }
    gateway: dict[str, dict[str, list[float]]] = {spec.name: {} for spec in specs}
    for rep in range(reps + 1):  # the first pass warms caches, tables and lazy imports: not counted
        for index, image in enumerate(jpegs):
            for codec in codecs:
                start = clock()
                rgb = codec.decode(image)
                decoded = clock()
                codec.encode(rgb)
                end = clock()
                if rep:
                    for key, ms in (
                        ("decode", decoded - start),
                        ("encode", end - decoded),
                        ("total", end - start),
                    ):
                        bare[codec.name][key].append(ms * 1e3)
            for spec in specs:
                stages = gateway_once(image, spec, outputs[spec.name][index], clock)
                if rep:
                    for key, ms in stages.items():
                        gateway[spec.name].setdefault(key, []).append(ms)
    bare_ms = {name: medians(s) for name, s in bare.items()}
    fastest = min(bare_ms, key=lambda name: bare_ms[name]["total"])
    return {
        "size": f"{width}x{height}",
        "jpeg_kib": round(statistics.mean(len(j) for j in jpegs) / 1024, 1),
        "samples": reps * len(jpegs),
        "bare_ms": bare_ms,
        "fastest_codec": fastest,
        "gateway_ms": {name: medians(s) for name, s in gateway.items()},
    }


def figures(sizes: Sequence[Mapping[str, Any]]) -> list[Figure]:
    """gateway ÷ fastest bare codec, per size and model kind."""
    found = []
    for entry in sizes:
        bare = entry["bare_ms"][entry["fastest_codec"]]["total"]
        for model, stages in entry["gateway_ms"].items():
            found.append(
                Figure(
                    key=f"gateway_over_codec_{model}_{entry['size']}",
                    label=f"gateway's own time ÷ bare JPEG decode+encode ({model}, {entry['size']} JPEG in "
                    "and out, working size 256, Triton excluded)",
                    value=stages["total"] / bare,
                    goal=GOAL,
                    direction="<=",
                    context=f"gateway {stages['total']:.1f} ms, bare {entry['fastest_codec']} {bare:.1f} ms",
                )
            )
    return found


def breakdown_rows(sizes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Plot panels: per size, the fastest bare codec's decode and encode, then each model's stages (ms)."""
    panels: dict[str, dict[str, dict[str, float]]] = {}
    for entry in sizes:
        fastest = entry["fastest_codec"]
        bare = entry["bare_ms"][fastest]
        rows = {f"bare codec ({fastest})": {"decode": bare["decode"], "encode": bare["encode"]}}
        for model, stages in entry["gateway_ms"].items():
            rows[f"gateway, {model}"] = {k: v for k, v in stages.items() if k != "total"}
        panels[entry["size"]] = rows
    return panels


def render(document: Mapping[str, Any]) -> str:
    """gateway_overhead.md from the JSON document (pure)."""
    env = document["environment"]
    lines = [
        "# Gateway overhead: the gateway's own work ÷ the bare codec",
        "",
        f"`{document['command']}` on {document['generated']}"
        + (" — **quick smoke run**: noisy, do not quote." if document["quick"] else "."),
        f"CPU {env['cpu']} (ISA {env['isa']}), "
        f"load average {env['load_before']} → {env['load_after']}, OMP threads {env['omp_threads']}, "
        f"OpenCV threads {env.get('cv2_threads', '?')}, clock: {_CLOCK_TEXT.get(env.get('clock', ''), '?')}, "
        f"numba vectors: {env.get('numba_vectors', '?')}.",
        "Gateway = admission's header read (`codec.probe`) + `colorize.prepare` + `colorize.postprocess` "
        "(JPEG in, JPEG out q90, working size 256, the models the default settings serve, the model's "
        "output precomputed: Triton excluded). Bare = decode + encode of the same JPEG. Medians.",
        "",
        "## Figures",
        "",
        *table(
            (
                "size",
                "model",
                "gateway ms",
                "bare ms (fastest codec)",
                "ratio",
                "goal",
                "verdict",
                "ratio to Pillow's decode + encode",
            ),
            _figure_rows(document),
        ),
        "## Bare codec candidates (decode + encode ms)",
        "",
    ]
    codecs = list(document["sizes"][0]["bare_ms"]) if document["sizes"] else []
    lines += table(
        ("size", *codecs),
        (
            (
                e["size"],
                *(_codec_cell(e["bare_ms"][c]) for c in codecs),
            )
            for e in document["sizes"]
        ),
    )
    lines += ["## Gateway stages (ms)", ""]
    for entry in document["sizes"]:
        stage_names = list(dict.fromkeys(k for s in entry["gateway_ms"].values() for k in s))
        lines += [f"{entry['size']} ({entry['jpeg_kib']} KiB JPEG, {entry['samples']} samples per cell):", ""]
        lines += table(
            ("model", *stage_names),
            (
                (model, *(f"{stages[k]:.2f}" if k in stages else "—" for k in stage_names))
                for model, stages in entry["gateway_ms"].items()
            ),
        )
    lines += [f"![{document['plot']}]({document['plot']})", ""] if document.get("plot") else []
    lines += [f"- {note}" for note in document.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def _figure_rows(document: Mapping[str, Any]) -> list[tuple[str, ...]]:
    figures = {f["key"]: f for f in document["figures"]}
    rows: list[tuple[str, ...]] = []
    for entry in document["sizes"]:
        fastest = entry["fastest_codec"]
        pillow = entry["bare_ms"].get("pillow", {}).get("total")
        for model, stages in entry["gateway_ms"].items():
            figure = figures[f"gateway_over_codec_{model}_{entry['size']}"]
            rows.append(
                (
                    entry["size"],
                    model,
                    f"{stages['total']:.1f}",
                    f"{entry['bare_ms'][fastest]['total']:.1f} ({fastest})",
                    format_value(figure["value"], "×"),
                    goal_text(figure),
                    verdict(figure),
                    format_value(stages["total"] / pillow, "×") if pillow else "n/a",
                )
            )
    return rows


_CLOCK_TEXT = {"cpu": "the thread's CPU time", "wall": "wall time"}


def _codec_cell(ms: Mapping[str, float]) -> str:
    return f"{ms['decode']:.2f} + {ms['encode']:.2f} = {ms['total']:.2f}"


def measure(*, quick: bool, max_photos: int, clock: str = "cpu") -> dict[str, Any]:
    # One thread for OpenCV's calls in the gateway, as the codec has: the ratio compares one core's
    # work with one core's work (under load the gateway's concurrent requests use the other cores).
    cv2.setNumThreads(1)
    paths = photo_paths(max_photos)
    photos = [load_rgb(p) for p in paths]
    codecs = codec_candidates()
    load_before = machine.load_average()
    sizes = []
    for width, height in SIZES:
        reps = (1 if quick else 3) if width * height > 1_000_000 else (2 if quick else 15)
        log.info("%dx%d: %d photos x %d passes", width, height, len(photos), reps)
        sizes.append(measure_size(width, height, photos, codecs, reps, CLOCKS[clock]))
    return {
        "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "quick": quick,
        "photos": [p.name for p in paths],
        "environment": {
            **machine.describe(),  # with the ISA (bench.machine.isa, from /proc/cpuinfo)
            "omp_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "cv2_threads": cv2.getNumThreads(),
            "numba_vectors": numba_vectors(),
            "clock": clock,
            "load_before": load_before,
            "load_after": machine.load_average(),
        },
        "codecs": [c.name for c in codecs],
        "notes": [
            "Candidates are the codecs importable here: Pillow (libjpeg-turbo inside), simplejpeg (its wheel "
            "bundles libjpeg-turbo; the gateway's JPEG codec), PyTurboJPEG where it loads a libturbojpeg "
            "(PyTurboJPEG 2.x needs libjpeg-turbo >= 3; Debian 12's libturbojpeg0 is 2.1.5, so 1.8.x). "
            "Pillow-SIMD has no wheel (source only, and it replaces Pillow): not a candidate.",
            "The denominator is the fastest candidate's decode + encode of the same JPEG (q90, 4:2:0).",
            *FUSED_NOTES,
        ],
        "sizes": sizes,
        "figures": [f.as_dict() for f in figures(sizes)],
    }


def write(document: dict[str, Any], out: Path, stem: str = "gateway_overhead") -> dict[str, Any]:
    """JSON, markdown and the stage breakdown PNG under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    plot = plots.stacked_bars(
        breakdown_rows(document["sizes"]),
        out / f"{stem}.png",
        "gateway's own work per stage vs the bare codec (JPEG in/out, Triton excluded)",
    )
    document["plot"] = plot.name if plot else None
    (out / f"{stem}.json").write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    (out / f"{stem}.md").write_text(render(document))
    return document


def run(ctx: Any) -> dict[str, Any]:
    """As a part of `python -m bench` (bench/__main__.py)."""
    document = measure(quick=ctx.config.quick, max_photos=ctx.config.max_photos)
    document["command"] = "python -m bench" + (" --quick" if ctx.config.quick else "")
    write(document, ctx.out)
    return {
        "markdown": "gateway_overhead.md",
        "plots": [document["plot"]] if document["plot"] else [],
        "notes": [f"per-stage tables: gateway_overhead.md; ISA {document['environment']['isa']}"],
        "sizes": document["sizes"],
        "figures": document["figures"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="2 passes (1 at 2048²): a smoke run")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results[/quick])")
    parser.add_argument("--max-photos", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="what a sample measures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if os.environ.get("OMP_NUM_THREADS") != "1":
        log.warning("OMP_NUM_THREADS is not 1: BLAS threads' time escapes the cpu clock")
    document = measure(quick=args.quick, max_photos=args.max_photos, clock=args.clock)
    document["command"] = "python -m bench.gateway_overhead" + (" --quick" if args.quick else "")
    document["command"] += f" --clock {args.clock}"
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    write(document, out)
    for figure in document["figures"]:
        value = format_value(figure["value"], "×")
        print(f"{value:>8}  {verdict(figure):<12} {figure['context']}  {figure['key']}")
    print(f"wrote {out / 'gateway_overhead.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
