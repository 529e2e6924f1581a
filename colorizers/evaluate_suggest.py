"""Evaluate SIGGRAPH17 colour suggestions (SuggestColors) on the validation split, per softening factor.

The gateway suggests colours at a pixel as ideepcolor does (`service.color.suggest`): softmax of
`soften` x the 529 class logits, 25,000 samples, k-means (K = 5). Issue #15's bar, measured here on
each validation image's centre 256² crop, no hints:

- hit rate: at sampled pixels whose true colour is saturated (chroma > 20), the share where one of
  the five suggestions lies within 15 ab units of the true ab (bar: ≥ 50 %);
- distinctness: over pairs of such pixels whose true hues differ by at least 90°, the share whose
  two suggestion sets differ (some suggestion of one is more than 10 ab units from all of the
  other's; bar: the pixels of different hue get different suggestions);
- and, for reference, the same for the top suggestion alone, for five fixed colours (the quadrant
  centres a uniform distribution gives) and, per factor, for the pixel-blind suggestions: those of
  the mean logits of all sampled pixels (the colour marginal the network has learnt), the same five
  at every pixel. What a suggestion gains over those comes from the pixel.

`--soften` takes the factors to compare; `pick_soften` chooses the registry's `suggest_soften` for
the checkpoint: the factor with the best hit rate among those whose distinctness is at least 0.9
(ties: the smaller factor, the more honest spread). Writes `metrics.json` and a markdown table to
`--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from colorizers.dataset import DEFAULT_CACHE, LabImages, manifest_sha256
from colorizers.evaluate_hints import SIZE, crop8, load_siggraph
from colorizers.siggraph17 import SIGGRAPHGenerator
from contract import NUM_AB_GRID_BINS
from service.color import suggest as gateway_suggest

log = logging.getLogger(__name__)

SOFTENS = (0.2, 0.5, 1.0, 2.0, 3.0, 5.0)
K = 5  # SuggestColors' default number of suggestions
SATURATED_CHROMA = 20.0  # issue #15: pixels whose true chroma exceeds this
HIT_RADIUS = 15.0  # ab units: a suggestion this close to the truth counts
HIT_BAR = 0.5
DISTINCT_HUE_DEG = 90.0  # pixel pairs at least this far apart in hue "have different true hues"
DISTINCT_RADIUS = 10.0  # suggestion sets differ when some suggestion is this far from all others
DISTINCT_BAR = 0.9


@dataclass(frozen=True)
class Pixel:
    """A sampled validation pixel: its logits at H/4 and its true ab."""

    image: int
    logits: NDArray[np.float32]  # (529,)
    ab: tuple[float, float]

    @property
    def hue(self) -> float:
        return float(np.degrees(np.arctan2(self.ab[1], self.ab[0])))


@torch.no_grad()
def sample_pixels(
    model: SIGGRAPHGenerator, images: LabImages, *, count: int, per_image: int, seed: int = 0
) -> list[Pixel]:
    """Up to `per_image` random saturated pixels (chroma > 20) of each of the first `count` images."""
    pixels: list[Pixel] = []
    for i in range(count):
        lab = crop8(images.centre_crop(i, SIZE))
        lightness = torch.from_numpy(np.ascontiguousarray(lab[None, :1]))
        zeros = torch.zeros_like(lightness)
        _, logits = model.forward_both(lightness, zeros.expand(-1, 2, -1, -1), zeros)
        logits_np = logits[0].numpy()
        chroma = np.hypot(lab[1], lab[2])
        ys, xs = np.nonzero(chroma > SATURATED_CHROMA)
        if len(ys) == 0:
            continue
        rng = np.random.default_rng([seed, i])
        stride = lab.shape[1] // logits_np.shape[1]
        for j in rng.choice(len(ys), size=min(per_image, len(ys)), replace=False):
            y, x = int(ys[j]), int(xs[j])
            true_ab = (float(lab[1, y, x]), float(lab[2, y, x]))
            pixels.append(Pixel(i, logits_np[:, y // stride, x // stride].copy(), true_ab))
    return pixels


def _set_distance(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Hausdorff distance between two sets of ab points."""
    d = np.hypot(*(a[:, None, :] - b[None, :, :]).transpose(2, 0, 1))
    return float(max(d.min(1).max(), d.min(0).max()))


def hue_gap(h1: float, h2: float) -> float:
    gap = abs(h1 - h2) % 360
    return min(gap, 360 - gap)


def score(suggestions: Sequence[NDArray[np.float64]], pixels: Sequence[Pixel], *, seed: int = 0) -> dict:
    """Hit rates and distinctness of per-pixel suggestion sets ((≤K, 2) ab arrays, best first)."""
    truth = np.array([p.ab for p in pixels], np.float64)
    nearest = np.array([np.hypot(*(s - t).T).min() for s, t in zip(suggestions, truth, strict=True)])
    top = np.array([np.hypot(*(s[0] - t)) for s, t in zip(suggestions, truth, strict=True)])
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(20 * len(pixels)):
        i, j = (int(v) for v in rng.integers(len(pixels), size=2))
        if pixels[i].image != pixels[j].image and hue_gap(pixels[i].hue, pixels[j].hue) >= DISTINCT_HUE_DEG:
            pairs.append((i, j))
        if len(pairs) >= 2000:
            break
    distinct = [_set_distance(suggestions[i], suggestions[j]) > DISTINCT_RADIUS for i, j in pairs]
    distinct_top = [np.hypot(*(suggestions[i][0] - suggestions[j][0])) > DISTINCT_RADIUS for i, j in pairs]
    return {
        "pixels": len(pixels),
        "hit_rate": float((nearest <= HIT_RADIUS).mean()),
        "top1_hit_rate": float((top <= HIT_RADIUS).mean()),
        "median_nearest_ab": float(np.median(nearest)),
        "pairs": len(pairs),
        "distinct": float(np.mean(distinct)) if pairs else float("nan"),
        "distinct_top1": float(np.mean(distinct_top)) if pairs else float("nan"),
        "distinct_suggestion_sets": len({tuple(np.round(s, 1).ravel()) for s in suggestions}),
    }


