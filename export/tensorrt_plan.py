"""`python -m export.tensorrt_plan`: build a TensorRT plan from an exported ONNX (GPU hosts only).

A plan is tied to the TensorRT version and the GPU architecture, so it is built on the host (or
image) that serves it, with the TensorRT of that Triton release. The network is built strongly
typed: TensorRT 11 has no FP16 builder flag, so precision comes from the ONNX graph itself
(docs/serving.md §2.4). Triton then serves it with `platform: "tensorrt_plan"`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract import MODELS, WORKING_SIZE_DEFAULT, WORKING_SIZE_MAX, WORKING_SIZE_MIN


def _why_not_here() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "the `tensorrt` Python package is not installed (it ships with NVIDIA's Triton/TensorRT images)"
        )
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible: a TensorRT plan is compiled for the GPU that will run it"
    except ImportError:
        pass
    return None


def build_plan(onnx_path: Path, plan_path: Path, model: str, max_batch: int) -> None:
    import tensorrt as trt

    spec = MODELS[model]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    profile = builder.create_optimization_profile()
    for tensor in spec.inputs:
        channels = tensor.dims[0]
        profile.set_shape(
            tensor.name,
            (1, channels, WORKING_SIZE_MIN, WORKING_SIZE_MIN),
            (4, channels, WORKING_SIZE_DEFAULT, WORKING_SIZE_DEFAULT),
            (max_batch, channels, WORKING_SIZE_MAX, WORKING_SIZE_MAX),
        )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan_path.write_bytes(bytes(serialized))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt_plan", description=__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="eccv16")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)
    reason = _why_not_here()
    if reason is not None:
        print(
            f"cannot build a TensorRT plan on this host: {reason}. Run this on a GPU host "
            f"(e.g. inside the Dockerfile's triton image); CPU hosts serve configs/cpu.pbtxt instead.",
            file=sys.stderr,
        )
        return 2
    version_dir = args.repository / args.model / str(args.version)
    build_plan(
        version_dir / "model.onnx", version_dir / "model.plan", args.model, MODELS[args.model].max_batch_size
    )
    print(f'wrote {version_dir / "model.plan"}; serve it with platform: "tensorrt_plan"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
