"""Train the Larsson16 hypercolumn colorizer on the cached photos (`python -m colorizers.data` first).

Recipe of docs/colorization.md §4, scaled to a CPU budget:

- Targets: from each crop's sRGB, HSV hue h in [0, 1) and chroma c = max - min of RGB (upstream's
  `BgrToMunsell`), each one-hot encoded into 32 uniform bins and averaged over a 7x7 window
  (`SparseHistogramExtractor(size 7)`) at every 4th pixel: dense targets at H/4, the resolution of
  the deploy graph, where upstream samples 128 random locations per image.
- Loss: KL(target ‖ softmax) per location (`SoftmaxKLDLoss`, normalisation FULL: summed over the
  locations and divided by their count). The hue term is weighted by the ground-truth chroma (hue
  means nothing at low chroma) with loss_weight 5; the chroma term by the lightness tent
  min(3L, 1, 3(1 - L)), L the gray level mean(R, G, B) in [0, 1], with loss_weight 1. Chroma and
  gray of a location are their means over the same 7x7 window as its histograms.
- Adam from a random initialisation (upstream: SGD, lr 1e-3, from ImageNet VGG-16), learning rate
  on a cosine from `--lr` to `--lr`/10 over the `--minutes` budget, random crops mirrored half the time.

`<run-dir>/last.pt` holds everything needed to resume (model, optimiser, step, time, RNG states);
the same command resumes it, `--fresh` starts over; `--init-from` (a registry name or a .pth) starts a
new run from trained weights instead of a random initialisation. At the end the weights are written as an fp16
state_dict to `colorizers/checkpoints/<name>.pth` and the registry entry for `colorizers/weights.py`
is printed with the file's SHA-256.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import lab2rgb

from colorizers import harness
from colorizers.harness import DEFAULT_RUNS
from colorizers.larsson16 import PAD_MULTIPLE, LarssonColorizer
from colorizers.run_state import RunState
from contract import NUM_CHROMA_BINS, NUM_HUE_BINS

WINDOW = 7  # SparseHistogramExtractor(size 7)
STRIDE = 4  # the deploy graph predicts at H/4
HUE_LOSS_WEIGHT = 5.0  # train_vgg16.prototxt: loss_weight of the hue KL term
CHROMA_LOSS_WEIGHT = 1.0


@dataclass
class Targets:
    """Per-location targets at H/4 for one batch."""

    hue: torch.Tensor  # (N, 32, h, w) 7x7-window histogram of HSV hue
    chroma: torch.Tensor  # (N, 32, h, w) 7x7-window histogram of chroma
    hue_weight: torch.Tensor  # (N, h, w) window-mean chroma
    chroma_weight: torch.Tensor  # (N, h, w) lightness tent of the window-mean gray


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) Lab crops -> (N, 3, H, W) sRGB in [0, 1] (skimage, as the cache was made)."""
    with warnings.catch_warnings():
        # Stored Lab is float16: a few near-black pixels round to slightly negative Z; clipping is right.
        warnings.filterwarnings("ignore", message=".*negative Z values.*", category=UserWarning)
        rgb = lab2rgb(lab.permute(0, 2, 3, 1).double().cpu().numpy())
    return torch.from_numpy(np.clip(rgb, 0, 1)).permute(0, 3, 1, 2).float().to(lab.device)


def hue_chroma_gray(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) sRGB in [0, 1] -> HSV hue in [0, 1), chroma max - min, gray mean, each (N, H, W).

    Hue follows `skimage.color.rgb2hsv` (0 where the chroma is 0, where it is undefined).
    """
    r, g, b = rgb.unbind(1)
    high, low = rgb.max(dim=1).values, rgb.min(dim=1).values
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sector = torch.where(
        high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = torch.where(chroma > 0, sector / 6, torch.zeros_like(chroma)) % 1.0
    return hue, chroma, rgb.mean(dim=1)


def _window_mean(planes: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H/4, W/4): the mean over the 7x7 window centred at (4i + 2, 4j + 2).

    H/4 cell i covers pixels 4i..4i+3 (centre 4i + 1.5); an odd window can centre on 4i + 2 at
    best, so it spans 4i - 1..4i + 5: one pixel of edge padding before and two after.
    """
    padded = F.pad(planes, (1, 2, 1, 2), mode="replicate")
    return F.avg_pool2d(padded, WINDOW, stride=STRIDE)


def window_histograms(values: torch.Tensor, bins: int) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, bins, H/4, W/4): uniform one-hot bins averaged over 7x7 windows."""
    index = (values * bins).long().clamp(0, bins - 1)
    one_hot = F.one_hot(index, bins).permute(0, 3, 1, 2).float()
    return _window_mean(one_hot)


def lightness_tent(gray: torch.Tensor) -> torch.Tensor:
    """min(3L, 1, 3(1 - L)): chroma matters least near black and white, where it cannot exist."""
    return torch.minimum(torch.minimum(3 * gray, torch.ones_like(gray)), 3 * (1 - gray)).clamp(min=0)


def make_targets(rgb: torch.Tensor) -> Targets:
    """(N, 3, H, W) sRGB in [0, 1], H and W multiples of 4 -> Targets at H/4."""
    hue, chroma, gray = hue_chroma_gray(rgb)
    means = _window_mean(torch.stack([chroma, gray], 1))
    return Targets(
        hue=window_histograms(hue, NUM_HUE_BINS),
        chroma=window_histograms(chroma, NUM_CHROMA_BINS),
        hue_weight=means[:, 0],
        chroma_weight=lightness_tent(means[:, 1]),
    )


def kl_divergence(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(N, B, h, w) target histograms and scores -> (N, h, w) KL(target ‖ softmax(logits)); 0·log 0 = 0."""
    return (torch.xlogy(target, target) - target * F.log_softmax(logits, dim=1)).sum(dim=1)


