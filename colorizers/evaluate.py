"""Evaluate an ECCV16 checkpoint on the validation split of the data cache.

Metrics (docs/colorization.md §5.1), on each validation image's centre `--size`² crop, colour
predicted at H/4, upsampled x4 and recombined with the true L:

- ab L2: mean per-pixel Euclidean ab error, in Lab units.
- AuC: area under the cumulative mass function of the per-pixel ab error over thresholds 0..150
  (integer steps, trapezoid, normalised to 1). The rebalanced variant weights each pixel by the
  inverse frequency of its true colour bin in the evaluated set, so every colour bin counts equally.
- PSNR: of the 8-bit sRGB image against the 8-bit truth, averaged over images.
- Colourfulness: Hasler & Süsstrunk (2003), M = σ_rgyb + 0.3·μ_rgyb on 8-bit sRGB, averaged.

Scored for gray (ab = 0), the ground truth (colourfulness only) and the model at each annealing
temperature of `--temperatures`; `pick_temperature` chooses the default T from those numbers.
Writes `metrics.json` and `model_card.md` (a section for colorizers/MODEL_CARD.md) into `--out`, and
sample grids (gray | model | truth; gray | T sweep | truth) as `<checkpoint>_samples.png` and
`<checkpoint>_temperatures.png` into `--results`, showing only the
validation photos whose licence allows redistribution.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from skimage.color import lab2rgb

from colorizers import quantize, weights
from colorizers.dataset import DEFAULT_CACHE, REPO, LabImages, manifest_sha256, redistributable
from colorizers.eccv16 import ECCVGenerator
from service.color.quality import psnr  # of 8-bit images: peak 255, inf when equal

log = logging.getLogger(__name__)

RESULTS_DIR = REPO / "colorizers" / "results"
TEMPERATURES = (0.1, 0.2, 0.38, 0.6, 1.0)
MAX_ERROR = 150  # AuC thresholds 0..150 ab units
COLOURFULNESS_BAND = (0.6, 1.2)  # acceptable model / ground-truth colourfulness (issue #4 quality bar)
PSNR_SLACK_DB = 1.0  # the model may trail gray by at most this much PSNR
# Issue #15's bars for automatic colour at the shipped temperature.
COLOURFUL_BAR = 0.6  # colourfulness >= 0.6x the truth
AUC_REBAL_MARGIN = 0.03  # rebalanced AuC >= gray + 0.03
PSNR_SHARE_BAR = 0.8  # PSNR >= gray on at least 80 % of the photos


def ab_error(pred_ab: NDArray[np.floating], true_ab: NDArray[np.floating]) -> NDArray[np.float64]:
    """(2,H,W) x 2 -> (H,W) Euclidean distance in the ab plane."""
    return np.hypot(*(np.asarray(pred_ab, np.float64) - np.asarray(true_ab, np.float64)))


def auc_from_counts(counts: NDArray[np.floating]) -> float:
    """AuC of the CMF from `counts[k]` = (weighted) number of pixels with ceil(error) = k.

    Pixels with ceil(error) = k lie within every integer threshold t ≥ k, so the CMF at t is the
    cumulative sum up to t (counts beyond 150 only enlarge the total).
    """
    total = counts.sum()
    if total <= 0:
        raise ValueError("no pixels counted")
    cmf = np.cumsum(counts[: MAX_ERROR + 1]) / total
    trapezoid = cmf.sum() - 0.5 * (cmf[0] + cmf[-1])  # unit steps from 0 to MAX_ERROR
    return float(trapezoid / MAX_ERROR)


def colourfulness(rgb: NDArray[np.uint8]) -> float:
    """Hasler & Süsstrunk colourfulness of an (H,W,3) 8-bit sRGB image."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def lab_to_rgb8(lightness: NDArray[np.floating], ab: NDArray[np.floating]) -> NDArray[np.uint8]:
    """(H,W) L and (2,H,W) ab -> (H,W,3) 8-bit sRGB (out-of-gamut colours clipped)."""
    lab = np.stack([np.asarray(lightness, np.float64), *np.asarray(ab, np.float64)], axis=-1)
    with warnings.catch_warnings():
        # Predicted colours can leave the sRGB gamut (negative Z); clipping them is the point here.
        warnings.filterwarnings("ignore", message=".*negative Z values.*", category=UserWarning)
        rgb = lab2rgb(lab)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@dataclass
