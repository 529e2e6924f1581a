"""The tensor contract shared by export (writes it) and the gateway (reads it).

Stdlib only: the gateway imports this without torch, and export imports it without grpc.
Everything a Triton request or an ONNX graph must agree on lives here: model names, tensor
names, dtypes, shapes (batch dimension excluded, as in `config.pbtxt`), size rules and the
normalisation constants of richzhang/colorization `colorizers/base_color.py`.

The ab bin tables (`assets/`) are part of the contract too: the 313-logit head and the
gateway's annealed-mean decoder must use the same row order (a-major, `pts_in_hull.npy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Lab normalisation the networks apply internally: they see (L - 50) / 100 and ab / 110.
L_CENT = 50.0
L_NORM = 100.0
AB_NORM = 110.0

# ECCV16 annealed mean: f_T(z) ∝ exp(log z / T). 0.38 = 1 / 2.606, the Caffe deploy logit scale.
ANNEALED_T_DEFAULT = 0.38

NUM_AB_BINS = 313  # in-gamut bins of the 10-unit ab grid (pts_in_hull.npy)
NUM_AB_GRID_BINS = 529  # the full 23 x 23 grid (pts_grid.npy), SIGGRAPH17's class head
# Larsson16: uniform bins over HSV hue [0, 1) and chroma max - min of RGB [0, 1] (bin k centred at
# (k + 0.5) / 32), decoded in the gateway (service/color/hue_chroma.py).
NUM_HUE_BINS = 32
NUM_CHROMA_BINS = 32

# Working resolution: the square the colour is predicted at (upstream demo: 256).
WORKING_SIZE_DEFAULT = 256
WORKING_SIZE_MIN = 64
WORKING_SIZE_MAX = 1024
WORKING_SIZE_MULTIPLE = 8  # three stride-2 stages; SIGGRAPH17's shortcuts need it too

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor; `dims` excludes the batch dimension, -1 marks a dynamic one."""

    name: str
    dtype: str  # Triton's name: FP32, FP16, UINT8
    dims: tuple[int, ...]
    stride: int = 1  # input H / this tensor's H, for the dynamic spatial dims

    @property
    def spatial(self) -> bool:
        """An image-like tensor (C, H, W), as opposed to a per-item vector such as T."""
        return len(self.dims) == 3

    def shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Concrete shape for an input of `height` x `width` (channels first)."""
        if not self.spatial:
            return (batch, *self.dims)
        return (batch, self.dims[0], height // self.stride, width // self.stride)

    @property
    def numpy_dtype(self) -> str:
        return _NUMPY_DTYPES[self.dtype]


_NUMPY_DTYPES = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8", "INT32": "int32"}


@dataclass(frozen=True)
class ModelSpec:
    """What Triton serves under `name`, and how its spatial dims relate to the input's."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    @property
    def anneals(self) -> bool:
        """Whether its colour is an annealed mean, so a temperature applies: T is an input of the
        graph, or the 313 logits are its only output (the gateway decodes them). SIGGRAPH17's colour is
        its regression head and Larsson16's a hue/chroma decode: no temperature there."""
        return any(t.name == "T" for t in self.inputs) or [t.name for t in self.outputs] == ["logits"]

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)


def _by_name(specs: tuple[TensorSpec, ...], name: str, model: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"model {model!r} has no tensor {name!r}; it has {[s.name for s in specs]}")


# ECCV16: L in [0, 100] -> 313 logits at H/4 (FP16 out: half the bytes, decoded in the gateway).
ECCV16 = ModelSpec(
    name="eccv16",
    inputs=(TensorSpec("L", "FP32", (1, -1, -1)),),
    outputs=(TensorSpec("logits", "FP16", (NUM_AB_BINS, -1, -1), stride=4),),
    max_batch_size=8,
)

