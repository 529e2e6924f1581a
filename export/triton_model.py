"""Triton Python-backend model hosting an onnxruntime session (CPU hosts).

Export copies this file to `model_repository/<model>/<version>/model.py` beside `model.onnx`.
It is model-agnostic: tensor names come from the model's config.pbtxt, which export writes from
the contract. The pytriton build of tritonserver has only the Python backend, so this is how CI
and `make run` serve ONNX; GPU hosts use `configs/gpu.pbtxt` (native onnxruntime + TensorRT).

Batching is manual in the Python backend: the dynamic batcher hands `execute` a list of
requests, and same-shape requests are concatenated into one ORT run, then split again.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("ORT_INTRA_OP_THREADS", "0"))
        options.inter_op_num_threads = 1
        if params.get("ORT_ALLOW_SPINNING", "1") == "0":
            # Spinning threads burn the cores the gateway and the batcher need (p50 10.4 -> 7.9 ms).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        # Image-like inputs (C, H, W) must agree on H and W; per-item vectors (T) have one dim.
        self.spatial = [len(t["dims"]) == 3 for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.multiple = int(params.get("SPATIAL_MULTIPLE", "1"))

    def _shape_error(self, arrays: list[np.ndarray]) -> str | None:
        height, width = arrays[0].shape[-2:]
        if height % self.multiple or width % self.multiple:
            return f"spatial size {height}x{width} is not a multiple of {self.multiple}"
        for name, a, spatial in zip(self.inputs, arrays, self.spatial, strict=True):
            if spatial and (a.ndim != 4 or a.shape[-2:] != (height, width)):
                return f"input {name} has shape {list(a.shape)}; expected [N, C, {height}, {width}]"
        return None

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        batches = []
        for i, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs]
            batches.append(arrays)
            error = self._shape_error(arrays)
            if error is not None:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG)
                )
                continue
            groups.setdefault(tuple(a.shape[1:] for a in arrays), []).append(i)
        for members in groups.values():
            feeds = {
                name: np.concatenate([batches[i][k] for i in members]) for k, name in enumerate(self.inputs)
            }
            results = self.session.run(self.outputs, feeds)
            start = 0
            for i in members:
                n = batches[i][0].shape[0]
                tensors = [
                    pb_utils.Tensor(name, r[start : start + n])
                    for name, r in zip(self.outputs, results, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses
