"""config.pbtxt text for a contract model: `configs/cpu.pbtxt` and `configs/gpu.pbtxt`.

One model repository serves CPU hosts (Python backend hosting onnxruntime; the only backend in
the pytriton build) and GPU hosts (native onnxruntime backend with the TensorRT accelerator,
FP16), selected by `tritonserver --model-config-name=cpu|gpu` (docs/serving.md §1.1).
"""

from __future__ import annotations

from collections.abc import Mapping

from contract import (
    WORKING_SIZE_DEFAULT,
    WORKING_SIZE_MAX,
    WORKING_SIZE_MIN,
    WORKING_SIZE_MULTIPLE,
    ModelSpec,
    TensorSpec,
)

# Backpressure behind the gateway's own admission (service/gateway/admission.py, issue #16): a full
# queue is refused at once (the gateway maps it to RESOURCE_EXHAUSTED) instead of growing latency
# without bound. One gateway sends at most PRIORLAB_MAX_CONCURRENT_COLORIZE (16) calls at a time, so
# 32 holds two gateways' calls. A request that carries its own timeout (allow_timeout_override) is
# dropped from the queue when that passes, the caller's deadline; one without it waits at most the
# gateway's cap for callers who set no deadline (Settings.triton_timeout_s, 30 s), so Triton never
# computes an answer the gateway has stopped waiting for.
MAX_QUEUE_SIZE = 32
QUEUE_TIMEOUT_US = 30_000_000


def _tensors(kind: str, specs: tuple) -> str:
    rows = [
        f'  {{ name: "{t.name}" data_type: TYPE_{t.dtype} dims: [ {", ".join(str(d) for d in t.dims)} ] }}'
        for t in specs
    ]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _parameters(params: Mapping[str, str]) -> str:
    return "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in sorted(params.items())
    )


def _batching() -> str:
    return (
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 0\n"
        f"  default_queue_policy {{ max_queue_size: {MAX_QUEUE_SIZE} timeout_action: REJECT"
        f" default_timeout_microseconds: {QUEUE_TIMEOUT_US} allow_timeout_override: true }}\n"
        "}\n"
    )


def _warmup(spec: ModelSpec, size: int) -> str:
    def dims(t: TensorSpec) -> str:
        return ", ".join(str(d) for d in t.shape(1, size, size)[1:])

    # T = 1 (not zero data): the annealed mean divides by it.
    inputs = "".join(
        f'    inputs {{ key: "{t.name}" value: {{ data_type: TYPE_{t.dtype}'
        f" dims: [ {dims(t)} ] {'zero_data: true' if t.spatial else 'random_data: true'} }} }}\n"
        for t in spec.inputs
    )
    return f'model_warmup [ {{\n  name: "w{size}" batch_size: 1 count: 1\n{inputs}}} ]\n'


def cpu_config(spec: ModelSpec, params: Mapping[str, str]) -> str:
    """Python backend + onnxruntime on CPU, ORT spinning off, dynamic batching, bounded queue."""
    backend_params = {
        "ORT_ALLOW_SPINNING": "0",
        "ORT_INTRA_OP_THREADS": "0",
        "SPATIAL_MULTIPLE": str(WORKING_SIZE_MULTIPLE),
        **params,
    }
    return (
        f"# Written by `python -m export` from contract.{spec.name.upper()}; do not edit by hand.\n"
        f'name: "{spec.name}"\nbackend: "python"\nmax_batch_size: {spec.max_batch_size}\n'
        + _tensors("input", spec.inputs)
        + _tensors("output", spec.outputs)
        + "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        + _batching()
        + _warmup(spec, WORKING_SIZE_DEFAULT)
        + _parameters(backend_params)
    )


def gpu_config(spec: ModelSpec, params: Mapping[str, str]) -> str:
    """Native onnxruntime backend with the TensorRT accelerator in FP16, engine cache, profiles."""

    def shapes(size: int, batch: int) -> str:
        return ",".join(
            f"{t.name}:{'x'.join(str(d) for d in t.shape(batch, size, size))}" for t in spec.inputs
        )

    trt = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/triton_trt_cache",
        "trt_profile_min_shapes": shapes(WORKING_SIZE_MIN, 1),
        "trt_profile_opt_shapes": shapes(WORKING_SIZE_DEFAULT, 4),
        "trt_profile_max_shapes": shapes(WORKING_SIZE_MAX, spec.max_batch_size),
    }
    accel = "".join(f'      parameters {{ key: "{k}" value: "{v}" }}\n' for k, v in trt.items())
    return (
        f"# Written by `python -m export` from contract.{spec.name.upper()}; do not edit by hand.\n"
        f'name: "{spec.name}"\nbackend: "onnxruntime"\nmax_batch_size: {spec.max_batch_size}\n'
        + _tensors("input", spec.inputs)
        + _tensors("output", spec.outputs)
        + "instance_group [ { kind: KIND_GPU count: 1 } ]\n"
        + _batching().replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 200")
        + "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
        + '    name: "tensorrt"\n'
        + accel
        + "} ] } }\n"
        + _warmup(spec, WORKING_SIZE_DEFAULT)
        + _parameters(params)
    )