class Scores:
    """Accumulates one method's metrics over images."""

    counts: NDArray[np.float64] = field(default_factory=lambda: np.zeros(MAX_ERROR + 2))
    bin_counts: NDArray[np.float64] = field(default_factory=lambda: np.zeros((313, MAX_ERROR + 2)))
    error_sum: float = 0.0
    pixels: int = 0
    psnrs: list[float] = field(default_factory=list)
    colourfulness: list[float] = field(default_factory=list)

    def add(self, error: NDArray[np.float64], true_bins: NDArray[np.int64], rgb: NDArray[np.uint8],
            truth: NDArray[np.uint8]) -> None:  # fmt: skip
        k = np.minimum(np.ceil(error).astype(np.int64), MAX_ERROR + 1).ravel()
        self.counts += np.bincount(k, minlength=MAX_ERROR + 2)
        joint = true_bins.ravel() * (MAX_ERROR + 2) + k  # one bincount instead of a slow np.add.at
        self.bin_counts += np.bincount(joint, minlength=self.bin_counts.size).reshape(self.bin_counts.shape)
        self.error_sum += float(error.sum())
        self.pixels += error.size
        self.psnrs.append(psnr(rgb, truth))
        self.colourfulness.append(colourfulness(rgb))

    def summary(self) -> dict[str, float]:
        seen = self.bin_counts.sum(1) > 0
        per_bin = self.bin_counts[seen] / self.bin_counts[seen].sum(1, keepdims=True)
        return {
            "ab_l2": self.error_sum / self.pixels,
            "auc": auc_from_counts(self.counts),
            "auc_rebal": auc_from_counts(per_bin.mean(0)),
            "psnr": float(np.mean(self.psnrs)),
            "colourfulness": float(np.mean(self.colourfulness)),
        }


AUC_TIE = 0.001  # rebalanced AuC differences this small do not choose a temperature


def pick_temperature(
    results: dict[str, dict[str, float]], gray: dict[str, float], truth_colour: float
) -> str:
    """The default T: best rebalanced AuC among temperatures that keep PSNR within 1 dB of gray and
    colourfulness within 0.6-1.2x the truth; failing that, among those that keep the PSNR; failing
    that, the best PSNR. AuCs within `AUC_TIE` of the best count as tied, and the best PSNR among them
    wins (eccv16-w0.25-l0.75-c55: T = 1 led T = 0.6 by 0.0009 AuC and trailed it by 0.25 dB).
    Keys of `results` are the temperatures as strings."""
    low, high = COLOURFULNESS_BAND

    def ok_psnr(t: str) -> bool:
        return results[t]["psnr"] >= gray["psnr"] - PSNR_SLACK_DB

    def ok_colour(t: str) -> bool:
        return low * truth_colour <= results[t]["colourfulness"] <= high * truth_colour

    for keep in ([t for t in results if ok_psnr(t) and ok_colour(t)], [t for t in results if ok_psnr(t)]):
        if keep:
            best = max(results[t]["auc_rebal"] for t in keep)
            tied = [t for t in keep if results[t]["auc_rebal"] >= best - AUC_TIE]
            return max(tied, key=lambda t: results[t]["psnr"])
    return max(results, key=lambda t: results[t]["psnr"])