# The same network with the annealed mean in the graph (T per item as an input): 2 ab planes
# instead of 313 logits cross the wire, 156x fewer bytes. For a Triton that does not share this
# host's /dev/shm; the gateway-side decode of ECCV16 stays the reference (docs/serving.md §2.5).
ECCV16_AB = ModelSpec(
    name="eccv16_ab",
    inputs=(TensorSpec("L", "FP32", (1, -1, -1)), TensorSpec("T", "FP32", (1,))),
    outputs=(TensorSpec("ab", "FP16", (2, -1, -1), stride=4),),
    max_batch_size=8,
)

# SIGGRAPH17: L, ab hints (Lab units, 0 where none) and a 0/1 hint mask -> ab at full resolution and
# 529 logits at H/4 over the a-major 23x23 grid (colour suggestions). H, W multiples of 8. The graph
# applies the checkpoint's own mask convention, so the gateway always sends 0/1.
SIGGRAPH17 = ModelSpec(
    name="siggraph17",
    inputs=(
        TensorSpec("L", "FP32", (1, -1, -1)),
        TensorSpec("ab_hint", "FP32", (2, -1, -1)),
        TensorSpec("hint_mask", "FP32", (1, -1, -1)),
    ),
    outputs=(
        TensorSpec("ab", "FP16", (2, -1, -1)),
        TensorSpec("logits", "FP16", (NUM_AB_GRID_BINS, -1, -1), stride=4),
    ),
    max_batch_size=8,
)

# Larsson16: L in [0, 100] (the graph converts it to its gray input) -> softmax distributions over 32
# hue and 32 chroma bins at H/4. The gateway decodes them (median chroma, circular-mean hue, HSV)
# with the request's decode modes, so no in-graph decoded variant exists: it maps to itself.
LARSSON16 = ModelSpec(
    name="larsson16",
    inputs=(TensorSpec("L", "FP32", (1, -1, -1)),),
    outputs=(
        TensorSpec("hue", "FP16", (NUM_HUE_BINS, -1, -1), stride=4),
        TensorSpec("chroma", "FP16", (NUM_CHROMA_BINS, -1, -1), stride=4),
    ),
    max_batch_size=8,
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (ECCV16, ECCV16_AB, SIGGRAPH17, LARSSON16)}
# Which network each served model exports (its checkpoint comes from colorizers.weights).
ARCHITECTURE = {
    ECCV16.name: "eccv16",
    ECCV16_AB.name: "eccv16",
    SIGGRAPH17.name: "siggraph17",
    LARSSON16.name: "larsson16",
}
# Models a client names in a request; the others are deployment variants of these.
PUBLIC_MODELS = (ECCV16.name, SIGGRAPH17.name, LARSSON16.name)
HINT_MODEL = SIGGRAPH17.name  # the model that takes colour hints and suggests colours
HUE_CHROMA_MODEL = LARSSON16.name  # the model whose output the request's decode modes apply to
DECODED_VARIANT = {
    ECCV16.name: ECCV16_AB.name,
    SIGGRAPH17.name: SIGGRAPH17.name,
    LARSSON16.name: LARSSON16.name,
}
DEFAULT_MODEL = ECCV16.name

# Parameters that export writes into config.pbtxt and the gateway reads back, so a response can
# say exactly which checkpoint produced it (an untrained one is reported as such).
PARAM_CHECKPOINT = "checkpoint"
PARAM_CHECKPOINT_SHA256 = "checkpoint_sha256"
PARAM_TRAINED = "trained"
# The annealed-mean T a request gets when it names none: the checkpoint's own, picked by its
# evaluation's temperature sweep (colorizers/MODEL_CARD.md); the paper's 0.38 otherwise.
PARAM_TEMPERATURE = "default_temperature"
# The logit scale SuggestColors softens SIGGRAPH17's 529-bin distribution with: the checkpoint's own
# (`suggest_soften` in colorizers/weights.py, calibrated on validation data); ideepcolor's 0.2 otherwise.
PARAM_SUGGEST_SOFTEN = "suggest_soften"


def asset_path(name: str) -> Path:
    """Path of a vendored data file (see assets/README.md for origin and licence)."""
    path = ASSETS / name
    if not path.is_file():
        raise FileNotFoundError(f"no vendored asset {name!r} in {ASSETS}")
    return path
