"""Regenerate the files in samples/ from their published sources (see samples/README.md).

    apt-get download lomiri-wallpapers-16.04=20.04.0-2 && dpkg-deb -x lomiri-wallpapers-16.04_*.deb unpacked
    .venv/bin/python samples/make_samples.py unpacked

Takes the unpacked Debian package's folder (the scikit-image photos come from the venv's pinned
scikit-image wheel), writes the samples next to this script and prints each file's size and SHA-256.
The PNGs are byte-identical for the same Pillow; the JPEGs also depend on the libjpeg inside Pillow.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import skimage
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SKIMAGE_DATA = Path(skimage.__file__).resolve().parent / "data"
LANDSCAPE = "usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg"
PHOTO_WIDTH = 900
# The DIP crop, in the 900-wide photo: the spruce, a larch and the mountain (edges, texture, colour).
CROP = (640, 300, 736, 396)
JPEG_QUALITY = 90


def landscape(unpacked: Path) -> Image.Image:
    with Image.open(unpacked / LANDSCAPE) as original:
        width, height = original.size
        size = (PHOTO_WIDTH, round(height * PHOTO_WIDTH / width))
        return original.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def mask(size: tuple[int, int]) -> Image.Image:
    """White = known pixel, black = missing: three scratches and a square hole, nothing random."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.line([(0, h // 5), (w - 1, h // 2)], fill=0, width=3)
    draw.line([(w // 4, h - 1), (w - 1, h // 4)], fill=0, width=2)
    draw.line([(0, 3 * h // 4), (w // 2, h - 1)], fill=0, width=4)
    draw.rectangle([(w // 8, h // 3), (w // 8 + 15, h // 3 + 15)], fill=0)
    return image


def main(unpacked: Path) -> int:
    photo = landscape(unpacked)
    photo.save(HERE / "aitzgorri.jpg", quality=JPEG_QUALITY, optimize=True)
    crop = photo.crop(CROP)
    crop.save(HERE / "aitzgorri_96.png", optimize=True)
    mask(crop.size).save(HERE / "aitzgorri_96_mask.png", optimize=True)
    for name in ("astronaut", "chelsea", "coffee"):  # PNGs in the wheel: JPEG q90, same size
        with Image.open(SKIMAGE_DATA / f"{name}.png") as png:
            png.convert("RGB").save(HERE / f"{name}.jpg", quality=JPEG_QUALITY, optimize=True)
    shutil.copyfile(SKIMAGE_DATA / "rocket.jpg", HERE / "rocket.jpg")  # already a JPEG: as published
    for path in sorted(HERE.glob("*.[jp][pn]g")):
        data = path.read_bytes()
        print(f"{path.name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
