"""Realistic inputs from real photos, never random noise: samples/, or PRIORLAB_BENCH_DATA (bench/config.py).

- `working_l`: each photo's L plane at the working size, made by the gateway's own functions
  (sRGB -> L, PIL bicubic resize), i.e. exactly the tensor the gateway sends to Triton.
- `request_jpegs`: each photo centre-cropped to a square, resized to the request size, JPEG q90.
- `write_input_data`: perf_analyzer `--input-data` JSON, one entry per photo.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bench.config import BENCH_DATA_ENV, EVAL_IMAGES
from contract import ANNEALED_T_DEFAULT, ModelSpec
from service.color import ab_decode, lab

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_SIDE = 128  # smaller images (samples/' DIP crop and its mask) are not photos to colorize


def is_photo(path: Path) -> bool:
    if path.suffix.lower() not in PHOTO_SUFFIXES:
        return False
    with Image.open(path) as image:
        return min(image.size) >= MIN_SIDE


def photo_paths(limit: int, folder: Path = EVAL_IMAGES) -> list[Path]:
    """The first `limit` photos under `folder` (recursively, sorted by path)."""
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and is_photo(p)]
    if not paths:
        raise FileNotFoundError(
            f"no photos ({', '.join(PHOTO_SUFFIXES)}, sides >= {MIN_SIDE} px) under {folder}: "
            f"point {BENCH_DATA_ENV} at a folder of photos, or unset it to use the repository's samples/"
        )
    return paths[:limit]


def load_rgb(path: Path) -> NDArray[np.uint8]:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def working_l(rgb: NDArray[np.uint8], size: int) -> NDArray[np.float32]:
    """(1, 1, size, size) float32 L in [0, 100], as the gateway computes it."""
    lightness = lab.srgb_to_l(rgb)
    return ab_decode.resize_l(lightness, (size, size))[None, None]


def square(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Centre crop to a square, then PIL bicubic to size x size."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = Image.fromarray(np.ascontiguousarray(rgb[top : top + side, left : left + side]))
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))


def jpeg_bytes(rgb: NDArray[np.uint8], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def request_jpegs(paths: list[Path], size: int) -> list[bytes]:
    return [jpeg_bytes(square(load_rgb(p), size)) for p in paths]


def model_inputs(spec: ModelSpec, l_plane: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
    """One request's inputs for `spec`: L from a photo, T at the default; any other input zeros."""
    _, _, height, width = l_plane.shape
    inputs: dict[str, NDArray[Any]] = {}
    for tensor in spec.inputs:
        shape = tensor.shape(1, height, width)
        if tensor.name == "L":
            inputs[tensor.name] = l_plane.astype(tensor.numpy_dtype)
        elif tensor.name == "T":
            inputs[tensor.name] = np.full(shape, ANNEALED_T_DEFAULT, tensor.numpy_dtype)
        else:  # e.g. a future model's hint planes: no hints
            inputs[tensor.name] = np.zeros(shape, tensor.numpy_dtype)
    return inputs


def input_data_json(spec: ModelSpec, l_planes: list[NDArray[np.float32]]) -> dict[str, Any]:
    """perf_analyzer's `--input-data` document: base64 raw tensors with their shapes (batch excluded)."""
    entries = []
    for plane in l_planes:
        entry = {}
        for name, array in model_inputs(spec, plane).items():
            entry[name] = {
                "b64": base64.b64encode(np.ascontiguousarray(array[0]).tobytes()).decode("ascii"),
                "shape": list(array.shape[1:]),
            }
        entries.append(entry)
    return {"data": entries}


def write_input_data(path: Path, spec: ModelSpec, l_planes: list[NDArray[np.float32]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data_json(spec, l_planes)))
    return path


def output_bytes(spec: ModelSpec, size: int) -> int:
    """The largest output tensor of one request at size x size (perf_analyzer's shm region per output)."""
    return max(int(np.prod(t.shape(1, size, size))) * np.dtype(t.numpy_dtype).itemsize for t in spec.outputs)
