"""Evaluate a SIGGRAPH17 checkpoint on the validation split: PSNR vs number of hints, automatic metrics.

PSNR vs hints follows colorization-pytorch `test_sweep.py` (docs/colorization.md §5.2): each
validation image resized to 256x256 (cropped to a multiple of 8), `k` random 6x6 hint patches at
centred-Gaussian locations carrying the patch-mean ground-truth ab (`hint_sim`, fixed seed per
image), PSNR of the 8-bit sRGB result against the 8-bit truth, mean ± s.e. over images, for
k = `--hints`. The authors' curve is the column means of `psnrs_siggraph.npy` (1000 ImageNet images).

Automatic mode (no hints) is scored exactly as `colorizers.evaluate` scores ECCV16 (centre crops,
ab L2, AuC plain and rebalanced, PSNR, colourfulness, gray and ground-truth rows), from the
regression output, so the model card can compare the two models.

Writes the plot and the curve's numbers to `--results` (committed: colorizers/results/) and
`metrics.json`, `model_card.md` to `--out`; the sample grid (gray | auto | 10 hints | truth, only
validation photos whose licence allows redistribution) to `--results`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from skimage.color import rgb2lab

from colorizers import hint_sim, quantize, weights
from colorizers.dataset import DEFAULT_CACHE, REPO, LabImages, manifest_sha256, redistributable
from colorizers.evaluate import Scores, _grid, ab_error, colourfulness, lab_to_rgb8, psnr
from colorizers.siggraph17 import SIGGRAPHGenerator
from service.color import hint_spread

log = logging.getLogger(__name__)

HINT_COUNTS = (0, 1, 2, 5, 10, 20, 50, 100)
PATCH = 6  # test_sweep.py: sample_Ps = [6]
SIZE = 256
# Columns of psnrs_siggraph.npy: the numbers of hints of the authors' sweep.
AUTHORS_COUNTS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 63, 79, 100, 126, 158, 200, 251,
                  316, 398, 501)  # fmt: skip
# The authors' per-image PSNRs, vendored with origin and licence in colorizers/reference/README.md.
AUTHORS_PSNRS = REPO / "colorizers" / "reference" / "psnrs_siggraph.npy"
RESULTS_DIR = REPO / "colorizers" / "results"
OUR_MASK_OFFSET = 0.5  # what colorizers.train uses; unregistered files are assumed to be ours
GAIN_AT_10_DB = 3.0  # issue #4 quality bar: ≥ 3 dB more at 10 hints than with none
# Issue #15's hint bars, at 10 random 6x6 hints: the output at the hints' pixels within 10 ab units of
# the hint colour; no halo: far from every hint (> 64 px) the colour moves by less than 5 ab units.
HINT_FIDELITY_AB = 10.0
HALO_DISTANCE_PX = 64.0
HALO_AB = 5.0

# (L (N,1,H,W), ab hints (N,2,H,W), 0/1 mask (N,1,H,W)) -> ab (N,2,H,W), all Lab units
Colorize = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resize_lab(lab: NDArray[np.float32], size: int = SIZE) -> NDArray[np.float32]:
    """(3,H,W) Lab -> (3,size,size) Lab, resized in 8-bit sRGB as the authors' loader does."""
    rgb = Image.fromarray(lab_to_rgb8(lab[0], lab[1:])).resize((size, size), Image.Resampling.BILINEAR)
    return rgb2lab(np.asarray(rgb)).astype(np.float32).transpose(2, 0, 1)


