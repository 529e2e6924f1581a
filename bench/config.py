"""Run settings: the full benchmark (< 30 min on 2 cores) and the `--quick` smoke run (~5 min)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The photos behind every request: the repository's samples/ (5 photos), or a larger folder of your own
# in PRIORLAB_BENCH_DATA, searched recursively (the committed results used Set5 + Set14, 19 photos).
BENCH_DATA_ENV = "PRIORLAB_BENCH_DATA"
EVAL_IMAGES = Path(os.environ.get(BENCH_DATA_ENV) or ROOT / "samples")
MODEL_REPOSITORY = ROOT / "model_repository"

PARTS = (
    "perf_analyzer",
    "gateway",
    "gateway_overhead",
    "baseline",
    "kernels",
    "placement",
    "dip",
    "autostop",
    "http_hint",
    "overload",
    "memory",
)


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    working_size: int = 256  # the gateway's default, the model's batching bucket
    request_size: int = 512  # side of the JPEG the load generator sends
    output_format: str = "PNG"  # the API's default output
    max_photos: int = 19  # all of Set5 + Set14 when PRIORLAB_BENCH_DATA holds them
    # Part 1: perf_analyzer (docs/serving.md §6 recipe).
    pa_concurrency: tuple[int, ...] = (1, 2, 3, 4)
    pa_interval_ms: int = 3000
    pa_stability: int = 50  # UNCHECKED (1000) turns the stability check off
    pa_max_trials: int = 6
    pa_budget_s: float = 480.0  # shared equally by the served models (eccv16 first)
    # Part 2: gateway load, bounded per concurrency level in count and time.
    gateway_concurrency: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    gateway_requests: int = 160
    gateway_seconds: float = 12.0
    direct_requests: int = 60  # Triton-direct calls at c=1 (the ratio's denominator)
    stage_reps: int = 3  # in-process stage timing passes over the photos
    # Part 3: baseline, interleaved rounds over the same photos.
    baseline_rounds: int = 2
    baseline_concurrency: int = 4
    # Part 4: kernels.
    lab_size: int = 1024
    kernel_reps: int = 5
    sgemm_n: int = 2048
    # Part 5: decode placement, c=1 requests per variant.
    placement_requests: int = 40
    placement_gateway_requests: int = 30
    # Part 6: DIP (python -m bench.dip.speed) arguments and wall-clock budget.
    # reference_loop is the issue #19 yardstick (0.96x the authors' code), default what the service runs
    # (bf16 NHWC where native), channels_last its fp32 (bf16=False) at AVX512; its own file, so
    # `python -m bench.dip.speed`'s full table stays.
    dip_args: tuple[str, ...] = (
        "--variants", "reference_loop,default,channels_last", "--warmup", "2", "--timed", "5",
        "--name", "speed_bench",
    )  # fmt: skip
    dip_timeout_s: float = 300.0

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(quick=False)

    @classmethod
    def smoke(cls) -> BenchConfig:
        return cls(
            quick=True,
            max_photos=6,
            pa_concurrency=(1, 4),
            pa_interval_ms=1000,
            pa_stability=1000,  # a smoke run: one 3-window measurement per level, no stability retries
            pa_max_trials=3,
            pa_budget_s=40.0,
            gateway_concurrency=(1, 4),
            gateway_requests=12,
            gateway_seconds=4.0,
            direct_requests=10,
            stage_reps=1,
            baseline_rounds=1,
            kernel_reps=2,
            sgemm_n=1024,
            placement_requests=8,
            placement_gateway_requests=6,
            dip_args=("--quick",),
            dip_timeout_s=180.0,
        )
