"""Score the shipped colorizers side by side on the same validation crops: the model card's comparison.

Every model sees the same centre `--size`² crops of the validation split (sides floored to a multiple
of 32, Larsson16's padding multiple) and is scored with `colorizers.evaluate`'s metrics (ab L2, AuC
plain and rebalanced, RGB PSNR, colourfulness). Each model's colour is decoded as the gateway decodes
it: ECCV16 by the annealed mean at its checkpoint's temperature, SIGGRAPH17 from its regression
output with no hints, Larsson16 by the hue/chroma rules of `service.color.hue_chroma` in each decode mode;
colour predicted at H/4 is upsampled by `service.color.ab_decode.resize_ab` and recombined with the true L.

The sample grid (gray | each model | truth) shows only validation photos whose licence allows
redistribution (`dataset.redistributable`): the ImageNet and BSDS500 photos are research-only.

    python -m colorizers.compare                     # shipped defaults, writes colorizers/results/
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from colorizers import quantize, weights
from colorizers.dataset import DEFAULT_CACHE, REPO, LabImages, manifest_sha256, redistributable
from colorizers.eccv16 import ECCVGenerator
from colorizers.evaluate import Scores, _grid, ab_error, colourfulness, lab_to_rgb8
from colorizers.larsson16 import PAD_MULTIPLE, LarssonColorizer
from colorizers.siggraph17 import SIGGRAPHGenerator
from contract import ANNEALED_T_DEFAULT
from service.color import ab_decode, hue_chroma

log = logging.getLogger(__name__)

RESULTS = REPO / "colorizers" / "results"
# Larsson16 decode modes of the paper (§3.1 "median / expectation / mode" and chromatic fading).
LARSSON_MODES = {
    "expectation-cf / median": ("expectation-cf", "median"),
    "expectation / expectation": ("expectation", "expectation"),
    "mode / mode": ("mode", "mode"),
}

Lab = NDArray[np.float32]
Colorizer = Callable[[Lab], Lab]  # (H, W) L in [0, 100] -> (2, H, W) ab


@dataclass(frozen=True)
class Entry:
    """One row of the comparison: a label, the checkpoint behind it, and how it colours an L plane."""

    label: str
    checkpoint: str
    colorize: Colorizer


def _full_size(ab_small: torch.Tensor | NDArray[np.float32], like: Lab) -> Lab:
    small = ab_small.cpu().numpy() if isinstance(ab_small, torch.Tensor) else ab_small
    height, width = like.shape
    return ab_decode.resize_ab(np.asarray(small, np.float32), (height, width))


def eccv16(model: ECCVGenerator, temperature: float) -> Colorizer:
    centres = torch.from_numpy(quantize.bin_centres())

    @torch.no_grad()
    def colorize(lightness: Lab) -> Lab:
        logits = model.logits(torch.from_numpy(lightness)[None, None])
        return _full_size(quantize.annealed_mean(logits, centres, temperature)[0], lightness)

    return colorize


def siggraph17(model: SIGGRAPHGenerator) -> Colorizer:
    @torch.no_grad()
    def colorize(lightness: Lab) -> Lab:
        return model(torch.from_numpy(lightness)[None, None])[0].cpu().numpy()

    return colorize


def larsson16(model: LarssonColorizer, hue_method: str, chroma_method: str) -> Colorizer:
    @torch.no_grad()
    def colorize(lightness: Lab) -> Lab:
        hue, chroma = model(torch.from_numpy(lightness)[None, None])
        ab_small = hue_chroma.decode_ab(hue[0].numpy(), chroma[0].numpy(), lightness,
                                        hue_method=hue_method, chroma_method=chroma_method)  # fmt: skip
        return _full_size(ab_small, lightness)

    return colorize


def shipped() -> list[Entry]:
    """The default checkpoint of every architecture, decoded as the gateway decodes it by default."""
    entries = []
    for arch, name in weights.DEFAULT.items():
        checkpoint = weights.REGISTRY[name]
        model = weights.load(checkpoint)
        if isinstance(model, ECCVGenerator):
            t = float(checkpoint.meta.get("temperature", ANNEALED_T_DEFAULT))
            entries.append(Entry(f"ECCV16, T = {t:g}", name, eccv16(model, t)))
        elif isinstance(model, SIGGRAPHGenerator):
            entries.append(Entry("SIGGRAPH17, no hints", name, siggraph17(model)))
        elif isinstance(model, LarssonColorizer):
            for mode, (hue, chroma) in LARSSON_MODES.items():
                entries.append(Entry(f"Larsson16, {mode}", name, larsson16(model, hue, chroma)))
        else:
            raise ValueError(f"no decoding for {arch} checkpoint {name!r}")
    return entries


def compare(
    entries: list[Entry],
    images: LabImages,
    *,
    size: int = 256,
    max_images: int = 0,
    samples: tuple[int, ...] = (),
) -> tuple[dict, list[list[NDArray[np.uint8]]]]:
    """Score gray, the truth and every entry on the same crops; returns (metrics, sample grid rows).

    A grid row is gray | each entry | truth for each index of `samples`.
    """
    centres = torch.from_numpy(quantize.bin_centres())
    count = len(images) if max_images <= 0 else min(max_images, len(images))
    gray, scores, truth_colour = Scores(), {e.label: Scores() for e in entries}, []
    rows: list[list[NDArray[np.uint8]]] = []
    for i in range(count):
        lab = images.centre_crop(i, size)
        h, w = (lab.shape[1] // PAD_MULTIPLE) * PAD_MULTIPLE, (lab.shape[2] // PAD_MULTIPLE) * PAD_MULTIPLE
        lab = np.ascontiguousarray(lab[:, :h, :w])
        true_rgb = lab_to_rgb8(lab[0], lab[1:])
        gray_rgb = lab_to_rgb8(lab[0], np.zeros_like(lab[1:]))
        true_bins = quantize.nearest_bin(torch.from_numpy(lab[None, 1:]), centres)[0].numpy()
        gray.add(np.hypot(lab[1], lab[2]), true_bins, gray_rgb, true_rgb)
        truth_colour.append(colourfulness(true_rgb))
        row = [gray_rgb]
        for entry in entries:
            ab = entry.colorize(lab[0])
            rgb = lab_to_rgb8(lab[0], ab)
            scores[entry.label].add(ab_error(ab, lab[1:]), true_bins, rgb, true_rgb)
            row.append(rgb)
        if i in samples:
            rows.append([*row, true_rgb])
        if (i + 1) % 20 == 0:
            log.info("compared %d / %d images", i + 1, count)
    metrics = {
        "images": count,
        "size": size,
        "gray": gray.summary(),
        "truth": {"colourfulness": float(np.mean(truth_colour))},
        "models": {e.label: {"checkpoint": e.checkpoint, **scores[e.label].summary()} for e in entries},
    }
    return metrics, rows


def markdown(metrics: dict, manifest: str, grid: str | None, sample_sources: list[tuple[str, str]]) -> str:
    """The comparison section of colorizers/MODEL_CARD.md."""
    lines = [
        "| model (checkpoint) | ab L2 ↓ | AuC 0–150 ↑ | AuC rebal ↑ | PSNR dB ↑ | colourfulness |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, m: dict[str, float]) -> str:
        return (f"| {name} | {m['ab_l2']:.2f} | {m['auc']:.3f} | {m['auc_rebal']:.3f} | {m['psnr']:.2f} "
                f"| {m['colourfulness']:.1f} |")  # fmt: skip

    lines.append(row("gray (ab = 0)", metrics["gray"]))
    for label, m in metrics["models"].items():
        lines.append(row(f"{label} (`{m['checkpoint']}`)", m))
    lines.append(f"| ground truth | 0 | 1 | 1 | ∞ | {metrics['truth']['colourfulness']:.1f} |")
    lines = [
        f"Validation split ({metrics['images']} images, centre {metrics['size']}² crops, manifest sha256 "
        f"`{manifest[:16]}…`), every model on the same crops, decoded as the gateway decodes it.",
        "",
        *lines,
    ]
    if grid:
        columns = " | ".join(["gray", *metrics["models"], "truth"])
        lines += ["", f"![{columns}]({grid})", "", f"Columns: {columns}."]
        lines += ["", "Photos (the validation photos with a redistributable licence):"]
        lines += [f"- `{member}` ({licence})" for member, licence in sample_sources]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colorizers.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument("--size", type=int, default=256, help="centre crop size")
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    shareable = redistributable(args.cache, "val")
    images = LabImages(args.cache, "val")
    metrics, rows = compare(shipped(), images, size=args.size, max_images=args.max_images,
                            samples=tuple(i for i, _, _ in shareable))  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    grid = "shipped_samples.png" if rows else None
    if rows:
        _grid(rows, 160).save(args.out / grid, optimize=True)
    manifest = manifest_sha256(args.cache)
    metrics["data_manifest_sha256"] = manifest
    (args.out / "comparison.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = markdown(metrics, manifest, grid, [(m, lic) for _, m, lic in shareable])
    (args.out / "comparison.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