def load_model(checkpoint: str) -> tuple[ECCVGenerator, str]:
    """A registry name, a shipped .pth (fp16 state_dict) or a run's last.pt -> (model, label)."""
    if checkpoint in weights.REGISTRY:
        model = weights.load(weights.REGISTRY[checkpoint])
        if not isinstance(model, ECCVGenerator):
            raise ValueError(f"{checkpoint} is not an ECCV16 checkpoint")
        return model, checkpoint
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is neither a registered checkpoint nor a file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    width = state["model1.0.weight"].shape[0] / 64  # first conv has round(64 * width) channels
    model = ECCVGenerator(width=width)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=True)
    return model.eval(), f"{path.name} (width {width:g}, sha256 {weights.sha256_of(path)[:12]})"


def _grid(rows: list[list[NDArray[np.uint8]]], cell: int) -> Image.Image:
    sheet = Image.new("RGB", (cell * len(rows[0]), cell * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(
                Image.fromarray(image).resize((cell, cell), Image.Resampling.LANCZOS), (c * cell, r * cell)
            )
    return sheet


@torch.no_grad()
def evaluate(
    model: ECCVGenerator,
    images: LabImages,
    *,
    size: int = 256,
    temperatures: tuple[float, ...] = TEMPERATURES,
    max_images: int = 0,
    samples: Sequence[int] = (),
    device: str = "cpu",
    logit_shift: torch.Tensor | None = None,
) -> tuple[dict, dict[str, list[list[NDArray[np.uint8]]]]]:
    """Score gray, truth and the model at each T; returns (metrics, rows per T for the `samples` images).

    `logit_shift` (Q,): added to every pixel's logits before the decode (`colorizers.calibrate`)."""
    model = model.to(device).eval()
    centres_np = quantize.bin_centres()
    centres = torch.from_numpy(centres_np).to(device)
    count = len(images) if max_images <= 0 else min(max_images, len(images))
    sample_ids = set(samples)
    gray, per_t = Scores(), {f"{t:g}": Scores() for t in temperatures}
    truth_colour: list[float] = []
    rows: dict[str, list[list[NDArray[np.uint8]]]] = {"gray": [], "truth": [], **{k: [] for k in per_t}}
    for i in range(count):
        lab = images.centre_crop(i, size)
        h, w = (lab.shape[1] // 8) * 8, (lab.shape[2] // 8) * 8
        lab = lab[:, :h, :w]
        true_rgb = lab_to_rgb8(lab[0], lab[1:])
        gray_rgb = lab_to_rgb8(lab[0], np.zeros_like(lab[1:]))
        true_bins = quantize.nearest_bin(torch.from_numpy(lab[None, 1:]), torch.from_numpy(centres_np))[
            0
        ].numpy()
        gray.add(np.hypot(lab[1], lab[2]), true_bins, gray_rgb, true_rgb)
        truth_colour.append(colourfulness(true_rgb))
        logits = model.logits(torch.from_numpy(lab[None, :1]).to(device))
        if logit_shift is not None:
            logits = logits + logit_shift.to(device).view(1, -1, 1, 1)
        if i in sample_ids:
            rows["gray"].append([gray_rgb])
            rows["truth"].append([true_rgb])
        for t, key in zip(temperatures, per_t, strict=True):
            ab = F.interpolate(quantize.annealed_mean(logits, centres, t), size=(h, w), mode="bilinear")
            ab_np = ab[0].cpu().numpy()
            rgb = lab_to_rgb8(lab[0], ab_np)
            per_t[key].add(ab_error(ab_np, lab[1:]), true_bins, rgb, true_rgb)
            if i in sample_ids:
                rows[key].append([rgb])
        if (i + 1) % 20 == 0:
            log.info("evaluated %d / %d images", i + 1, count)
    # Issue #15's bar counts photos, not the mean: PSNR at or above gray's on >= 80 % of them.
    gray_psnrs = np.asarray(gray.psnrs)
    results = {
        k: {**s.summary(), "share_psnr_at_least_gray": float(np.mean(np.asarray(s.psnrs) >= gray_psnrs))}
        for k, s in per_t.items()
    }
    gray_summary = gray.summary()
    truth = float(np.mean(truth_colour))
    metrics = {
        "images": count,
        "size": size,
        "gray": gray_summary,
        "truth": {"colourfulness": truth},
        "temperatures": results,
        "default_temperature": float(pick_temperature(results, gray_summary, truth)),
    }
    return metrics, rows


def quality_bar(metrics: dict) -> dict[str, bool]:
    """Issue #4's bar for ECCV16 at the chosen temperature (the sample grids are judged by eye)."""
    model = metrics["temperatures"][f"{metrics['default_temperature']:g}"]
    gray, truth = metrics["gray"], metrics["truth"]["colourfulness"]
    low, high = COLOURFULNESS_BAND
    return {
        "beats_gray_on_rebalanced_auc": model["auc_rebal"] > gray["auc_rebal"],
        "psnr_within_1db_of_gray": model["psnr"] >= gray["psnr"] - PSNR_SLACK_DB,
        "colourfulness_within_0.6_1.2x_truth": low * truth <= model["colourfulness"] <= high * truth,
        "colourfulness_at_least_0.6x_truth": model["colourfulness"] >= COLOURFUL_BAR * truth,
        "auc_rebal_at_least_gray_plus_0.03": model["auc_rebal"] >= gray["auc_rebal"] + AUC_REBAL_MARGIN,
        "psnr_at_least_gray_on_80pct": model.get("share_psnr_at_least_gray", 0.0) >= PSNR_SHARE_BAR,
    }


_BAR_LABELS = {
    "beats_gray_on_rebalanced_auc": "rebalanced AuC above gray",
    "psnr_within_1db_of_gray": "PSNR at most 1 dB below gray",
    "colourfulness_within_0.6_1.2x_truth": "colourfulness within 0.6–1.2x the ground truth",
    "colourfulness_at_least_0.6x_truth": "issue #15: colourfulness ≥ 0.6x the ground truth",
    "auc_rebal_at_least_gray_plus_0.03": "issue #15: rebalanced AuC ≥ gray + 0.03",
    "psnr_at_least_gray_on_80pct": "issue #15: PSNR ≥ gray on at least 80 % of the photos",
}


def markdown(metrics: dict, label: str, data_summary: dict, grids: dict[str, str]) -> str:
    """The section the lead pastes into colorizers/MODEL_CARD.md."""
    default = f"{metrics['default_temperature']:g}"
    manifest = data_summary.get("manifest_sha256", "?")[:16]
    lines = [
        f"### ECCV16 evaluation: {label}",
        "",
        f"Validation split of `colorizers.data` ({metrics['images']} images, "
        f"centre {metrics['size']}² crops, manifest sha256 `{manifest}…`). Ground-truth colourfulness "
        f"{metrics['truth']['colourfulness']:.1f}. Default temperature picked: **T = {default}**.",
        "",
        "| method | ab L2 ↓ | AuC 0–150 ↑ | AuC rebal ↑ | PSNR dB ↑ | photos ≥ gray PSNR | colourfulness |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, m: dict[str, float]) -> str:
        share = m.get("share_psnr_at_least_gray")
        shown = "–" if share is None else f"{share:.0%}"
        return (f"| {name} | {m['ab_l2']:.2f} | {m['auc']:.3f} | {m['auc_rebal']:.3f} | {m['psnr']:.2f} "
                f"| {shown} | {m['colourfulness']:.1f} |")  # fmt: skip

    lines.append(row("gray (ab = 0)", metrics["gray"]))
    for t, m in metrics["temperatures"].items():
        lines.append(row(f"model, T = {t}" + (" (default)" if t == default else ""), m))
    lines.append(f"| ground truth | 0 | 1 | 1 | ∞ | 100 % | {metrics['truth']['colourfulness']:.1f} |")
    lines += ["", "Quality bars (issues #4 and #15) at the default T:", ""]
    lines += [
        f"- {_BAR_LABELS[name]}: {'yes' if ok else '**no**'}" for name, ok in quality_bar(metrics).items()
    ]
    prior = data_summary.get("prior_vs_authors")
    if prior:
        lines += [
            "",
            f"Training prior vs the authors' ImageNet prior: entropy {prior['entropy_ours']:.2f} vs "
            f"{prior['entropy_authors']:.2f} nats, KL(ours‖authors) {prior['kl_ours_authors']:.3f}, "
            f"total variation {prior['total_variation']:.3f}; "
            f"rebalancing weights at λ = {prior['lambda']:g} span "
            f"{prior['weight_range_ours'][0]:.3f}–{prior['weight_range_ours'][1]:.2f} (authors' prior: "
            f"{prior['weight_range_authors'][0]:.3f}–{prior['weight_range_authors'][1]:.2f}).",
        ]
    lines += ["", *[f"![{caption}]({name})" for caption, name in grids.items()], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m colorizers.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--checkpoint", required=True, help="registry name, shipped .pth, or a run's last.pt")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="default: .cache/colorize-eval/<checkpoint>")
    parser.add_argument("--size", type=int, default=256, help="centre crop size")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole validation split")
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR, help="sample grids (default: %(default)s)"
    )
    parser.add_argument("--prefix", default="", help="grid file names (default: the checkpoint's name)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--as-shipped",
        action="store_true",
        help="bars and grids at the registry entry's temperature (chosen by its own rule), not the picker's",
    )
    args = parser.parse_args(argv)
    shipped = None
    if args.as_shipped:
        entry = weights.REGISTRY.get(args.checkpoint)
        if entry is None or "temperature" not in entry.meta:
            raise SystemExit(f"--as-shipped: {args.checkpoint!r} is no registered checkpoint with a T")
        shipped = float(entry.meta["temperature"])
        args.temperatures = sorted({*args.temperatures, shipped})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    model, label = load_model(args.checkpoint)
    # a registry name is the name ("…-a0.4" has no suffix to strip); a file, its stem
    stem = args.checkpoint if args.checkpoint in weights.REGISTRY else Path(args.checkpoint).stem
    out = args.out or DEFAULT_CACHE.parent / "colorize-eval" / stem
    out.mkdir(parents=True, exist_ok=True)
    # Grids are committed, so they show only the validation photos that may be redistributed.
    shareable = [i for i, _, _ in redistributable(args.cache, "val")]
    metrics, rows = evaluate(model, LabImages(args.cache, "val"), size=args.size,
                             temperatures=tuple(args.temperatures), max_images=args.max_images,
                             samples=shareable, device=args.device)  # fmt: skip
    if shipped is not None:
        metrics["picked_temperature"] = metrics["default_temperature"]
        metrics["default_temperature"] = shipped
    default = f"{metrics['default_temperature']:g}"
    prefix = args.prefix or stem  # each evaluated checkpoint keeps its own grids
    triplets = [g + m + t for g, m, t in zip(rows["gray"], rows[default], rows["truth"], strict=True)]
    sweep = [[g[0], *(rows[f"{t:g}"][i][0] for t in args.temperatures), rows["truth"][i][0]]
             for i, g in enumerate(rows["gray"])]  # fmt: skip
    grids = {
        f"gray | model T={default} | truth": f"results/{prefix}_samples.png",
        f"gray | T = {' / '.join(f'{t:g}' for t in args.temperatures)} | truth": (
            f"results/{prefix}_temperatures.png"
        ),
    }
    if triplets:
        args.results.mkdir(parents=True, exist_ok=True)
        _grid(triplets, 192).save(args.results / f"{prefix}_samples.png", optimize=True)
        _grid(sweep, 160).save(args.results / f"{prefix}_temperatures.png", optimize=True)

    summary_path = args.cache / "summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    metrics.update(checkpoint=label, data_manifest_sha256=manifest_sha256(args.cache),
                   quality_bar=quality_bar(metrics))  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "model_card.md").write_text(markdown(metrics, label, data_summary, grids))
    print((out / "model_card.md").read_text())
    print(f"wrote {out}/metrics.json, model_card.md and the grids in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
