"""A tiny synthetic photo folder and the data cache built from it (no network, no shared photos)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorizers import data
from colorizers.sources import Source


def smooth_colour_image(rng: np.random.Generator, height: int = 72, width: int = 96) -> Image.Image:
    """A random smooth colour field: distinct low frequencies, so distinct perceptual hashes."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def make_photo_folder(folder: Path, count: int = 12, seed: int = 0) -> Path:
    """`count` distinct PNGs, plus `dup.png` (a byte copy of 1) and `near.jpg` (0 rescaled + JPEG)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        smooth_colour_image(rng).save(folder / f"img{i:02d}.png")
    (folder / "dup.png").write_bytes((folder / "img01.png").read_bytes())
    with Image.open(folder / "img00.png") as first:
        first.resize((120, 90), Image.Resampling.BILINEAR).save(folder / "near.jpg", quality=85)
    return folder


SYNTHETIC = Source("synthetic", "folder", "photos", "CC0-1.0", ("*.png", "*.jpg"))


def build_tiny_cache(root: Path, *, seed: int = 0, leak: tuple[Path, ...] = ()) -> dict:
    make_photo_folder(root / "photos")
    return data.build(
        root / "cache",
        train_folder=root,
        selected=(SYNTHETIC,),
        seed=seed,
        val_fraction=0.4,
        short_side=64,
        offline=True,
        leak_check=leak,
    )


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-data")
    build_tiny_cache(root)
    return root / "cache"


@pytest.fixture(scope="session")
def build_cache() -> Callable[..., dict]:
    """`build_cache(root, seed=0, leak=())` builds photos in root/photos and a cache in root/cache."""
    return build_tiny_cache


@pytest.fixture(scope="session")
def photo_folder() -> Callable[..., Path]:
    return make_photo_folder


@pytest.fixture(scope="session")
def colour_image() -> Callable[..., Image.Image]:
    return smooth_colour_image
