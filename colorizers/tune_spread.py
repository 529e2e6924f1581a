"""Choose the gateway's hint-spread settings (service/color/hint_spread.py) on training photos.

For each setting (the radius R and σ as fractions of the working size, β, κ) and the network alone,
on `--images` photos of `--split` (default: train, so the validation photos stay out of the choice),
resized to 256² as `colorizers.evaluate_hints` does, with its 10 random 6x6 hints (same seeds):

- the PSNR gain at 10 hints over none (issue #15's hint bar), and
- colour bleed across the true colour edges (`colorizers.evaluate_bleed`'s rule: the prediction beside
  an edge nearer the other side's hue), washed-out edges, the ab error beside edges and the predicted
  ÷ true contrast across them: PSNR alone rewards filling the whole radius with the hint's colour,
  which is what a user sees as a hint leaking onto the neighbouring object;
- the halo: the mean ab change against the no-hint output beyond 64 px of every hint
  (`evaluate_hints.hint_locality`'s measure), which a radius beyond S/4 lets the spread add to.

    python -m colorizers.tune_spread --checkpoint siggraph17-w0.25-l0.75 --images 80

The chosen setting and the table it came from are in docs/colorization.md §7.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.ndimage import distance_transform_edt

from colorizers import hint_sim
from colorizers.dataset import DEFAULT_CACHE, LabImages
from colorizers.evaluate import lab_to_rgb8, psnr
from colorizers.evaluate_bleed import BleedCounts, find_edges
from colorizers.evaluate_hints import (
    HALO_DISTANCE_PX,
    PATCH,
    Colorize,
    crop8,
    load_siggraph,
    resize_lab,
    served_patches,
)
from service.color import hint_spread

log = logging.getLogger(__name__)

Setting = tuple[float, float, float, float]  # (R ÷ working size, σ ÷ working size, β at 256, κ)
NETWORK = "network alone"


def score(
    colorize: Colorize, images: Sequence[NDArray[np.float32]], settings: Sequence[Setting], *, seed: int = 0
) -> dict[str, dict[str, float]]:
    """{label: {gain_db, halo, bleed, washed_out, side_ab_error, contrast_ratio}} for the network and each
    setting; image i's hints are `evaluate_hints.psnr_vs_hints`'s at 10 hints (seed (seed, i))."""
    labels = [NETWORK, *(str(s) for s in settings)]
    gains: dict[str, list[float]] = {label: [] for label in labels}
    halos: dict[str, list[float]] = {label: [] for label in labels}
    bleed = {label: BleedCounts() for label in labels}
    for i, image in enumerate(images):
        lab = np.ascontiguousarray(crop8(image))
        _, h, w = lab.shape
        patches = hint_sim.draw_patches(np.random.default_rng([seed, i]), h, w, count=10, sizes=(PATCH,))
        hint, mask = hint_sim.paint_hints(
            torch.from_numpy(lab[None, 1:]).expand(2, -1, -1, -1), [[], patches]
        )
        lightness = torch.from_numpy(lab[None, :1]).expand(2, -1, -1, -1)
        ab = colorize(lightness, hint, mask).cpu().numpy()
        truth = lab_to_rgb8(lab[0], lab[1:])
        base = psnr(lab_to_rgb8(lab[0], ab[0]), truth)
        served = served_patches(lab, patches)
        outputs = {NETWORK: ab[1]}
        for setting in settings:
            radius, sigma, beta, kappa = setting
            outputs[str(setting)] = hint_spread.spread(
                lab[0], ab[1], served, beta=beta, kappa=kappa, sigma_fraction=sigma, radius_fraction=radius
            )
        edges = find_edges(lab)
        far = distance_transform_edt(~(mask[1, 0].numpy() > 0)) > HALO_DISTANCE_PX
        for label, out in outputs.items():
            gains[label].append(psnr(lab_to_rgb8(lab[0], out), truth) - base)
            if far.any():
                halos[label].append(float(np.hypot(*(out - ab[0]))[far].mean()))
            if len(edges):
                bleed[label].add(edges, out)
    return {
        label: {
            "gain_db": float(np.mean(gains[label])),
            "halo": float(np.mean(halos[label])) if halos[label] else float("nan"),
            **{k: float(v) for k, v in bleed[label].summary().items()},
        }
        for label in labels
    }


def markdown(rows: dict[str, dict[str, float]], images: int, split: str, checkpoint: str) -> str:
    lines = [
        f"{checkpoint}, {images} {split} photos at 256², 10 random 6x6 hints:",
        "",
        "| setting (R/S, σ/S, β, κ) | gain at 10 hints dB | halo | bleed | washed out | ab error by edges "
        "| contrast |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, m in sorted(rows.items(), key=lambda kv: -kv[1]["gain_db"]):
        lines.append(f"| {label} | {m['gain_db']:+.2f} | {m['halo']:.2f} | {m['bleed']:.1%} | "
                     f"{m['washed_out']:.1%} | {m['side_ab_error']:.2f} | "
                     f"{m['contrast_ratio']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m colorizers.tune_spread", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--checkpoint", required=True, help="registry name, shipped .pth, or a run's last.pt")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--images", type=int, default=80, help="spread evenly over the split")
    parser.add_argument(
        "--radius", type=float, nargs="+", default=[hint_spread.RADIUS_FRACTION], help="R ÷ working size"
    )
    parser.add_argument(
        "--sigma",
        type=float,
        nargs="+",
        default=[0.125, 0.25, 0.5],
        help="σ ÷ working size; settings with σ > R are skipped",
    )
    parser.add_argument("--beta", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, 16.0])
    parser.add_argument("--kappa", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.25])
    parser.add_argument("--out", type=Path, default=None, help="JSON of the table (default: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    model, label = load_siggraph(args.checkpoint)
    images = LabImages(args.cache, args.split)
    picked = np.linspace(0, len(images) - 1, min(args.images, len(images))).astype(int)
    resized = [resize_lab(images.image(int(i))) for i in picked]

    @torch.no_grad()
    def colorize(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.forward_both(lightness, hint, mask)[0]

    settings = [s for s in itertools.product(args.radius, args.sigma, args.beta, args.kappa) if s[1] <= s[0]]
    log.info("%d settings on %d %s photos", len(settings), len(resized), args.split)
    rows = score(colorize, resized, settings)
    if args.out:
        args.out.write_text(json.dumps({"checkpoint": label, "split": args.split, "images": len(resized),
                                        "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(markdown(rows, len(resized), args.split, label.split(" ")[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
