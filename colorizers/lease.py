"""Take the training data to a lent GPU machine (issue #15 ask 4): `pack` here, `unpack` there.

Why. The device tool sends the working tree and the ignored paths named in its `carry`, 64 MiB in all,
and nothing beside the checkout; the Lab cache `colorizers.data` builds is 2.4 GB. `pack` writes the
training split of a cache as lossy WebP, one 128² square of each photo at the cache's own scale
(14.7 MB for the 4,416 photos; or, `--native-crop 0`, each whole photo at a short side of 96, which the
first lease showed to be the wrong scale), the first validation photos (the run's curve) likewise,
and the cache's manifest and prior unchanged. `unpack`,
on the machine, decodes them into a cache of the format `colorizers.dataset` reads. The split, the prior
and the manifest are this cache's, so a checkpoint trained there names the same data manifest as one
trained here, its rebalancing weights are the same, and no validation photo becomes a training one; what
differs is the pixels: a square of each photo (or the photo at 96 px), and WebP's loss (4:2:0 chroma;
ECCV16's targets are at a quarter of the crop, where that loss is mostly averaged away).

    python -m colorizers.lease pack                      # here: .cache/colorize-data -> .cache/lease
    python3 -m colorizers.lease train --out "$OUT"       # there: unpack, train ECCV16 and SIGGRAPH17
    python -m colorizers.lease join DIR                  # here: the files that came back -> checkpoints

`train` runs `colorizers.train` for each model on the unpacked cache (`plan`: width 1/2 from scratch,
and/or the shipped defaults continued, on CUDA) and writes to `--out` each fp16 checkpoint cut into
parts of at most 15 MiB (a file comes back from the machine only if it is at most 16 MiB, and at most
eight of them; a width-1/2 SIGGRAPH17 is 17 MB) and one text (`RUNS_FILE`) with each run's SHA-256,
registry entry and training log. `join` puts the parts together and checks them against the SHA-256.
The device call is in the model card ("Training on a lent GPU").
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from skimage.color import lab2rgb, rgb2lab

from colorizers import train as training
from colorizers import weights
from colorizers.data import downscale
from colorizers.dataset import DEFAULT_CACHE, SPLITS, LabImages, manifest_sha256
from colorizers.weights import sha256_of

log = logging.getLogger(__name__)

DEFAULT_PACK = DEFAULT_CACHE.parent / "lease"
CARRIED = ("manifest.tsv", "prior.npy", "prior_counts.npy", "summary.json")  # copied as they are
NATIVE_CROP = 128  # the training crops (96², the CPU runs' size) are drawn from it; 14.7 MB at QUALITY
SHORT_SIDE = 96  # with --native-crop 0: crops of 96² fit; 112 would cost ≈ 22 MB, 128 ≈ 27 MB
QUALITY = 80  # the tree (48.8 MB) and the pack must fit the 67.1 MB (64 MiB) that travels
VAL_IMAGES = 64  # what `colorizers.train --val-images` scores by default
PART_BYTES = 15 << 20  # the device tool returns files of at most 16 MiB, and at most 8 of them
SHIP_LIMIT = 25_000_000  # issue #15 ask 4: a checkpoint ships only if its fp16 file is at most 25 MB
RUNS_FILE = "lease.txt"
RUN_LINE = re.compile(r"^run (\S+) sha256 ([0-9a-f]{64}) parts (\d+)$", re.MULTILINE)
# What `train` passes to `colorizers.train` besides the model, budget and paths: the CPU runs' recipe
# (λ 0.75, crops of 96², cosine from 3e-4 for a fresh start) at width 1/2 and four times the batch.
RECIPE = (
    "--width", "0.5", "--crop", "96", "--batch", "64", "--lambda-rebal", "0.75", "--lr", "3e-4",
    "--val-every", "1", "--save-every", "1000",
)  # fmt: skip


def _encode(lab: NDArray[np.float32], short_side: int, quality: int) -> bytes:
    """(3, H, W) Lab -> WebP bytes of the sRGB image, resized to `short_side` unless that is 0."""
    rgb = np.clip(lab2rgb(lab.transpose(1, 2, 0)) * 255 + 0.5, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(downscale(Image.fromarray(rgb), short_side) if short_side else rgb).save(
        out, "WEBP", quality=quality
    )
    return out.getvalue()


def pack(
    cache: Path,
    out: Path,
    *,
    short_side: int = SHORT_SIDE,
    quality: int = QUALITY,
    val_images: int = VAL_IMAGES,
    native_crop: int = NATIVE_CROP,
    seed: int = 0,
) -> dict:
    """Write `out`/{split}.webp (the images' bytes, back to back) and {split}.offsets.npy, the files of
    `CARRIED`, and pack.json (what was done, the sizes). Returns pack.json's content.

    `native_crop` > 0: instead of each whole photo at `short_side`, one square of that side at the
    cache's own scale (training photos: a random one, seeded by `seed`; validation: the centre), its
    corner in {split}.corners.npy. Why: the first lease (4 December) trained on whole photos at 96 px
    while the evaluation looks at 256² crops of the 256-px photos, 2.7 times closer; the nets it
    brought back over-coloured there (1.1x the truth's colourfulness, 33 % of photos at PSNR >= gray)
    and did well at the scale they were trained at (model card, "Training on a lent GPU")."""
    if short_side < 32 or not 1 <= quality <= 100 or val_images < 1 or 0 < native_crop < 32:
        raise ValueError(
            "short side and native crop must be at least 32, quality in 1..100 and validation images "
            f"at least 1, got {short_side}, {native_crop}, {quality}, {val_images}"
        )
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {}
    for split in SPLITS:
        images = LabImages(cache, split)
        count = len(images) if split == "train" else min(val_images, len(images))
        offsets = np.zeros(count + 1, dtype=np.int64)
        corners = np.zeros((count, 2), dtype=np.int64)
        with open(out / f"{split}.webp", "wb") as blob:
            for i in range(count):
                lab = images.image(i)
                if native_crop:
                    room = np.array(lab.shape[1:]) - native_crop
                    if room.min() < 0:
                        raise ValueError(f"{split} photo {i} is {lab.shape[1:]}, smaller than {native_crop}")
                    corners[i] = rng.integers(0, room + 1) if split == "train" else room // 2
                    (y, x), side = corners[i], native_crop
                    lab = lab[:, y : y + side, x : x + side]
                encoded = _encode(lab, 0 if native_crop else short_side, quality)
                offsets[i + 1] = offsets[i] + blob.write(encoded)
        np.save(out / f"{split}.offsets.npy", offsets)
        if native_crop:
            np.save(out / f"{split}.corners.npy", corners)
        counts[split] = {"images": count, "of": len(images), "bytes": int(offsets[-1])}
        log.info("%s: %d images, %.1f MB", split, count, offsets[-1] / 1e6)
    for name in CARRIED:
        shutil.copy2(cache / name, out / name)
    meta = {
        **({"native_crop": native_crop, "seed": seed} if native_crop else {"short_side": short_side}),
        "format": f"WebP quality {quality}",
        "data_manifest_sha256": manifest_sha256(cache),
        "splits": counts,
    }
    (out / "pack.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def unpack(packed: Path, cache: Path) -> dict:
    """Decode a pack into a cache at `cache` (train/val Lab arrays and indexes, the `CARRIED` files)."""
    meta = json.loads((packed / "pack.json").read_text())
    cache.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        blob = (packed / f"{split}.webp").read_bytes()
        offsets = np.load(packed / f"{split}.offsets.npy")
        if int(offsets[-1]) != len(blob):
            raise ValueError(f"{packed / split}.webp has {len(blob)} bytes, its offsets say {offsets[-1]}")
        labs = []
        for start, end in itertools.pairwise(offsets):
            with Image.open(io.BytesIO(blob[start:end])) as image:
                labs.append(rgb2lab(np.asarray(image.convert("RGB"))).astype(np.float16))
        heights = np.array([lab.shape[0] for lab in labs], dtype=np.int64)
        widths = np.array([lab.shape[1] for lab in labs], dtype=np.int64)
        sizes = heights * widths
        # colorizers.dataset's layout: (pixels, 3) float16, and (offset, height, width) per image.
        np.save(cache / f"{split}.lab.npy", np.concatenate([lab.reshape(-1, 3) for lab in labs]))
        np.save(cache / f"{split}.index.npy", np.column_stack([np.cumsum(sizes) - sizes, heights, widths]))
    for name in CARRIED:
        shutil.copy2(packed / name, cache / name)
    if manifest_sha256(cache) != meta["data_manifest_sha256"]:
        raise ValueError(f"{packed / 'manifest.tsv'} is not the manifest the pack was made from")
    return meta


def plan(model: str, mode: str) -> tuple[str, tuple[str, ...]]:
    """(run name, `colorizers.train` options) for `model` in `mode`: "wide", `RECIPE` from scratch at width
    1/2 (issue #15 ask 4); "full", the same at full width (its fp16 file, 64-68 MB, is over `SHIP_LIMIT`
    and the tool's return, so only its curve comes back: the card's full-width results); or
    "continue", the shipped default's trained checkpoint (the base of one that `colorizers.calibrate`
    derived) continued with its own width, λ and locality term at lr 1e-4 and four times the CPU runs'
    batch: the hedge, since minutes of a wider net from scratch may not beat it.

    Every mode takes the default's locality term where it has one: the second lease's width-1/2
    SIGGRAPH17 without it was the first net here over +3 dB at 10 hints, with a halo of 7.5 (bar 5)."""
    if mode not in ("wide", "full", "continue"):
        raise ValueError(f"mode must be 'wide', 'full' or 'continue', got {mode!r}")
    entry = weights.REGISTRY[weights.DEFAULT[model]]
    if "rebalancing_undone" in entry.meta:
        entry = weights.REGISTRY[entry.meta["init_from"]]
    locality = ("--locality-weight", entry.meta["locality_weight"]) if "locality_weight" in entry.meta else ()
    if mode == "wide":
        return f"{model}-w{RECIPE[RECIPE.index('--width') + 1]}-lease", (*RECIPE, *locality)
    if mode == "full":
        return f"{model}-w1-lease", (*RECIPE, "--width", "1", *locality)
    options = (*RECIPE, "--width", f"{entry.width:g}", "--lambda-rebal", entry.meta["lambda"], "--lr", "1e-4",
               "--init-from", entry.name, *locality)  # fmt: skip
    return f"{entry.name}-lease", options  # argparse keeps the last of a repeated option


def train(
    packed: Path,
    out: Path,
    *,
    work: Path,
    minutes: float,
    runs: Sequence[tuple[str, str, tuple[str, ...]]],
    device: str = "cuda",
    parallel: bool = False,
) -> list[Path]:
    """Unpack into `work`/cache and train each (model, name, options) of `runs` for `minutes`, each in
    its own `python -m colorizers.train` process: one after another, or all at once if `parallel`
    (why: one run's step is mostly host work, crops, soft targets and hints, so on the lent 16-core
    H200 machine six runs side by side each trained 6.5 minutes of a 7-minute call, GPU busy 95-100 %),
    the host's cores split between them. Write to `out` each
    checkpoint in parts (<name>.pth.part<k>) and, for all runs, `RUNS_FILE`: per run a line
    `run NAME sha256 HEX parts K`, its registry entry and its log; a checkpoint over `SHIP_LIMIT` stays
    behind (`kept NAME sha256 HEX bytes B`; its entry and log still come back). A run that fails is
    recorded there with the end of its output, the others still come back, and RuntimeError names it.
    Returns the parts."""
    cache = work / "cache"
    unpack(packed, cache)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // (len(runs) if parallel else 1))
    started: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    for model, name, options in runs:
        run_dir = work / name
        run_dir.mkdir(parents=True, exist_ok=True)
        extra = ("--classification-fraction", "0") if model == "siggraph17" else ()
        argv = [*options, *extra, "--model", model, "--minutes", str(minutes), "--device", device,
                "--precision", "bf16" if device.startswith("cuda") else "fp32", "--cache", str(cache),
                "--threads", str(threads), "--name", name, "--run-dir", str(run_dir),
                "--out", str(work)]  # fmt: skip
        training.parse_args(argv)  # a bad plan fails here, before any run starts
        with open(run_dir / "output.log", "wb") as output:
            child = subprocess.Popen(
                [sys.executable, "-m", "colorizers.train", *argv], stdout=output, stderr=subprocess.STDOUT
            )
        started.append((name, run_dir, child))
        if not parallel:
            child.wait()
    parts, record, failed = [], [], []
    for name, run_dir, child in started:
        if child.wait() != 0:
            failed.append(name)
            tail = (run_dir / "output.log").read_text(errors="replace")[-4000:]
            record += [f"failed {name} exit {child.returncode}", tail]
        else:
            data = (work / f"{name}.pth").read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if len(data) > SHIP_LIMIT:
                header = f"kept {name} sha256 {digest} bytes {len(data)}"
            else:
                count = 0
                for count, start in enumerate(range(0, len(data), PART_BYTES), 1):
                    parts.append(out / f"{name}.pth.part{count - 1}")
                    parts[-1].write_bytes(data[start : start + PART_BYTES])
                header = f"run {name} sha256 {digest} parts {count}"
            record += [header, *((run_dir / f).read_text() for f in ("registry_entry.txt", "train.log"))]
        (out / RUNS_FILE).write_text("\n".join(record) + "\n")  # after each run: a late failure keeps these
    if failed:
        raise RuntimeError(
            f"{', '.join(failed)} failed; the end of each one's output is in {out / RUNS_FILE}"
        )
    return parts


def join(folder: Path) -> list[Path]:
    """Each checkpoint `RUNS_FILE` in `folder` lists, put together from its parts as <name>.pth and
    checked against the SHA-256 recorded there. Returns the checkpoints."""
    joined = []
    for name, expected, count in RUN_LINE.findall((folder / RUNS_FILE).read_text()):
        parts = [folder / f"{name}.pth.part{k}" for k in range(int(count))]
        missing = [p.name for p in parts if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{name}: missing {', '.join(missing)} in {folder}")
        path = folder / f"{name}.pth"
        path.write_bytes(b"".join(part.read_bytes() for part in parts))
        digest = sha256_of(path)
        if digest != expected:
            path.unlink()
            raise ValueError(f"{name}: its {count} parts join to sha256 {digest}, not {expected}")
        joined.append(path)
    return joined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colorizers.lease", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="a cache -> a pack small enough to carry")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=DEFAULT_PACK)
    p.add_argument("--short-side", type=int, default=SHORT_SIDE)
    p.add_argument("--quality", type=int, default=QUALITY, help="WebP quality, 1..100")
    p.add_argument("--val-images", type=int, default=VAL_IMAGES, help="validation images to take along")
    p.add_argument(
        "--native-crop",
        type=int,
        default=NATIVE_CROP,
        help="one square of this side a photo, not rescaled; 0: whole",
    )
    u = verbs.add_parser("unpack", help="a pack -> a cache that colorizers.train reads (--cache)")
    u.add_argument("--pack", type=Path, default=DEFAULT_PACK)
    u.add_argument("--cache", type=Path, required=True)
    t = verbs.add_parser("train", help="on the lent machine: unpack, train, write the checkpoints in parts")
    t.add_argument("--pack", type=Path, default=DEFAULT_PACK)
    t.add_argument("--out", type=Path, required=True, help="the device tool's $OUT")
    t.add_argument("--work", type=Path, default=Path("/tmp/priorlab-lease"))
    t.add_argument("--minutes", type=float, default=3.5, help="per run")
    t.add_argument("--models", nargs="+", default=["eccv16", "siggraph17"], choices=["eccv16", "siggraph17"])
    t.add_argument(
        "--modes", nargs="+", default=["wide"], choices=["wide", "full", "continue"], help="see plan()"
    )
    t.add_argument("--device", default="cuda")
    t.add_argument("--suffix", default="", help="appended to each run's name (a second lease's runs)")
    t.add_argument("--parallel", action="store_true", help="all runs at once, sharing the GPU (see train)")
    j = verbs.add_parser("join", help="here: the parts that came back -> checked checkpoints")
    j.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.verb == "pack":
        result: object = pack(
            args.cache,
            args.out,
            short_side=args.short_side,
            quality=args.quality,
            val_images=args.val_images,
            native_crop=args.native_crop,
        )
    elif args.verb == "unpack":
        result = unpack(args.pack, args.cache)
    elif args.verb == "train":
        plans = [(model, *plan(model, mode)) for mode in args.modes for model in args.models]
        runs = [(model, name + args.suffix, options) for model, name, options in plans]
        paths = train(
            args.pack,
            args.out,
            work=args.work,
            minutes=args.minutes,
            runs=runs,
            device=args.device,
            parallel=args.parallel,
        )
        result = [str(p) for p in paths]
    else:
        result = [str(p) for p in join(args.folder)]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
