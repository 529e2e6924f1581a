"""Weights registry: every checkpoint the project knows, identified by SHA-256.

A checkpoint file is accepted only if its hash is registered here, so what Triton serves is
always named exactly (the authors' release, one of our trained checkpoints, or a seeded random
initialisation that is reported as untrained). Ours ship in `colorizers/checkpoints/`; the authors'
files are supplied by the user (`--weights FILE`) or, only when asked (`--weights-from authors`),
fetched from their `url` into `.cache/weights/` by `export.fetch`, which checks the SHA-256 here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from colorizers.eccv16 import ECCVGenerator
from colorizers.larsson16 import LarssonColorizer
from colorizers.siggraph17 import SIGGRAPHGenerator

CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
SUGGEST_SOFTEN = 0.2  # ideepcolor's `prep_net(S=.2)`; service.color.suggest.SOFTEN (the gateway has no torch)


@dataclass(frozen=True)
class Checkpoint:
    """What a weights file is. `sha256` is None only for a seeded random initialisation."""

    name: str
    arch: str
    width: float
    trained: bool
    description: str
    sha256: str | None = None
    filename: str | None = None  # shipped file in CHECKPOINTS_DIR, or None (user-supplied)
    url: str = ""  # where the authors publish it (`export.fetch`); "" for ours
    seed: int | None = None
    meta: dict[str, str] = field(default_factory=dict)
    # SIGGRAPH17: the logit scale SuggestColors softens the 529-bin distribution with before
    # sampling (`service.color.suggest`). 0.2 is ideepcolor's, right for the authors' peaked network; ours
    # is calibrated on validation data by `colorizers.evaluate_suggest` (see MODEL_CARD.md).
    suggest_soften: float = SUGGEST_SOFTEN
    # A superseded checkpoint leaves the working tree (each is ~4 MB, and the tree must stay small enough to
    # travel, e.g. to a lent GPU machine: MODEL_CARD.md "Which checkpoints the tree holds"); its entry stays,
    # naming the commit whose tree still holds the file, so every earlier result can be reproduced.
    retired: str = ""

    def build(self) -> nn.Module:
        """The network this checkpoint belongs to, at the right width (weights not loaded)."""
        if self.arch == "eccv16":
            return ECCVGenerator(width=self.width)
        if self.arch == "siggraph17":
            # The mask convention belongs to the weights: 0/1 (authors' release) or centred (0.5).
            return SIGGRAPHGenerator(width=self.width, mask_offset=float(self.meta.get("mask_offset", "0")))
        if self.arch == "larsson16":
            return LarssonColorizer(width=self.width)
        raise ValueError(f"unknown architecture {self.arch!r} for checkpoint {self.name!r}")


REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="eccv16-official",
            arch="eccv16",
            width=1.0,
            trained=True,
            description="authors' release colorization_release_v2-9b330a0b.pth (BSD-2-Clause)",
            sha256="9b330a0bae53f4ded77b1e23defbf78beaa09c10ebc4c4999e8e4f4a160b93f9",
            # richzhang/colorization colorizers/eccv16.py `model_zoo.load_url(...)`
            url="https://colorizers.s3.us-east-2.amazonaws.com/colorization_release_v2-9b330a0b.pth",
        ),
        Checkpoint(
            name="siggraph17-official",
            arch="siggraph17",
            width=1.0,
            trained=True,
            description="authors' release siggraph17-df00044c.pth (BSD-2-Clause)",
            sha256="df00044c0a4d7c3edcecf6f75437ce346a66e7a42612d9b968e1a7e17dbc6f66",
            # richzhang/colorization colorizers/siggraph17.py `model_zoo.load_url(...)`
            url="https://colorizers.s3.us-east-2.amazonaws.com/siggraph17-df00044c.pth",
            meta={"mask_offset": "0"},  # the authors' 0/1 hint mask
        ),
        Checkpoint(
            name="siggraph17-w0.25",
            arch="siggraph17",
            width=0.25,
            trained=True,
            description="trained by colorizers.train on the colorizers.data photos (hints, mask offset 0.5)",
            sha256="4f356aafad1b08ef720e3b64417428dbeae007ccc7525ea928c740e85a687248",
            filename="siggraph17-w0.25.pth",
            retired="28b0b18accbd",
            # colorizers.evaluate_suggest, 387-photo validation split: 3 puts one of 5 suggestions
            # within 15 ab units at 60 % of saturated pixels (0.2: 4 %), but mostly from the colour
            # marginal (pixel-blind suggestions: 56 %); see MODEL_CARD.md.
            suggest_soften=3.0,
            meta={
                "mask_offset": "0.5",
                "classification_fraction": "0.3",
                "crop": "96",
                "batch": "16",
                "steps": "2068",
                "minutes": "52.0",
                "lr": "0.0003",
                "seed": "0",
                "data_manifest_sha256": "b2a00e9a23e5abe3a557c322541d87482b4c9cfb47b954a598e3033f74fbd64e",
            },
        ),
        Checkpoint(
            name="siggraph17-w0.25-l0.75",
            arch="siggraph17",
            width=0.25,
            trained=True,
            description="trained by colorizers.train on the colorizers.data photos (hints, mask offset 0.5): "
            "siggraph17-w0.25, then 30 min at λ=0.5 and 55 min at λ=0.75 on 4,416 photos (1 core)",
            sha256="66919de96c0558dc5e751b88c15f67f527eee5561cd432ab29885ea530b1e2d3",
            filename="siggraph17-w0.25-l0.75.pth",
            retired="28b0b18accbd",
            suggest_soften=3.0,  # colorizers.evaluate_suggest: 63 % hits, 94 % distinct (MODEL_CARD.md)
            meta={
                "mask_offset": "0.5",
                "classification_fraction": "0",
                "lambda": "0.75",
                "init_from": "siggraph17-w0.25, then siggraph17-w0.25-l0.5 (λ 0.5, lr 2e-4, 1257 steps)",
                "crop": "96",
                "batch": "16",
                "steps": "1919",
                "minutes": "55.0",
                "lr": "0.0001",
                "seed": "0",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="siggraph17-w0.25-l0.75-loc2-b120",
            arch="siggraph17",
            width=0.25,
            trained=True,
            description="trained by colorizers.train on the colorizers.data photos (hints, mask offset 0.5): "
            "siggraph17-w0.25-l0.75-loc2, then 110 min in bf16 with the hint-locality term at weight 2 "
            "(1 core)",
            sha256="f31137ddcdf2473adc9565250ead037ac2f20ef92ba6699badf30571f7aff292",
            filename="siggraph17-w0.25-l0.75-loc2-b120.pth",
            suggest_soften=2.0,  # colorizers.evaluate_suggest: 61 % hits, 98 % distinct (MODEL_CARD.md)
            meta={
                "mask_offset": "0.5",
                "classification_fraction": "0",
                "lambda": "0.75",
                "locality_weight": "2",
                "init_from": "siggraph17-w0.25-l0.75-loc2",
                "crop": "96",
                "batch": "16",
                "steps": "10185",
                "minutes": "110.0",
                "lr": "0.0001",
                "seed": "0",
                "precision": "bf16",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="siggraph17-w0.25-l0.75-loc2",
            arch="siggraph17",
            width=0.25,
            trained=True,
            description="trained by colorizers.train on the colorizers.data photos (hints, mask offset 0.5): "
            "siggraph17-w0.25-l0.75, then 60 min with the hint-locality term at weight 2 (1 core)",
            sha256="456f6bc086dabc2e3d89c8e4d14c926c5bf7c1b4f2f5aaef6f754168b475957c",
            filename="siggraph17-w0.25-l0.75-loc2.pth",
            retired="28b0b18accbd",
            suggest_soften=2.0,  # colorizers.evaluate_suggest: 61 % hits, 98 % distinct (MODEL_CARD.md)
            meta={
                "mask_offset": "0.5",
                "classification_fraction": "0",
                "lambda": "0.75",
                "locality_weight": "2",
                "init_from": "siggraph17-w0.25-l0.75",
                "crop": "96",
                "batch": "16",
                "steps": "2203",
                "minutes": "60.0",
                "lr": "0.0001",
                "seed": "0",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="siggraph17-w0.25-random",
            arch="siggraph17",
            width=0.25,
            trained=False,
            description="UNTRAINED: seeded random initialisation, width 1/4 (pipeline checks only)",
            seed=0,
            meta={"mask_offset": "0.5"},
        ),
        Checkpoint(
            name="larsson16-w0.125",
            arch="larsson16",
            width=0.125,
            trained=True,
            description="trained by colorizers.train_larsson on the colorizers.data photos (65 min, 1 core)",
            sha256="55faf4a1567ff36b94fadfb2d7c75a8d8e0d8b073ea02fcdae4957c566f921cd",
            filename="larsson16-w0.125.pth",
            meta={
                "crop": "128",
                "batch": "16",
                "steps": "5818",
                "minutes": "65.0",
                "lr": "0.0005",
                "dropout": "0",
                "seed": "0",
                "data_manifest_sha256": "b2a00e9a23e5abe3a557c322541d87482b4c9cfb47b954a598e3033f74fbd64e",
            },
        ),
        Checkpoint(
            name="larsson16-w0.125-random",
            arch="larsson16",
            width=0.125,
            trained=False,
            description="UNTRAINED: seeded random initialisation, width 1/8 (pipeline checks only)",
            seed=0,
        ),
        Checkpoint(
            name="eccv16-w0.25-l0.75-c150-a0.4",
            arch="eccv16",
            width=0.25,
            trained=True,
            description=(
                "eccv16-w0.25-l0.75-c150 with its logits shifted by -0.4 log w: 40 % of the class "
                "rebalancing undone (colorizers.calibrate), for PSNR at less colour"
            ),
            sha256="06ca38fde2af3bbd1e1d9ce025a3eeedc7864558d44cd61c1f0ed0ba6ae4c74e",
            filename="eccv16-w0.25-l0.75-c150-a0.4.pth",
            retired="8e4853bf2d0b",
            meta={
                "lambda": "0.75",
                "temperature": "0.45",
                "init_from": "eccv16-w0.25-l0.75-c150",
                "rebalancing_undone": "0.4",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="eccv16-w0.25-l0.75-c245-a0.45",
            arch="eccv16",
            width=0.25,
            trained=True,
            description=(
                "eccv16-w0.25-l0.75-c245 with its logits shifted by -0.45 log w: 45 % of the class "
                "rebalancing undone (colorizers.calibrate), for PSNR at less colour"
            ),
            sha256="1e63d42de00c9d5480db57bc27f87b54c9de193235b0255f3d859d1a4d3093ec",
            filename="eccv16-w0.25-l0.75-c245-a0.45.pth",
            meta={
                "lambda": "0.75",
                "temperature": "0.38",
                "init_from": "eccv16-w0.25-l0.75-c245",
                "rebalancing_undone": "0.45",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="eccv16-w0.25-l0.75-c245",
            arch="eccv16",
            width=0.25,
            trained=True,
            description=(
                "trained by colorizers.train on the colorizers.data photos (λ=0.75): "
                "eccv16-w0.25-l0.75-c150, then 95 min more in bf16 autocast (1 core)"
            ),
            sha256="c04e7be628fc768ac06eaf45628f13c527cfc788a770ad0926ccda1e4408396c",
            filename="eccv16-w0.25-l0.75-c245.pth",
            meta={
                "lambda": "0.75",
                "temperature": "1",
                "init_from": "eccv16-w0.25-l0.75-c150",
                "crop": "96",
                "batch": "16",
                "steps": "26666",
                "minutes": "95.0",
                "lr": "0.0001",
                "precision": "bf16",
                "seed": "0",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="eccv16-w0.25-l0.75-c150",
            arch="eccv16",
            width=0.25,
            trained=True,
            description=(
                "trained by colorizers.train on the colorizers.data photos (λ=0.75): eccv16-w0.25-l0.75-c55, "
                "then 60 min more in bf16 autocast (1 core)"
            ),
            sha256="b22f677edd2685c5c65e8e790ff567c8af94296232827fd056de15654282fa44",
            filename="eccv16-w0.25-l0.75-c150.pth",
            retired="8e4853bf2d0b",
            meta={
                "lambda": "0.75",
                "temperature": "0.6",
                "init_from": "eccv16-w0.25-l0.75-c55",
                "crop": "96",
                "batch": "16",
                "steps": "17471",
                "minutes": "60.0",
                "lr": "0.0001",
                "precision": "bf16",
                "seed": "0",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="eccv16-w0.25-l0.75-c55",
            arch="eccv16",
            width=0.25,
            trained=True,
            description=(
                "trained by colorizers.train on the colorizers.data photos (λ=0.75): eccv16-w0.25-l0.75, "
                "then 55 min more (1 core)"
            ),
            sha256="0990f034306ea96a182f2dc6ec450dd7a5e68a53d7733985a842177b92d21077",
            filename="eccv16-w0.25-l0.75-c55.pth",
            retired="28b0b18accbd",
            meta={
                "lambda": "0.75",
                "temperature": "0.6",
                "init_from": "eccv16-w0.25-l0.75",
                "crop": "96",
                "batch": "16",
                "steps": "9540",
                "minutes": "55.0",
                "lr": "0.0001",
                "seed": "0",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="eccv16-w0.25-l0.75",
            arch="eccv16",
            width=0.25,
            trained=True,
            description=(
                "trained by colorizers.train on the colorizers.data photos (λ=0.75, from eccv16-w0.25-l1)"
            ),
            sha256="ae689b41aaef0d5a9527bbf80c1147b9ffcdd356797d0669d47c8a83e4bf7887",
            filename="eccv16-w0.25-l0.75.pth",
            retired="28b0b18accbd",
            meta={
                "lambda": "0.75",
                "temperature": "1",
                "init_from": "eccv16-w0.25-l1",
                "crop": "96",
                "batch": "16",
                "steps": "8152",
                "minutes": "140.0",
                "lr": "0.0001",
                "seed": "0",
                "data_manifest_sha256": "f14a1bf53c8d1b64978d828fc72257dcdbaf3bb3afc7c73d86e4e91db8889fc0",
            },
        ),
        Checkpoint(
            name="eccv16-w0.25-l1",
            arch="eccv16",
            width=0.25,
            trained=True,
            description="trained by colorizers.train on the colorizers.data photos (λ=1: no rebalancing)",
            sha256="a8d76077ec12eb580634fe144c0963847588fc4d1ad9415f83421d423f0b7475",
            filename="eccv16-w0.25-l1.pth",
            meta={
                "lambda": "1",
                "temperature": "1",
                "crop": "128",
                "batch": "16",
                "steps": "3102",
                "minutes": "80.0",
                "lr": "0.0003",
                "seed": "0",
                "data_manifest_sha256": "b2a00e9a23e5abe3a557c322541d87482b4c9cfb47b954a598e3033f74fbd64e",
            },
        ),
        Checkpoint(
            name="eccv16-w0.25-random",
            arch="eccv16",
            width=0.25,
            trained=False,
            description="UNTRAINED: seeded random initialisation, width 1/4 (pipeline checks only)",
            seed=0,
        ),
    )
}

DEFAULT = {
    "eccv16": "eccv16-w0.25-l0.75-c245-a0.45",
    "siggraph17": "siggraph17-w0.25-l0.75-loc2-b120",
    "larsson16": "larsson16-w0.125",
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _restore_hint(checkpoint: Checkpoint, path: Path) -> str:
    return (
        f"checkpoint {checkpoint.name!r} was retired from the tree; restore it with "
        f"`git show {checkpoint.retired}:colorizers/checkpoints/{checkpoint.filename} > {path}`"
    )


def identify(path: Path) -> Checkpoint:
    """The registered checkpoint whose SHA-256 equals this file's; refuses unknown and missing files
    (naming the `git show` that restores a retired checkpoint's file)."""
    if not path.is_file():
        retired = [c for c in REGISTRY.values() if c.retired and c.filename == path.name]
        raise FileNotFoundError(
            f"no checkpoint file {path}" + (f": {_restore_hint(retired[0], path)}" if retired else "")
        )
    digest = sha256_of(path)
    for checkpoint in REGISTRY.values():
        if checkpoint.sha256 == digest:
            return checkpoint
    raise ValueError(f"{path} (sha256 {digest}) is not a registered checkpoint; known: {sorted(REGISTRY)}")


def load(checkpoint: Checkpoint, path: Path | None = None) -> nn.Module:
    """Build the network and load its weights (fp16 files are widened to fp32), in eval mode."""
    if checkpoint.sha256 is None:
        if checkpoint.seed is None:
            raise ValueError(f"checkpoint {checkpoint.name!r} has neither a file nor a seed")
        torch.manual_seed(checkpoint.seed)
        return checkpoint.build().eval()
    model = checkpoint.build()
    if path is None:
        if checkpoint.filename is None:
            raise ValueError(f"checkpoint {checkpoint.name!r} is user-supplied: pass its file")
        path = CHECKPOINTS_DIR / checkpoint.filename
        if checkpoint.retired and not path.is_file():
            raise FileNotFoundError(_restore_hint(checkpoint, path))
    digest = sha256_of(path)
    if digest != checkpoint.sha256:
        raise ValueError(f"{path} has sha256 {digest}, expected {checkpoint.sha256} for {checkpoint.name!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def resolve(arch: str, weights: Path | None = None) -> tuple[Checkpoint, nn.Module]:
    """`--weights FILE` if given (must be registered), else the project's default for `arch`."""
    checkpoint = identify(weights) if weights is not None else REGISTRY[DEFAULT[arch]]
    if checkpoint.arch != arch:
        raise ValueError(f"{weights} is a {checkpoint.arch} checkpoint, not {arch}")
    return checkpoint, load(checkpoint, weights)
