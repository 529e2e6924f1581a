"""Train the ECCV16 colorizer on the cached photos (`python -m colorizers.data` first).

Recipe of reference/colorization.md §3.1, scaled to a CPU budget: random crops mirrored half the
time, the L channel in, 313 logits at H/4 out, soft-encoded targets (10 nearest bins, σ = 5) of the
ab point-sampled every 4th pixel, per-pixel class rebalancing with λ = `--lambda-rebal` from our own
training prior, gray images masked out, Adam (β = 0.9, 0.99). The run stops after `--minutes` of
training (or `--max-steps`), the learning rate following a cosine from `--lr` down to `--lr`/10
over that budget.

Everything needed to resume is in `<run-dir>/last.pt` (model, optimiser, step, elapsed time, RNG
states); starting the same command again resumes it (`--fresh` starts over). At the end the weights
are written as an fp16 state_dict to `colorizers/checkpoints/<name>.pth`, and the registry entry to
paste into `colorizers/weights.py` is printed with the file's SHA-256.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from colorizers import quantize
from colorizers.dataset import DEFAULT_CACHE, LabImages, manifest_sha256
from colorizers.eccv16 import ECCVGenerator
from colorizers.weights import CHECKPOINTS_DIR, sha256_of

log = logging.getLogger(__name__)

DEFAULT_RUNS = DEFAULT_CACHE.parent / "colorize-runs"
SHIP_LIMIT_BYTES = 10 * 1024 * 1024  # what the repository accepts per shipped checkpoint


@dataclass
class Batch:
    """One training batch: input L, soft target over the bins, per-pixel loss weights."""

    lightness: torch.Tensor  # (N,1,S,S), L in [0, 100]
    target: torch.Tensor  # (N,313,S/4,S/4)
    weights: torch.Tensor  # (N,S/4,S/4): rebalancing weight x non-gray mask


def make_batch(lab: torch.Tensor, centres: torch.Tensor, bin_weights: torch.Tensor) -> Batch:
    """(N,3,S,S) Lab crops -> Batch. ab is point-sampled at stride 4 like the Caffe data layer."""
    ab = lab[:, 1:, ::4, ::4]
    target = quantize.soft_encode(ab, centres)
    weights = quantize.pixel_weights(target, bin_weights) * quantize.nongray_mask(ab)[:, None, None]
    return Batch(lab[:, :1], target, weights)


def train_step(model: ECCVGenerator, optimizer: torch.optim.Optimizer, batch: Batch) -> tuple[float, float]:
    """One Adam step; returns (rebalanced loss, plain cross-entropy)."""
    model.train()
    loss, plain = quantize.rebalanced_cross_entropy(
        model.logits(batch.lightness), batch.target, batch.weights
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(plain)


@torch.no_grad()
def validate(model: ECCVGenerator, batches: list[Batch], centres: torch.Tensor) -> dict[str, float]:
    """Mean plain and rebalanced CE on the fixed validation crops, and ab L2 of the T=0.38 decode."""
    model.eval()
    totals = np.zeros(3)
    for batch in batches:
        logits = model.logits(batch.lightness)
        loss, plain = quantize.rebalanced_cross_entropy(logits, batch.target, batch.weights)
        ab = quantize.annealed_mean(logits, centres, 0.38)
        truth = (batch.target.permute(0, 2, 3, 1) @ centres).permute(0, 3, 1, 2)  # soft-target mean ≈ ab
        totals += (float(plain), float(loss), float((ab - truth).norm(dim=1).mean()))
    return dict(
        zip(("val_ce", "val_ce_rebal", "val_ab_l2"), (totals / max(1, len(batches))).tolist(), strict=True)
    )


def fp16_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
        for k, v in model.state_dict().items()
    }


def save_shipped(model: nn.Module, path: Path) -> str:
    """Write the fp16 state_dict; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state_dict(model), path)
    return sha256_of(path)


def registry_entry(name: str, width: float, sha256: str, filename: str, meta: dict[str, str]) -> str:
    meta_text = ", ".join(f"{k!r}: {v!r}" for k, v in meta.items())
    return (
        "Checkpoint(\n"
        f"    name={name!r},\n"
        '    arch="eccv16",\n'
        f"    width={width},\n"
        "    trained=True,\n"
        f'    description="trained by colorizers.train on the colorizers.data photos (λ={meta["lambda"]})",\n'
        f"    sha256={sha256!r},\n"
        f"    filename={filename!r},\n"
        f"    meta={{{meta_text}}},\n"
        ")"
    )