def larsson_loss(
    hue_logits: torch.Tensor, chroma_logits: torch.Tensor, targets: Targets
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (5 · hue term + chroma term, hue term, chroma term), each a mean over the locations."""
    hue = (targets.hue_weight * kl_divergence(targets.hue, hue_logits)).mean()
    chroma = (targets.chroma_weight * kl_divergence(targets.chroma, chroma_logits)).mean()
    return HUE_LOSS_WEIGHT * hue + CHROMA_LOSS_WEIGHT * chroma, hue, chroma


def train_step(
    model: LarssonColorizer,
    optimizer: torch.optim.Optimizer,
    lightness: torch.Tensor,
    targets: Targets,
    *,
    bf16: bool = False,
) -> tuple[float, float, float]:
    """One optimiser step (the forward under bf16 autocast if `bf16`); returns (loss, hue term,
    chroma term)."""
    model.train()
    with harness.mixed_precision(bf16, lightness.device):
        hue_logits, chroma_logits = model.logits(lightness)
    loss, hue, chroma = larsson_loss(hue_logits.float(), chroma_logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(hue.detach()), float(chroma.detach())


@torch.no_grad()
def validate(model: LarssonColorizer, batches: list[tuple[torch.Tensor, Targets]]) -> dict[str, float]:
    """Mean loss and its two terms on the fixed validation crops (dropout off)."""
    model.eval()
    totals = np.zeros(3)
    for lightness, targets in batches:
        totals += [float(t) for t in larsson_loss(*model.logits(lightness), targets)]
    values = (totals / max(1, len(batches))).tolist()
    return dict(zip(("val_loss", "val_hue_kl", "val_chroma_kl"), values, strict=True))


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam L2 (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=0.5, help="after fc6, fc7 and h_fc1 (paper: 0.5)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m colorizers.train_larsson", description=__doc__.splitlines()[0]
    )
    harness.add_common_arguments(
        p,
        width=0.125,
        crop_help=f"square crop, a multiple of {PAD_MULTIPLE}",
        name_help="checkpoint name (default: larsson16-w<width>)",
        model_arguments=_model_arguments,
    )
    args = p.parse_args(argv)
    sizes = {"--crop": args.crop, "--first-crop": args.first_crop, "--val-crop": args.val_crop}
    for flag, size in sizes.items():
        if (size or flag == "--crop") and (size % PAD_MULTIPLE or size < PAD_MULTIPLE):
            p.error(f"{flag} must be a positive multiple of {PAD_MULTIPLE}, got {size}")
    args.name = args.name or f"larsson16-w{args.width:g}"
    args.run_dir = args.run_dir or DEFAULT_RUNS / args.name
    return args


class LarssonRecipe(harness.Recipe):
    """Larsson16's part of the shared loop: hue/chroma targets made from each crop's sRGB, Adam."""

    arch = "larsson16"
    model: LarssonColorizer

    def __init__(self, args: argparse.Namespace, device: torch.device, rng: np.random.Generator) -> None:
        self.args, self.device = args, device
        self.model = LarssonColorizer(width=args.width, dropout=args.dropout).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def prepare(self, run: RunState, val_lab: torch.Tensor) -> None:
        self.val_batches = [
            (chunk[:, :1].to(self.device), make_targets(lab_to_rgb(chunk).to(self.device)))
            for chunk in val_lab.split(self.args.batch)
        ]

    def validate(self) -> dict[str, float]:
        return validate(self.model, self.val_batches)

    def summary(self) -> str:
        a, params = self.args, sum(p.numel() for p in self.model.parameters())
        return f"width {a.width:g} ({params} params), crop {a.crop}, batch {a.batch}"

    def step(self, crops: torch.Tensor, run: RunState, fraction: float) -> tuple[float, float, float]:
        targets = make_targets(lab_to_rgb(crops).to(self.device))
        return train_step(
            self.model, self.optimizer, crops[:, :1].to(self.device), targets, bf16=self.args.bf16
        )

    def progress(self, running: np.ndarray) -> str:
        return f"loss {running[0]:.4f} (hue {running[1]:.4f}, chroma {running[2]:.4f})"

    def record(self, running: np.ndarray, rate: float) -> dict[str, Any]:
        return {"loss": float(running[0]), "img_per_s": round(rate, 2)}

    def registry_entry(self, sha256: str, filename: str, common: dict[str, str]) -> str:
        before_seed = {k: v for k, v in common.items() if k not in ("seed", "data_manifest_sha256")}
        meta = {**before_seed, "dropout": f"{self.args.dropout:g}", **common}
        return harness.registry_source(
            name=self.args.name,
            arch_source="'larsson16'",
            width=self.args.width,
            description="trained by colorizers.train_larsson on the colorizers.data photos",
            sha256=sha256,
            filename=filename,
            meta=meta,
        )


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training as configured; returns the shipped checkpoint's path. Progress also
    goes to `<run-dir>/train.log`, as `colorizers.train`'s does."""
    return harness.run(args, LarssonRecipe, log_file=args.run_dir / "train.log")


def main(argv: list[str] | None = None) -> int:
    return harness.main(parse_args, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