def suggestions_for(pixels: Sequence[Pixel], soften: float, *, k: int = K) -> list[NDArray[np.float64]]:
    """What the gateway would suggest at each pixel with this softening (seed 0, as its default)."""
    return [
        np.array([s.ab for s in gateway_suggest.suggest(p.logits, k, 0, soften)], np.float64) for p in pixels
    ]


def quadrant_centres(k: int = K) -> NDArray[np.float64]:
    """Five fixed colours: what the gateway suggests from a uniform distribution (any pixel)."""
    uniform = np.zeros(NUM_AB_GRID_BINS)
    return np.array([s.ab for s in gateway_suggest.suggest(uniform, k, 0)], np.float64)


def pick_soften(results: dict[float, dict]) -> float:
    """The factor with the best hit rate among those that keep distinct hues apart (≥ 0.9)."""
    ok = [f for f, r in results.items() if r["distinct"] >= DISTINCT_BAR] or list(results)
    return min(ok, key=lambda f: (-round(results[f]["hit_rate"], 3), f))


def markdown(metrics: dict) -> str:
    lines = [
        f"SuggestColors on the validation split (`{metrics['checkpoint']}`, {metrics['images']} images, "
        f"centre {SIZE}² crops, no hints, {metrics['pixels']} pixels of chroma > {SATURATED_CHROMA:g}, "
        f"K = {K}):",
        "",
        f"| softening | hit rate (any of {K} within {HIT_RADIUS:g}) | top-1 hit rate | median nearest ab "
        f"| distinct sets (hues ≥ {DISTINCT_HUE_DEG:g}° apart) | distinct top-1 | distinct sets overall "
        "| pixel-blind hit rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [*metrics["by_soften"].items(), ("fixed 5 colours", metrics["fixed"])]
    for name, r in rows:
        mark = " (picked)" if name == f"{metrics['picked']:g}" else ""
        blind = f"{r['pixel_blind']['hit_rate']:.1%}" if "pixel_blind" in r else "–"
        lines.append(
            f"| {name}{mark} | {r['hit_rate']:.1%} | {r['top1_hit_rate']:.1%} | {r['median_nearest_ab']:.1f} "
            f"| {r['distinct']:.1%} | {r['distinct_top1']:.1%} | {r['distinct_suggestion_sets']} | {blind} |"
        )
    picked = metrics["by_soften"][f"{metrics['picked']:g}"]
    lines += [
        "",
        f"Bar (issue #15): hit rate ≥ {HIT_BAR:.0%}: {'yes' if picked['hit_rate'] >= HIT_BAR else '**no**'} "
        f"({picked['hit_rate']:.1%}); different hues get different suggestions: "
        f"{'yes' if picked['distinct'] >= DISTINCT_BAR else '**no**'} ({picked['distinct']:.1%}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m colorizers.evaluate_suggest", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--checkpoint", required=True, help="registry name, shipped .pth, or a run's last.pt")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    parser.add_argument("--soften", type=float, nargs="+", default=list(SOFTENS))
    parser.add_argument("--max-images", type=int, default=200, help="0: the whole validation split")
    parser.add_argument("--per-image", type=int, default=8, help="saturated pixels sampled per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="default: .cache/colorize-eval/<checkpoint>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    model, label = load_siggraph(args.checkpoint)
    images = LabImages(args.cache, "val")
    count = len(images) if args.max_images <= 0 else min(args.max_images, len(images))
    pixels = sample_pixels(model, images, count=count, per_image=args.per_image, seed=args.seed)
    log.info("%d saturated pixels from %d images", len(pixels), count)
    by_soften = {}
    marginal = Pixel(-1, np.mean([p.logits for p in pixels], axis=0), (0.0, 0.0))
    for soften in args.soften:
        by_soften[soften] = score(suggestions_for(pixels, soften), pixels, seed=args.seed)
        blind = suggestions_for([marginal], soften)[0]
        by_soften[soften]["pixel_blind"] = score([blind] * len(pixels), pixels, seed=args.seed)
        log.info("soften %g: %s", soften, json.dumps(by_soften[soften]))
    fixed = quadrant_centres()
    metrics = {
        "checkpoint": label,
        "images": count,
        "pixels": len(pixels),
        "seed": args.seed,
        "by_soften": {f"{f:g}": r for f, r in by_soften.items()},
        "fixed": score([fixed] * len(pixels), pixels, seed=args.seed),
        "picked": pick_soften(by_soften),
        "data_manifest_sha256": manifest_sha256(args.cache),
    }
    name = Path(args.checkpoint).name.removesuffix(".pth").removesuffix(".pt")  # not .stem: "w0.25"
    out = args.out or DEFAULT_CACHE.parent / "colorize-eval" / f"suggest-{name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    text = markdown(metrics)
    (out / "suggest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