def _lr(base: float, progress: float) -> float:
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Progress:
    """A one-line progress bar on a terminal; a log line a minute otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self.tty and now - self.last > 0.5:
            sys.stderr.write("\r" + text[:150].ljust(150))
            sys.stderr.flush()
            self.last = now
        elif not self.tty and now - self.last > 60:
            log.info("%s", text)
            self.last = now

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m colorizers.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("eccv16",), default="eccv16")
    p.add_argument(
        "--width", type=float, default=0.25, help="channel width multiplier (default: %(default)s)"
    )
    p.add_argument(
        "--minutes", type=float, default=90.0, help="budget of training-step time, resumes included"
    )
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time only)")
    p.add_argument("--crop", type=int, default=128, help="square crop size, a multiple of 8")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--lambda-rebal", type=float, default=0.5, help="rebalancing λ: 1 = none, 0 = full 1/p (paper: 0.5)"
    )
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=1e-3, help="Adam L2 (Caffe solver: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    p.add_argument("--name", default="", help="checkpoint name (default: eccv16-w<width>-l<λ>)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: .cache/colorize-runs/<name>")
    p.add_argument("--out", type=Path, default=CHECKPOINTS_DIR, help="where the fp16 checkpoint goes")
    p.add_argument("--val-images", type=int, default=64, help="validation images scored periodically")
    p.add_argument("--val-every", type=float, default=5.0, help="minutes between validations")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between resumable checkpoints")
    p.add_argument("--fresh", action="store_true", help="ignore <run-dir>/last.pt and start over")
    args = p.parse_args(argv)
    if args.crop % 8 or args.crop < 32:
        p.error(f"--crop must be a multiple of 8 and at least 32, got {args.crop}")
    if not 0 <= args.lambda_rebal <= 1:
        p.error(f"--lambda-rebal must be in [0, 1], got {args.lambda_rebal}")
    args.name = args.name or f"eccv16-w{args.width:g}-l{args.lambda_rebal:g}"
    args.run_dir = args.run_dir or DEFAULT_RUNS / args.name
    return args


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training as configured; returns the shipped checkpoint's path.

    Progress also goes to `<run-dir>/train.log` (the `colorizers` loggers at INFO).
    """
    args.run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(args.run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    package_log = logging.getLogger("colorizers")
    level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    try:
        return _train(args)
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(level)
        handler.close()


def _train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_images, val_images = LabImages(args.cache, "train"), LabImages(args.cache, "val")
    prior = np.load(args.cache / "prior.npy")
    centres = torch.from_numpy(quantize.bin_centres()).to(device)
    bin_weights = torch.from_numpy(quantize.rebalance_weights(prior, args.lambda_rebal)).float().to(device)

    model = ECCVGenerator(width=args.width).to(device)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.lr,
        betas=(0.9, 0.99),
        weight_decay=args.weight_decay,
    )
    step, elapsed, history = 0, 0.0, []
    resume = args.run_dir / "last.pt"
    if resume.is_file() and not args.fresh:
        state = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], json.loads(state["history"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at step %d (%.1f min trained)", resume, step, elapsed / 60)

    # Fixed validation crops (centre, at the training crop size), encoded once.
    val_count = min(args.val_images, len(val_images))
    val_lab = torch.from_numpy(np.stack([val_images.centre_crop(i, args.crop) for i in range(val_count)]))
    val_batches = [make_batch(chunk.to(device), centres, bin_weights) for chunk in val_lab.split(args.batch)]

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "history": json.dumps(history),
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "args": json.dumps({k: str(v) for k, v in vars(args).items()}),
        }
        torch.save(state, args.run_dir / "last.tmp")
        (args.run_dir / "last.tmp").replace(resume)

    log.info(
        "training %s: width %g, crop %d, batch %d, λ %g, %d train / %d val images, %g min on %s",
        args.name, args.width, args.crop, args.batch, args.lambda_rebal, len(train_images), len(val_images),
        args.minutes, device,
    )  # fmt: skip
    progress = Progress()
    budget = args.minutes * 60
    last_val, last_save, window = elapsed, elapsed, (time.monotonic(), step)
    running = [0.0, 0.0]
    while elapsed < budget and not (args.max_steps and step >= args.max_steps):
        started = time.monotonic()
        fraction = max(elapsed / budget, step / args.max_steps if args.max_steps else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = _lr(args.lr, fraction)
        batch = make_batch(train_images.batch(rng, args.crop, args.batch).to(device), centres, bin_weights)
        loss, plain = train_step(model, optimizer, batch)
        if not math.isfinite(loss):
            raise RuntimeError(f"loss became {loss} at step {step}; lower --lr")
        step += 1
        running = (
            [0.9 * running[0] + 0.1 * loss, 0.9 * running[1] + 0.1 * plain] if step > 1 else [loss, plain]
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.monotonic() - started
        rate = (step - window[1]) * args.batch / max(1e-9, time.monotonic() - window[0])
        progress.show(
            f"step {step} | {elapsed / 60:5.1f}/{args.minutes:g} min | loss {running[0]:.3f}"
            f" (ce {running[1]:.3f}) | lr {optimizer.param_groups[0]['lr']:.2e} | {rate:.1f} img/s"
        )
        done = elapsed >= budget or (args.max_steps and step >= args.max_steps)
        if elapsed - last_val >= args.val_every * 60 or done:
            metrics = validate(model, val_batches, centres)
            history.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": running[0],
                            "ce": running[1], "img_per_s": round(rate, 1), **metrics})  # fmt: skip
            log.info("%s", json.dumps(history[-1]))
            last_val, window = elapsed, (time.monotonic(), step)
        if elapsed - last_save >= args.save_every * 60 or done:
            save()
            last_save = elapsed
    progress.close()

    filename = f"{args.name}.pth"
    path = args.out / filename
    digest = save_shipped(model, path)
    size = path.stat().st_size
    if size > SHIP_LIMIT_BYTES:
        log.warning(
            "%s is %.1f MB: over the %d MB the repository ships", path, size / 2**20, SHIP_LIMIT_BYTES >> 20
        )
    meta = {
        "lambda": f"{args.lambda_rebal:g}",
        "crop": str(args.crop),
        "batch": str(args.batch),
        "steps": str(step),
        "minutes": f"{elapsed / 60:.1f}",
        "lr": f"{args.lr:g}",
        "seed": str(args.seed),
        "data_manifest_sha256": manifest_sha256(args.cache),
    }
    (args.run_dir / "registry_entry.txt").write_text(
        registry_entry(args.name, args.width, digest, filename, meta)
    )
    print(f"wrote {path} ({size / 2**20:.2f} MB) sha256 {digest}")
    print("registry entry for colorizers/weights.py:")
    print(registry_entry(args.name, args.width, digest, filename, meta))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
