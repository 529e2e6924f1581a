"""PyTorch colorizer -> ONNX with the contract's tensor names, dynamic N/H/W, parity-checked.

The graph is exported once in fp32 (so parity against PyTorch can be gated at 1e-4), then its
outputs are cast to the contract's dtype (FP16 logits: half the bytes on the wire, and the
annealed mean does not need more precision, see docs/serving.md §2.3).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.export import Dim

from contract import AB_NORM, ModelSpec

_ONNX_DTYPES = {"FP32": TensorProto.FLOAT, "FP16": TensorProto.FLOAT16}
OPSET = 18


class _LogitsHead(nn.Module):
    """Exposes `model.logits` as `forward`: the served graph stops before the decode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.model.logits(lightness)  # type: ignore[operator]


class _AnnealedMeanHead(nn.Module):
    """logits -> softmax(logits / T) -> expectation over the bin centres, in Lab units.

    softmax(log z / T) of z = softmax(logits) equals softmax(logits / T): the annealed mean
    f_T(z) ∝ exp(log z / T) without computing z first.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lightness: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(lightness)  # type: ignore[operator]
        probs = torch.softmax(logits / temperature.reshape(-1, 1, 1, 1), dim=1)
        return self.model.model_out(probs) * AB_NORM  # type: ignore[operator]


class _BothHeads(nn.Module):
    """SIGGRAPH17: regression ab and the 529-class logits (colour suggestions) in one graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, lightness: torch.Tensor, ab_hint: torch.Tensor, hint_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_both(lightness, ab_hint, hint_mask)  # type: ignore[operator]


def graph_module(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The module whose forward is exactly the served graph (inputs/outputs of `spec`)."""
    if spec.name == "eccv16":
        return _LogitsHead(model).eval()
    if spec.name == "eccv16_ab":
        return _AnnealedMeanHead(model).eval()
    if spec.name == "siggraph17":
        return _BothHeads(model).eval()
    if spec.name == "larsson16":
        return model.eval()  # its forward is the served graph: hue and chroma distributions
    raise ValueError(f"no export graph for model {spec.name!r}")


def to_onnx_fp32(module: nn.Module, spec: ModelSpec, example: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    """Export `module` (fp32 in and out) with the contract's names and dynamic N, H, W.

    torch.export (dynamo) is the maintained exporter; it takes seconds rather than the legacy
    tracer's fraction of one, and gives the same parity (docs/serving.md §2.1).
    """
    batch = Dim("N", min=1, max=64)
    height, width = Dim("H", min=8, max=4096), Dim("W", min=8, max=4096)
    dynamic: list[dict[int, Dim]] = []
    for tensor in spec.inputs:
        # Spatial inputs share H and W (the graph adds or concatenates them).
        dynamic.append({0: batch, 2: height, 3: width} if tensor.spatial else {0: batch})
    with warnings.catch_warnings():
        # Raised when two inputs share the batch Dim (L and T): the shared name is what we want.
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        program = torch.onnx.export(
            module,
            example,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes=tuple(dynamic),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError(f"torch.onnx.export returned no program for {spec.name}")
    return program.model_proto


def cast_outputs(model: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """Append a Cast to each output whose contract dtype differs from the traced fp32."""
    graph = model.graph
    for out in graph.output:
        target = _ONNX_DTYPES[spec.output(out.name).dtype]
        if out.type.tensor_type.elem_type == target:
            continue
        inner = f"{out.name}_fp32"
        for node in graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
        graph.node.append(helper.make_node("Cast", [inner], [out.name], to=target, name=f"cast_{out.name}"))
        out.type.tensor_type.elem_type = target
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class Parity:
    shape: tuple[int, ...]
    max_abs_diff: float


def check_parity(
    model: onnx.ModelProto, module: nn.Module, inputs: tuple[torch.Tensor, ...], *, atol: float
) -> list[Parity]:
    """Run ORT and PyTorch on the same inputs; raise if any output differs by more than atol."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = module(*inputs)
    wants = want if isinstance(want, tuple) else (want,)
    results = []
    for g, w in zip(got, wants, strict=True):
        diff = float(np.max(np.abs(g.astype(np.float32) - w.numpy())))
        # atol is per unit of the output's own scale: ab reaches ±110 and logits tens, where two correct
        # fp32 implementations summing in different orders differ by ~1e-5 relative, and on a loaded
        # host an occasional 2e-3 absolute was seen (fresh clone, siggraph17 logits). A broken export
        # is off by O(1) or more.
        limit = atol * max(1.0, float(np.max(np.abs(w.numpy()))))
        if not diff <= limit:
            raise ValueError(
                f"ONNX/PyTorch parity failed at {tuple(inputs[0].shape)}: max |diff| {diff} > {limit:.3g}"
                f" ({atol} x the output's max |value|)"
            )
        results.append(Parity(tuple(inputs[0].shape), diff))
    return results


def example_inputs(
    spec: ModelSpec, batch: int, height: int, width: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs in each tensor's natural range (L in [0, 100])."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for tensor in spec.inputs:
        x = torch.rand(tensor.shape(batch, height, width), generator=generator)
        if tensor.name == "L":
            x = x * 100
        elif tensor.name == "T":
            x = 0.1 + 0.9 * x  # the valid (0, 1] range, away from the argmax limit
        elif tensor.name == "hint_mask":
            x = (x > 0.95).float()  # a few hinted pixels
        elif tensor.name == "ab_hint":
            x = (x - 0.5) * 120
        tensors.append(x)
    return tuple(tensors)


def export_model(
    model: nn.Module, spec: ModelSpec, *, parity_sizes: tuple[tuple[int, int], ...]
) -> tuple[onnx.ModelProto, list[Parity]]:
    """Export, gate fp32 parity (atol 1e-4) at every size, then cast outputs to the contract."""
    module = graph_module(model.eval(), spec)
    fp32 = to_onnx_fp32(module, spec, example_inputs(spec, 1, *parity_sizes[0]))
    parity: list[Parity] = []
    for i, (h, w) in enumerate(parity_sizes):
        parity += check_parity(fp32, module, example_inputs(spec, 1 + i, h, w, seed=i), atol=1e-4)
    return cast_outputs(fp32, spec), parity
