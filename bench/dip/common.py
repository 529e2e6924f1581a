"""What the DIP benchmarks share: where they write, the device clock, the test images and their noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from bench.config import RESULTS
from bench.inputs import load_rgb

OUT = RESULTS / "dip"  # the committed results; a --quick run writes under OUT / "quick" (gitignored)
Image_ = NDArray[np.float32]


def out_dir(out: Path, quick: bool) -> Path:
    """Where a run writes: `out`, or its quick/ subfolder for a smoke run (kept off the real tables)."""
    return out / "quick" if quick else out


def sync(device: str) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load(path: Path) -> Image_:
    """An image file as float32 RGB in [0, 1]."""
    return load_rgb(path).astype(np.float32) / 255


def centre_crop(img: NDArray[Any], size: int) -> NDArray[Any]:
    h, w = img.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"a {w} x {h} image is smaller than the {size}² crop")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def noisy_pair(path: Path, size: int, sigma: float, seed: int) -> tuple[Image_, Image_]:
    """(clean centre crop, noisy copy): Gaussian noise of std `sigma` drawn with `seed`, clipped to
    [0, 1] as an 8-bit file would be."""
    clean = centre_crop(load(path), size)
    noisy = np.clip(clean + np.random.default_rng(seed).normal(0, sigma, clean.shape), 0, 1)
    return clean, noisy.astype(np.float32)
