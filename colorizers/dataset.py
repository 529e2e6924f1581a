"""Reading the data cache that `python -m colorizers.data` writes: Lab images, random and centre crops."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / ".cache" / "colorize-data"
SPLITS = ("train", "val")
# Training-crop augmentations (colorizers.recipe measures them): mirror half the time; also rescale the
# crop's region by a log-uniform factor in [1/SCALE_JITTER, SCALE_JITTER] first; nothing.
AUGMENTATIONS = ("flip", "flip-scale", "none")
SCALE_JITTER = 1.5


class LabImages:
    """The images of one split of a cache, memory-mapped. Crops are (3, S, S) float32 Lab."""

    def __init__(self, cache: Path, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        path = cache / f"{split}.lab.npy"
        if not path.is_file():
            raise FileNotFoundError(f"no {path}: build the cache with `python -m colorizers.data`")
        self.lab = np.load(path, mmap_mode="r")
        self.index = np.load(cache / f"{split}.index.npy")

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> NDArray[np.float32]:
        offset, h, w = (int(v) for v in self.index[i])
        return (
            np.asarray(self.lab[offset : offset + h * w], dtype=np.float32)
            .reshape(h, w, 3)
            .transpose(2, 0, 1)
        )

    def random_crop(self, rng: np.random.Generator, size: int, augment: str = "flip") -> NDArray[np.float32]:
        """A random `size` x `size` crop of a random image, augmented as `augment` (`AUGMENTATIONS`):
        mirrored with probability 1/2 unless "none"; with "flip-scale" cut from a square region
        `SCALE_JITTER`x larger to as much smaller (as large as the image allows) and resized to `size`."""
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        offset, h, w = (int(v) for v in self.index[rng.integers(len(self.index))])
        if min(h, w) < size:
            raise ValueError(
                f"crop {size} is larger than a stored image ({h} x {w}); rebuild with a larger short side"
            )
        region = size
        if augment == "flip-scale":
            scale = float(np.exp(rng.uniform(-np.log(SCALE_JITTER), np.log(SCALE_JITTER))))
            region = min(max(8, round(size * scale)), h, w)
        y, x = int(rng.integers(h - region + 1)), int(rng.integers(w - region + 1))
        rows = np.asarray(self.lab[offset : offset + h * w].reshape(h, w, 3)[y : y + region, x : x + region])
        if region != size:  # area when shrinking (no aliasing), bilinear when enlarging
            method = cv2.INTER_AREA if region > size else cv2.INTER_LINEAR
            rows = cv2.resize(rows.astype(np.float32), (size, size), interpolation=method)
        crop = rows.astype(np.float32).transpose(2, 0, 1)
        return crop[:, :, ::-1].copy() if augment != "none" and rng.random() < 0.5 else crop

    def centre_crop(self, i: int, size: int) -> NDArray[np.float32]:
        image = self.image(i)
        _, h, w = image.shape
        size = min(size, h, w)
        y, x = (h - size) // 2, (w - size) // 2
        return np.ascontiguousarray(image[:, y : y + size, x : x + size])

    def batch(self, rng: np.random.Generator, size: int, count: int, augment: str = "flip") -> torch.Tensor:
        """(count, 3, size, size) random training crops."""
        return torch.from_numpy(np.stack([self.random_crop(rng, size, augment) for _ in range(count)]))


def manifest_sha256(cache: Path) -> str:
    return hashlib.sha256((cache / "manifest.tsv").read_bytes()).hexdigest()


# Licences under which a photo (or a derived image, such as a sample grid) may be committed to the repo.
# ImageNet and BSDS500 photos are research-only, so grids never show them.
REDISTRIBUTABLE_LICENCES = ("CC0", "CC-BY", "Apache", "BSD-3-Clause", "MIT")


def redistributable(cache: Path, split: str) -> list[tuple[int, str, str]]:
    """(index in the split, member path, licence) of the split's photos with a redistributable licence."""
    rows = (cache / "manifest.tsv").read_text().splitlines()
    columns = rows[0].split("\t")
    split_col, member_col, licence_col = (columns.index(c) for c in ("split", "member", "licence"))
    members = [r.split("\t") for r in rows[1:] if r.split("\t")[split_col] == split]
    return [
        (i, fields[member_col], fields[licence_col])
        for i, fields in enumerate(members)
        if fields[licence_col].startswith(REDISTRIBUTABLE_LICENCES)
    ]
