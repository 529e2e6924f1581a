"""Undo part of ECCV16's class rebalancing in the weights: a checkpoint whose logits are shifted by −α·log w.

Why. ECCV16 weights each pixel's cross-entropy by w(q*), the rebalancing weight of its true bin
(`quantize.rebalance_weights`). For one input, the expected weighted loss Σ_q P(q|x)·w(q)·(−log p(q))
is smallest at p(q) ∝ w(q)·P(q|x) (`tests/colorizers/test_calibrate.py` checks this by gradient
descent): the network learns the posterior tilted towards rare, saturated colours. That tilt is the
point of rebalancing (vivid rather than sepia colour) and also why the colour costs PSNR: the
annealed mean of a tilted distribution is not the posterior mean, the prediction that minimises the
expected squared ab error. Subtracting α·log w from the logits gives p ∝ w^(1−α)·P(q|x): α = 0 is the
trained model, α = 1 its own estimate of the untilted posterior, and values in between trade colour
for PSNR along a curve the model card measures (issue #15: "PSNR ≥ gray on 80 % of the photos").

How. The logits come from a 1×1 convolution with a bias, so the shift is exact in the weights: the
derived checkpoint is the base one with that bias changed and nothing else. Export, Triton and the
gateway serve it as any checkpoint, and every response names it. w must be the weights the base was
trained with: its λ from the registry entry and the prior of the data cache whose manifest the entry
records (`colorizers.data` builds both); another cache is refused.

    python -m colorizers.calibrate --checkpoint eccv16-w0.25-l0.75-c150 --alpha 0.4 \\
        --name eccv16-w0.25-l0.75-c150-a0.4      # writes colorizers/checkpoints/<name>.pth, prints the entry
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from colorizers import harness, quantize, weights
from colorizers.dataset import DEFAULT_CACHE, manifest_sha256
from colorizers.eccv16 import ECCVGenerator
from colorizers.run_state import save_shipped


def logit_shift(prior: NDArray[np.floating], lam: float, alpha: float) -> NDArray[np.float64]:
    """(313,) −α·log w(λ) for the training `prior`: added to the logits, p ∝ w^(1−α)·(untilted posterior)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0: as trained, 1: rebalancing fully undone), got {alpha}")
    return -alpha * np.log(quantize.rebalance_weights(prior, lam))


def shifted(model: ECCVGenerator, shift: NDArray[np.floating]) -> ECCVGenerator:
    """`model` with `shift` added to its logits' bias (in place; returned for chaining)."""
    head = model.model8[-1]
    if not isinstance(head, torch.nn.Conv2d) or head.bias is None or head.bias.shape != shift.shape:
        raise ValueError(f"the logits layer must be a Conv2d with a {shift.shape} bias, got {head}")
    with torch.no_grad():
        head.bias.add_(torch.from_numpy(np.asarray(shift)).to(head.bias.dtype))
    return model


def calibrate(base: str, alpha: float, name: str, cache: Path, out: Path) -> tuple[Path, str]:
    """Write `<out>/<name>.pth` (the base with its logits shifted); returns (path, registry entry)."""
    entry = weights.REGISTRY.get(base)
    if entry is None or entry.arch != "eccv16" or not entry.trained:
        raise ValueError(f"--checkpoint must name a trained ECCV16 checkpoint in the registry, got {base!r}")
    lam = float(entry.meta["lambda"])
    expected, found = entry.meta.get("data_manifest_sha256"), manifest_sha256(cache)
    if expected != found:
        raise ValueError(
            f"{base} was trained on the data with manifest {expected}, but {cache} holds {found}: "
            "its prior is not the one the rebalancing weights came from (`make data` from the same photos)"
        )
    model = weights.load(entry)
    if not isinstance(model, ECCVGenerator):
        raise ValueError(f"{base} did not load as ECCV16")
    shifted(model, logit_shift(np.load(cache / "prior.npy"), lam, alpha))
    filename = f"{name}.pth"
    path = out / filename
    digest = save_shipped(model, path)
    meta = {**entry.meta, "init_from": base, "rebalancing_undone": f"{alpha:g}"}
    source = harness.registry_source(
        name=name,
        arch_source='"eccv16"',
        width=entry.width,
        description=f"{base} with its logits shifted by -{alpha:g} log w (colorizers.calibrate)",
        sha256=digest,
        filename=filename,
        meta=meta,
    )
    return path, source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="registered ECCV16 checkpoint to derive from")
    parser.add_argument("--alpha", type=float, required=True, help="share of the rebalancing to undo, 0..1")
    parser.add_argument("--name", required=True, help="the derived checkpoint's name")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the data cache (its prior.npy)")
    parser.add_argument("--out", type=Path, default=weights.CHECKPOINTS_DIR)
    args = parser.parse_args(argv)
    path, source = calibrate(args.checkpoint, args.alpha, args.name, args.cache, args.out)
    print(f"wrote {path} sha256 {weights.sha256_of(path)}")
    print("registry entry for colorizers/weights.py:")
    print(source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