def crop8(lab: NDArray[np.float32]) -> NDArray[np.float32]:
    """Top-left crop to multiples of 8 (the network's shortcut additions need them)."""
    return lab[:, : lab.shape[1] // 8 * 8, : lab.shape[2] // 8 * 8]


def served_patches(lab: NDArray[np.float32], patches: list[hint_sim.Patch]) -> list[hint_spread.Patch]:
    """Simulated hint patches as the gateway's hint spread takes them: each colour the truth's mean over
    its patch, as `hint_sim.paint_hints` paints it."""
    return [
        hint_spread.Patch(y, x, y + size, x + size, float(a), float(b))
        for y, x, size in patches
        for a, b in [lab[1:, y : y + size, x : x + size].mean((1, 2))]
    ]


def spread_hints(lab: NDArray[np.float32], ab: NDArray[np.float32], patches: list[hint_sim.Patch]) -> NDArray:
    """The network's (2,H,W) ab as the gateway serves it, the hints carried on by its hint spread."""
    served = served_patches(lab, patches)
    return hint_spread.spread(np.ascontiguousarray(lab[0]), np.ascontiguousarray(ab, np.float32), served)


@torch.no_grad()
def psnr_vs_hints(
    colorize: Colorize,
    images: Sequence[NDArray[np.float32]],
    counts: Sequence[int] = HINT_COUNTS,
    *,
    seed: int = 0,
    patch: int = PATCH,
    spread: bool = False,
) -> dict[int, list[float]]:
    """Per-image PSNR (dB) for each number of hints; image i's hints come from seed (seed, i);
    `spread`: scored after the gateway's hint spread (`spread_hints`)."""
    psnrs: dict[int, list[float]] = {k: [] for k in counts}
    for i, image in enumerate(images):
        lab = torch.from_numpy(np.ascontiguousarray(crop8(image)))
        _, h, w = lab.shape
        rng = np.random.default_rng([seed, i])
        patches = [hint_sim.draw_patches(rng, h, w, count=k, sizes=(patch,)) for k in counts]
        ab = lab[None, 1:].expand(len(counts), -1, -1, -1)
        hint, mask = hint_sim.paint_hints(ab, patches)
        predicted = colorize(lab[None, :1].expand(len(counts), -1, -1, -1), hint, mask).cpu().numpy()
        truth = lab_to_rgb8(lab[0].numpy(), lab[1:].numpy())
        for k, pred_ab, drawn in zip(counts, predicted, patches, strict=True):
            if spread:
                pred_ab = spread_hints(lab.numpy(), pred_ab, drawn)
            psnrs[k].append(psnr(lab_to_rgb8(lab[0].numpy(), pred_ab), truth))
    return psnrs


@torch.no_grad()
def hint_locality(
    colorize: Colorize, images: Sequence[NDArray[np.float32]], *, count: int = 10, seed: int = 0,
    patch: int = PATCH, spread: bool = False,
) -> dict[str, float]:  # fmt: skip
    """Does the colour follow `count` random hints where they are, and only near them?

    Per image (hints from seed (seed, i, 1)): the mean ab distance between output and hint colour
    at the hinted pixels, and the mean ab change against the no-hint output at the pixels farther than
    `HALO_DISTANCE_PX` from every hinted pixel (images without such pixels are left out of that mean).
    `spread`: after the gateway's hint spread.
    """
    from scipy.ndimage import distance_transform_edt

    at_hints, far_change, within = [], [], []
    for i, image in enumerate(images):
        lab = torch.from_numpy(np.ascontiguousarray(crop8(image)))
        _, h, w = lab.shape
        rng = np.random.default_rng([seed, i, 1])
        patches = [[], hint_sim.draw_patches(rng, h, w, count=count, sizes=(patch,))]
        hint, mask = hint_sim.paint_hints(lab[None, 1:].expand(2, -1, -1, -1), patches)
        ab = colorize(lab[None, :1].expand(2, -1, -1, -1), hint, mask).cpu().numpy()
        if spread:
            ab[1] = spread_hints(lab.numpy(), ab[1], patches[1])
        on = mask[1, 0].numpy() > 0
        error = np.hypot(*(ab[1] - hint[1].numpy()))[on]
        at_hints.append(float(error.mean()))
        within.append(float((error <= HINT_FIDELITY_AB).mean()))
        far = distance_transform_edt(~on) > HALO_DISTANCE_PX
        if far.any():
            far_change.append(float(np.hypot(*(ab[1] - ab[0]))[far].mean()))
    return {
        "hints": count,
        "ab_error_at_hints": float(np.mean(at_hints)),
        "share_of_hint_pixels_within_10": float(np.mean(within)),
        "ab_change_far_from_hints": float(np.mean(far_change)) if far_change else float("nan"),
        "images_with_far_pixels": len(far_change),
    }


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    x = np.asarray(values, np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def authors_curve(path: Path, counts: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Mean ± s.e. of the authors' per-image PSNRs at those of `counts` their sweep has."""
    table = np.load(path)
    return {k: mean_and_se(table[:, AUTHORS_COUNTS.index(k)].tolist()) for k in counts if k in AUTHORS_COUNTS}


@torch.no_grad()
def automatic_scores(model: SIGGRAPHGenerator, images: LabImages, *, count: int, device: str) -> dict:
    """ECCV16-comparable metrics of the no-hint output on centre `SIZE` crops (colorizers.evaluate)."""
    centres = torch.from_numpy(quantize.bin_centres())
    gray, auto, truth_colour = Scores(), Scores(), []
    for i in range(count):
        lab = crop8(images.centre_crop(i, SIZE))
        true_rgb = lab_to_rgb8(lab[0], lab[1:])
        true_bins = quantize.nearest_bin(torch.from_numpy(lab[None, 1:]), centres)[0].numpy()
        gray.add(np.hypot(lab[1], lab[2]), true_bins, lab_to_rgb8(lab[0], np.zeros_like(lab[1:])), true_rgb)
        ab = model(torch.from_numpy(lab[None, :1]).to(device))[0].cpu().numpy()
        auto.add(ab_error(ab, lab[1:]), true_bins, lab_to_rgb8(lab[0], ab), true_rgb)
        truth_colour.append(colourfulness(true_rgb))
    beats = np.asarray(auto.psnrs) >= np.asarray(gray.psnrs)
    return {
        "gray": gray.summary(),
        "model": {**auto.summary(), "share_psnr_at_least_gray": float(beats.mean())},
        "truth": {"colourfulness": float(np.mean(truth_colour))},
    }


def load_siggraph(checkpoint: str, mask_offset: float | None = None) -> tuple[SIGGRAPHGenerator, str]:
    """A registry name, a shipped .pth or a run's last.pt -> (model in eval mode, label).

    Registered checkpoints carry their mask convention; other files are taken to be ours (0.5)
    unless `mask_offset` says otherwise.
    """
    path = Path(checkpoint)
    if checkpoint in weights.REGISTRY or (path.is_file() and not checkpoint.endswith("last.pt")):
        try:
            entry = weights.REGISTRY.get(checkpoint) or weights.identify(path)
        except ValueError:
            entry = None  # an unregistered file: loaded below
        if entry is not None:
            model = weights.load(entry, None if checkpoint in weights.REGISTRY else path)
            if not isinstance(model, SIGGRAPHGenerator):
                raise ValueError(f"{checkpoint} is a {entry.arch} checkpoint, not siggraph17")
            return model, entry.name
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is neither a registered checkpoint nor a file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    width = state["model1.0.weight"].shape[0] / 64  # first conv has round(64 * width) channels
    offset = OUR_MASK_OFFSET if mask_offset is None else mask_offset
    model = SIGGRAPHGenerator(width=width, mask_offset=offset)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=True)
    digest = weights.sha256_of(path)[:12]
    return model.eval(), f"{path.name} (width {width:g}, mask offset {offset:g}, sha256 {digest})"


def load_curve(path: Path) -> tuple[str, dict[int, tuple[float, float]]]:
    """A curve this tool wrote (`<prefix>_psnr_vs_hints.json`) -> (checkpoint label, {hints: (mean, se)})."""
    saved = json.loads(path.read_text())
    curve = {int(k): (float(v[0]), float(v[1])) for k, v in saved["psnr_vs_hints"].items()}
    return str(saved["checkpoint"]).split(" ")[0], curve


def plot(ours: dict[int, tuple[float, float]], authors: dict[int, tuple[float, float]], label: str,
         path: Path, others: Sequence[tuple[str, dict[int, tuple[float, float]]]] = ()) -> None:  # fmt: skip
    """Our curve, the authors', and earlier trials' (`others`: (label, curve)) on one plot."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    earlier = [(f"earlier: {name}", curve, "^:") for name, curve in others]
    for name, curve, style in (*earlier, (f"ours: {label}", ours, "o-"),
                               ("authors (Caffe, ImageNet)", authors, "s--")):  # fmt: skip
        ks = sorted(curve)
        means, ses = np.array([curve[k] for k in ks]).T
        ax.errorbar(ks, means, yerr=ses, fmt=style, capsize=3, label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(sorted(ours), [str(k) for k in sorted(ours)])
    ax.set_xlabel("number of random 6x6 hints")
    ax.set_ylabel("PSNR (dB), mean ± s.e.")
    ax.set_title("SIGGRAPH17: PSNR vs number of hints")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown(metrics: dict, label: str, plot_name: str) -> str:
    """The section for colorizers/MODEL_CARD.md."""
    curve, authors, auto = metrics["psnr_vs_hints"], metrics["authors"], metrics["automatic"]
    lines = [
        f"### SIGGRAPH17 evaluation: {label}",
        "",
        f"PSNR vs number of random {PATCH}x{PATCH} hints on the validation split ({metrics['hint_images']} "
        f"images resized to {SIZE}², seed {metrics['seed']}); authors: `psnrs_siggraph.npy` (1000 ImageNet "
        "images, Caffe model).",
        "",
        "| hints | ours PSNR dB | authors PSNR dB |",
        "|---|---|---|",
    ]
    for k, (mean, se) in curve.items():
        theirs = authors.get(k)
        lines.append(
            f"| {k} | {mean:.2f} ± {se:.2f} | "
            + (f"{theirs[0]:.2f} ± {theirs[1]:.2f} |" if theirs else "– |")
        )
    gain = metrics["gain_at_10_db"]
    lines += [
        "",
        f"Gain at 10 hints over none: {gain:.2f} dB (bar: ≥ {GAIN_AT_10_DB:g} dB: "
        f"{'yes' if gain >= GAIN_AT_10_DB else '**no**'}).",
        "",
        f"![PSNR vs hints]({plot_name})",
        "",
        f"Automatic mode (no hints), centre {SIZE}² crops of {metrics['auto_images']} images, "
        "scored as ECCV16:",
        "",
        "| method | ab L2 ↓ | AuC 0–150 ↑ | AuC rebal ↑ | PSNR dB ↑ | colourfulness |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in (("gray (ab = 0)", auto["gray"]), ("SIGGRAPH17, no hints", auto["model"])):
        lines.append(f"| {name} | {m['ab_l2']:.2f} | {m['auc']:.3f} | {m['auc_rebal']:.3f} | {m['psnr']:.2f} "
                     f"| {m['colourfulness']:.1f} |")  # fmt: skip
    lines += [f"| ground truth | 0 | 1 | 1 | ∞ | {auto['truth']['colourfulness']:.1f} |", ""]
    lines += ["Bars of issue #15:", ""] + [f"- {text}" for text in bar_lines(metrics)] + [""]
    return "\n".join(lines)


def quality_bars(metrics: dict) -> dict[str, tuple[bool, str]]:
    """Issue #15's bars for SIGGRAPH17 -> {bar: (met, measured value in words)}."""
    auto, locality = metrics["automatic"], metrics.get("locality")
    model, gray, truth = auto["model"], auto["gray"], auto["truth"]["colourfulness"]
    ratio = model["colourfulness"] / truth
    share = model.get("share_psnr_at_least_gray", float("nan"))
    bars = {
        "automatic colourfulness ≥ 0.6× truth": (ratio >= 0.6, f"{ratio:.2f}×"),
        "automatic AuC rebal ≥ gray + 0.03": (
            model["auc_rebal"] >= gray["auc_rebal"] + 0.03,
            f"{model['auc_rebal'] - gray['auc_rebal']:+.3f}",
        ),
        "automatic PSNR ≥ gray on ≥ 80 % of photos": (share >= 0.8, f"{share:.0%}"),
        f"≥ {GAIN_AT_10_DB:g} dB at 10 hints over none": (
            metrics["gain_at_10_db"] >= GAIN_AT_10_DB,
            f"{metrics['gain_at_10_db']:.2f} dB",
        ),
    }
    if locality:
        bars[f"output at the hints' pixels within {HINT_FIDELITY_AB:g} ab units"] = (
            locality["ab_error_at_hints"] <= HINT_FIDELITY_AB,
            f"mean {locality['ab_error_at_hints']:.1f}, "
            f"{locality['share_of_hint_pixels_within_10']:.0%} of hint pixels within",
        )
        bars[f"no halo (> {HALO_DISTANCE_PX:g} px from every hint, mean ab change < {HALO_AB:g})"] = (
            locality["ab_change_far_from_hints"] < HALO_AB,
            f"{locality['ab_change_far_from_hints']:.2f} on {locality['images_with_far_pixels']} images",
        )
    return bars


def bar_lines(metrics: dict) -> list[str]:
    return [f"{name}: {'yes' if met else '**no**'} ({value})" for name, (met, value) in
            quality_bars(metrics).items()]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m colorizers.evaluate_hints", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--checkpoint", required=True, help="registry name, shipped .pth, or a run's last.pt")
    parser.add_argument(
        "--mask-offset", type=float, default=None, help="for unregistered files (default 0.5)"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="default: .cache/colorize-eval/<checkpoint>")
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR, help="plot + curve (default: %(default)s)"
    )
    parser.add_argument("--authors", type=Path, default=AUTHORS_PSNRS, help="psnrs_siggraph.npy")
    parser.add_argument(
        "--prefix",
        default="siggraph17",
        help="names of the files in --results: <prefix>_psnr_vs_hints.png, ...",
    )
    parser.add_argument(
        "--compare", type=Path, nargs="*", default=[], help="earlier <prefix>_psnr_vs_hints.json to plot too"
    )
    parser.add_argument("--hints", type=int, nargs="+", default=list(HINT_COUNTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--spread", action="store_true",
        help="score what the gateway serves: the network's output, then its hint spread "
        "(service/color/hint_spread.py)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    model, label = load_siggraph(args.checkpoint, args.mask_offset)
    if args.spread:
        label = f"{label} + the gateway's hint spread"
    model = model.to(args.device)
    images = LabImages(args.cache, "val")
    count = len(images) if args.max_images <= 0 else min(args.max_images, len(images))
    resized = [resize_lab(images.image(i)) for i in range(count)]

    @torch.no_grad()
    def colorize(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        device = args.device
        return model.forward_both(lightness.to(device), hint.to(device), mask.to(device))[0]

    log.info("PSNR vs hints %s on %d images", args.hints, count)
    per_image = psnr_vs_hints(colorize, resized, args.hints, seed=args.seed, spread=args.spread)
    curve = {k: mean_and_se(v) for k, v in per_image.items()}
    authors = authors_curve(args.authors, args.hints)
    log.info("hint locality at 10 hints")
    locality = hint_locality(colorize, resized, seed=args.seed, spread=args.spread)
    log.info("automatic-mode metrics")
    auto = automatic_scores(model, images, count=count, device=args.device)
    metrics = {
        "checkpoint": label,
        "hint_images": count,
        "auto_images": count,
        "seed": args.seed,
        "patch": PATCH,
        "psnr_vs_hints": curve,
        "authors": authors,
        "gain_at_10_db": curve[10][0] - curve[0][0] if 0 in curve and 10 in curve else float("nan"),
        "automatic": auto,
        "locality": locality,
        "data_manifest_sha256": manifest_sha256(args.cache),
    }
    plot_path = args.results / f"{args.prefix}_psnr_vs_hints.png"
    plot(curve, authors, label.split(" ")[0], plot_path, [load_curve(p) for p in args.compare])
    (args.results / f"{args.prefix}_psnr_vs_hints.json").write_text(
        json.dumps({k: metrics[k] for k in ("checkpoint", "hint_images", "seed", "patch", "psnr_vs_hints",
                                            "authors", "gain_at_10_db")}, indent=2) + "\n"
    )  # fmt: skip

    out = args.out or DEFAULT_CACHE.parent / "colorize-eval" / Path(args.checkpoint).stem
    out.mkdir(parents=True, exist_ok=True)
    # The grid is committed, so it shows only the validation photos that may be redistributed.
    sample_ids = [i for i, _, _ in redistributable(args.cache, "val") if i < count]
    rows = []
    for i in sample_ids:
        lab = torch.from_numpy(np.ascontiguousarray(crop8(resized[i])))
        patches = [[], hint_sim.draw_patches(np.random.default_rng([args.seed, i]), SIZE, SIZE, count=10,
                                             sizes=(PATCH,))]  # fmt: skip
        hint, mask = hint_sim.paint_hints(lab[None, 1:].expand(2, -1, -1, -1), patches)
        ab = colorize(lab[None, :1].expand(2, -1, -1, -1), hint, mask).cpu().numpy()
        if args.spread:
            ab[1] = spread_hints(lab.numpy(), ab[1], patches[1])
        lightness = lab[0].numpy()
        rows.append([lab_to_rgb8(lightness, np.zeros_like(ab[0])), lab_to_rgb8(lightness, ab[0]),
                     lab_to_rgb8(lightness, ab[1]), lab_to_rgb8(lightness, lab[1:].numpy())])  # fmt: skip
    if rows:
        _grid(rows, 192).save(args.results / f"{args.prefix}_samples.png", optimize=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "model_card.md").write_text(
        markdown(metrics, label, f"results/{args.prefix}_psnr_vs_hints.png")
        + f"\n![gray | no hints | 10 hints | truth](results/{args.prefix}_samples.png)\n"
    )
    print((out / "model_card.md").read_text())
    print(f"wrote {plot_path}, {args.prefix}_samples.png, {out}/metrics.json, model_card.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
