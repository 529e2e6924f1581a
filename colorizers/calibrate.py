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
    python -m colorizers.calibrate --checkpoint eccv16-w0.25-l0.75-c150 --sweep \\
        --alphas 0 0.3 0.4 0.5 1 --temperatures 0.38 0.45 0.6 1    # the trade on the validation split

`--sweep` scores every (α, T) on the validation crops through `colorizers.evaluate.evaluate` and
writes `colorizers/results/<checkpoint>_calibrate.{json,md}`: colourfulness ÷ truth, AuC rebal over
gray, mean PSNR and the share of photos at PSNR ≥ gray (issue #15's three automatic-colour bars).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from colorizers import evaluate, harness, quantize, weights
from colorizers.dataset import DEFAULT_CACHE, LabImages, manifest_sha256
from colorizers.eccv16 import ECCVGenerator
from colorizers.run_state import save_shipped

log = logging.getLogger(__name__)


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


def _load_base(base: str, cache: Path) -> tuple[weights.Checkpoint, ECCVGenerator]:
    """The registry entry and network of `base`, refused unless a trained ECCV16 trained on `cache`'s data."""
    entry = weights.REGISTRY.get(base)
    if entry is None or entry.arch != "eccv16" or not entry.trained:
        raise ValueError(f"--checkpoint must name a trained ECCV16 checkpoint in the registry, got {base!r}")
    expected, found = entry.meta.get("data_manifest_sha256"), manifest_sha256(cache)
    if expected != found:
        raise ValueError(
            f"{base} was trained on the data with manifest {expected}, but {cache} holds {found}: "
            "its prior is not the one the rebalancing weights came from (`make data` from the same photos)"
        )
    model = weights.load(entry)
    if not isinstance(model, ECCVGenerator):
        raise ValueError(f"{base} did not load as ECCV16")
    return entry, model


def calibrate(base: str, alpha: float, name: str, cache: Path, out: Path) -> tuple[Path, str]:
    """Write `<out>/<name>.pth` (the base with its logits shifted); returns (path, registry entry)."""
    entry, model = _load_base(base, cache)
    shifted(model, logit_shift(np.load(cache / "prior.npy"), float(entry.meta["lambda"]), alpha))
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


def sweep(
    base: str, alphas: list[float], temperatures: list[float], cache: Path, size: int = 256, limit: int = 0
) -> dict[str, Any]:
    """Issue #15's automatic-colour numbers of `base` with each α of the rebalancing undone, at each T
    (`colorizers.evaluate.evaluate` once per α, its logits shifted)."""
    entry, model = _load_base(base, cache)
    prior, lam = np.load(cache / "prior.npy"), float(entry.meta["lambda"])
    images = LabImages(cache, "val")
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for a in alphas:
        shift = torch.from_numpy(logit_shift(prior, lam, a)).float()
        metrics, _ = evaluate.evaluate(
            model, images, size=size, temperatures=tuple(temperatures), max_images=limit, logit_shift=shift
        )
        gray, colour = metrics["gray"], metrics["truth"]["colourfulness"]
        for t, m in metrics["temperatures"].items():
            ratios = {"colour_ratio": m["colourfulness"] / colour,
                      "auc_rebal_over_gray": m["auc_rebal"] - gray["auc_rebal"]}  # fmt: skip
            rows.append({"alpha": a, "temperature": float(t), **m, **ratios})
        log.info("swept α = %g", a)
    return {"checkpoint": base, "images": metrics["images"], "size": size, "gray": metrics["gray"],
            "truth_colourfulness": metrics["truth"]["colourfulness"],
            "data_manifest_sha256": manifest_sha256(cache), "rows": rows}  # fmt: skip


def sweep_markdown(result: dict[str, Any]) -> str:
    """α down, T across; each cell colourfulness ÷ truth · AuC rebal − gray · photos at PSNR ≥ gray."""
    alphas = sorted({r["alpha"] for r in result["rows"]})
    temperatures = sorted({r["temperature"] for r in result["rows"]})
    cell = {(r["alpha"], r["temperature"]): r for r in result["rows"]}
    lines = [
        f"`{result['checkpoint']}` with α of its class rebalancing undone (`colorizers.calibrate --sweep`), "
        f"{result['images']} validation photos, centre {result['size']}² crops, manifest "
        f"`{result['data_manifest_sha256'][:16]}…`; gray: PSNR {result['gray']['psnr']:.2f} dB. Each cell: "
        "colourfulness ÷ truth · AuC rebal − gray · photos with PSNR ≥ gray · mean PSNR.",
        "",
        "| α \\ T | " + " | ".join(f"{t:g}" for t in temperatures) + " |",
        "|---|" + "---|" * len(temperatures),
    ]
    for a in alphas:
        cells = [cell[(a, t)] for t in temperatures]
        lines.append(f"| {a:g} | " + " | ".join(
            f"{c['colour_ratio']:.2f}× · {c['auc_rebal_over_gray']:+.3f} · "
            f"{c['share_psnr_at_least_gray']:.0%} · {c['psnr']:.2f}" for c in cells) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="registered ECCV16 checkpoint to derive from")
    parser.add_argument("--alpha", type=float, help="share of the rebalancing to undo, 0..1")
    parser.add_argument("--name", help="the derived checkpoint's name")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the data cache (its prior.npy)")
    parser.add_argument("--out", type=Path, default=weights.CHECKPOINTS_DIR)
    parser.add_argument(
        "--sweep", action="store_true", help="score the trade instead of writing a checkpoint"
    )
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 0.35, 0.4, 0.45, 0.5, 1.0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.38, 0.45, 0.6, 0.8, 1.0])
    parser.add_argument("--limit", type=int, default=0, help="validation photos to sweep; 0: all")
    parser.add_argument("--size", type=int, default=256, help="centre crop size")
    parser.add_argument("--results", type=Path, default=evaluate.RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.sweep:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        result = sweep(args.checkpoint, args.alphas, args.temperatures, args.cache, args.size, args.limit)
        args.results.mkdir(parents=True, exist_ok=True)
        stem = f"{args.checkpoint}_calibrate"  # not Path.with_suffix: the name has dots of its own
        (args.results / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.results / f"{stem}.md").write_text(sweep_markdown(result))
        print(sweep_markdown(result))
        return 0
    if args.alpha is None or args.name is None:
        parser.error("--alpha and --name are needed to write a checkpoint (or --sweep)")
    path, source = calibrate(args.checkpoint, args.alpha, args.name, args.cache, args.out)
    print(f"wrote {path} sha256 {weights.sha256_of(path)}")
    print("registry entry for colorizers/weights.py:")
    print(source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
