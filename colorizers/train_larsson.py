"""Train the Larsson16 hypercolumn colorizer on the cached photos (`python -m colorizers.data` first).

Recipe of reference/colorization.md §4, scaled to a CPU budget:

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
the same command resumes it, `--fresh` starts over. At the end the weights are written as an fp16
state_dict to `colorizers/checkpoints/<name>.pth` and the registry entry for `colorizers/weights.py`
is printed with the file's SHA-256.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import lab2rgb

from colorizers.dataset import DEFAULT_CACHE, LabImages, manifest_sha256
from colorizers.larsson16 import PAD_MULTIPLE, LarssonColorizer
from colorizers.run_state import Progress, Resumable, RunState, save_shipped
from colorizers.weights import CHECKPOINTS_DIR
from contract import NUM_CHROMA_BINS, NUM_HUE_BINS

log = logging.getLogger(__name__)

DEFAULT_RUNS = DEFAULT_CACHE.parent / "colorize-runs"
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
    model: LarssonColorizer, optimizer: torch.optim.Optimizer, lightness: torch.Tensor, targets: Targets
) -> tuple[float, float, float]:
    """One optimiser step; returns (loss, hue term, chroma term)."""
    model.train()
    loss, hue, chroma = larsson_loss(*model.logits(lightness), targets)
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


def _lr(base: float, progress: float) -> float:
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def registry_entry(name: str, width: float, sha256: str, filename: str, meta: dict[str, str]) -> str:
    meta_text = ", ".join(f"{k!r}: {v!r}" for k, v in meta.items())
    return (
        "Checkpoint(\n"
        f"    name={name!r},\n"
        "    arch='larsson16',\n"
        f"    width={width},\n"
        "    trained=True,\n"
        '    description="trained by colorizers.train_larsson on the colorizers.data photos",\n'
        f"    sha256={sha256!r},\n"
        f"    filename={filename!r},\n"
        f"    meta={{{meta_text}}},\n"
        ")"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m colorizers.train_larsson", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--width", type=float, default=0.125, help="channel width multiplier (default: %(default)s)"
    )
    p.add_argument(
        "--minutes", type=float, default=90.0, help="budget of training-step time, resumes included"
    )
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time only)")
    p.add_argument("--crop", type=int, default=128, help=f"square crop, a multiple of {PAD_MULTIPLE}")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam L2 (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=0.5, help="after fc6, fc7 and h_fc1 (paper: 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    p.add_argument("--name", default="", help="checkpoint name (default: larsson16-w<width>)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: .cache/colorize-runs/<name>")
    p.add_argument("--out", type=Path, default=CHECKPOINTS_DIR, help="where the fp16 checkpoint goes")
    p.add_argument("--val-images", type=int, default=64, help="validation images scored periodically")
    p.add_argument("--val-every", type=float, default=5.0, help="minutes between validations")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between resumable checkpoints")
    p.add_argument("--fresh", action="store_true", help="ignore <run-dir>/last.pt and start over")
    args = p.parse_args(argv)
    if args.crop % PAD_MULTIPLE or args.crop < PAD_MULTIPLE:
        p.error(f"--crop must be a positive multiple of {PAD_MULTIPLE}, got {args.crop}")
    args.name = args.name or f"larsson16-w{args.width:g}"
    args.run_dir = args.run_dir or DEFAULT_RUNS / args.name
    return args


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training as configured; returns the shipped checkpoint's path."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_images, val_images = LabImages(args.cache, "train"), LabImages(args.cache, "val")
    model = LarssonColorizer(width=args.width, dropout=args.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    checkpoint = Resumable(args.run_dir, model, optimizer, rng, {k: str(v) for k, v in vars(args).items()})
    run = checkpoint.load(device, fresh=args.fresh)
    step, elapsed, history = run.step, run.elapsed, run.history

    # Fixed validation: centre crops at the training size, targets made once.
    val_count = min(args.val_images, len(val_images))
    val_lab = torch.from_numpy(np.stack([val_images.centre_crop(i, args.crop) for i in range(val_count)]))
    val_batches = [
        (chunk[:, :1].to(device), make_targets(lab_to_rgb(chunk).to(device)))
        for chunk in val_lab.split(args.batch)
    ]

    log.info(
        "training %s: width %g (%d params), crop %d, batch %d, %d train / %d val images, %g min on %s",
        args.name, args.width, sum(p.numel() for p in model.parameters()), args.crop, args.batch,
        len(train_images), len(val_images), args.minutes, device,
    )  # fmt: skip
    progress = Progress()
    budget = args.minutes * 60
    last_val, last_save, window = elapsed, elapsed, (time.monotonic(), step)
    running = np.zeros(3)
    while elapsed < budget and not (args.max_steps and step >= args.max_steps):
        started = time.monotonic()
        fraction = max(elapsed / budget, step / args.max_steps if args.max_steps else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = _lr(args.lr, fraction)
        crops = train_images.batch(rng, args.crop, args.batch)
        targets = make_targets(lab_to_rgb(crops).to(device))
        losses = np.array(train_step(model, optimizer, crops[:, :1].to(device), targets))
        if not math.isfinite(losses[0]):
            raise RuntimeError(f"loss became {losses[0]} at step {step}; lower --lr")
        step += 1
        running = 0.9 * running + 0.1 * losses if step > 1 else losses
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.monotonic() - started
        rate = (step - window[1]) * args.batch / max(1e-9, time.monotonic() - window[0])
        progress.show(
            f"step {step} | {elapsed / 60:5.1f}/{args.minutes:g} min | loss {running[0]:.4f} "
            f"(hue {running[1]:.4f}, chroma {running[2]:.4f}) | {rate:.1f} img/s"
        )
        done = elapsed >= budget or bool(args.max_steps and step >= args.max_steps)
        if elapsed - last_val >= args.val_every * 60 or done:
            history.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": float(running[0]),
                            "img_per_s": round(rate, 2), **validate(model, val_batches)})  # fmt: skip
            log.info("%s", json.dumps(history[-1]))
            last_val, window = elapsed, (time.monotonic(), step)
        if elapsed - last_save >= args.save_every * 60 or done:
            checkpoint.save(RunState(step, elapsed, history))
            last_save = elapsed
    progress.close()

    filename = f"{args.name}.pth"
    path = args.out / filename
    digest = save_shipped(model, path)
    size = path.stat().st_size
    meta = {
        "crop": str(args.crop),
        "batch": str(args.batch),
        "steps": str(step),
        "minutes": f"{elapsed / 60:.1f}",
        "lr": f"{args.lr:g}",
        "dropout": f"{args.dropout:g}",
        "seed": str(args.seed),
        "data_manifest_sha256": manifest_sha256(args.cache),
    }
    entry = registry_entry(args.name, args.width, digest, filename, meta)
    (args.run_dir / "registry_entry.txt").write_text(entry)
    print(f"wrote {path} ({size / 2**20:.2f} MB) sha256 {digest}")
    print(f"registry entry for colorizers/weights.py:\n{entry}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
