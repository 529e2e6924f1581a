from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import lab2rgb, rgb2lab

from colorizers import lease, train, weights
from colorizers.data import downscale
from colorizers.dataset import LabImages, manifest_sha256


@pytest.fixture(scope="module")
def unpacked(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lease")
    lease.pack(tiny_cache, root / "pack", short_side=40, quality=90, val_images=2, native_crop=0)
    lease.unpack(root / "pack", root / "cache")
    return root / "pack", root / "cache"


def test_unpacked_cache_is_the_packed_one_downscaled(tiny_cache: Path, unpacked: tuple[Path, Path]) -> None:
    packed, cache = unpacked
    original, copy = LabImages(tiny_cache, "train"), LabImages(cache, "train")
    assert len(copy) == len(original)
    ab_errors = []
    for i in range(len(original)):
        image = copy.image(i)
        assert min(image.shape[1:]) == 40
        # The oracle: the same image through sRGB and PIL's resize, without the lossy codec.
        rgb = (np.clip(lab2rgb(original.image(i).transpose(1, 2, 0)), 0, 1) * 255 + 0.5).astype(np.uint8)
        expected = rgb2lab(downscale(Image.fromarray(rgb), 40)).transpose(2, 0, 1)
        assert expected.shape == image.shape
        assert np.abs(image[0] - expected[0]).mean() < 1.5
        ab_errors.append(np.abs(image[1:] - expected[1:]).mean())
    assert np.mean(ab_errors) < 3.0  # WebP's 4:2:0 chroma on smooth colour fields
    # The split, prior and manifest travel unchanged: the data a checkpoint names is the same.
    assert len(LabImages(cache, "val")) == 2
    assert manifest_sha256(cache) == manifest_sha256(tiny_cache)
    assert np.array_equal(np.load(cache / "prior.npy"), np.load(tiny_cache / "prior.npy"))
    meta = json.loads((packed / "pack.json").read_text())
    assert meta["splits"]["train"]["images"] == len(original) and meta["short_side"] == 40


def test_a_native_crop_pack_keeps_the_photos_scale(tiny_cache: Path, tmp_path: Path) -> None:
    meta = lease.pack(tiny_cache, tmp_path / "pack", native_crop=40, quality=90, val_images=2, seed=3)
    lease.unpack(tmp_path / "pack", tmp_path / "cache")
    assert meta["native_crop"] == 40 and "short_side" not in meta
    for split in ("train", "val"):
        original, copy = LabImages(tiny_cache, split), LabImages(tmp_path / "cache", split)
        corners = np.load(tmp_path / "pack" / f"{split}.corners.npy")
        assert len(copy) == len(corners) == (len(original) if split == "train" else 2)
        for i, (y, x) in enumerate(corners):
            # The oracle: the same square cut from the original photo, no resampling, only the codec.
            expected = original.image(i)[:, y : y + 40, x : x + 40]
            assert copy.image(i).shape == expected.shape == (3, 40, 40)
            assert np.abs(copy.image(i)[0] - expected[0]).mean() < 1.5
            if split == "val":  # the centre, as the evaluation crops
                _, h, w = original.image(i).shape
                assert (y, x) == ((h - 40) // 2, (w - 40) // 2)
    assert len({tuple(c) for c in np.load(tmp_path / "pack" / "train.corners.npy")}) > 1  # not all one place
    with pytest.raises(ValueError, match="smaller than 4000"):
        lease.pack(tiny_cache, tmp_path / "x", native_crop=4000)


def test_training_runs_on_an_unpacked_cache(unpacked: tuple[Path, Path], tmp_path: Path) -> None:
    _, cache = unpacked
    args = train.parse_args(
        ["--width", "0.125", "--crop", "32", "--batch", "2", "--max-steps", "2", "--minutes", "100000",
         "--cache", str(cache), "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
         "--threads", "1", "--val-images", "2", "--name", "leased"]
    )  # fmt: skip
    assert train.train(args).is_file()
    assert manifest_sha256(cache) in (tmp_path / "run" / "registry_entry.txt").read_text()


def test_a_damaged_pack_is_refused(unpacked: tuple[Path, Path], tmp_path: Path) -> None:
    packed, _ = unpacked
    damaged = tmp_path / "pack"
    damaged.mkdir()
    for path in packed.iterdir():
        damaged.joinpath(path.name).write_bytes(path.read_bytes())
    blob = damaged / "train.webp"
    blob.write_bytes(blob.read_bytes()[:-10])  # a truncated copy
    with pytest.raises(ValueError, match=r"train\.webp has"):
        lease.unpack(damaged, tmp_path / "cache")
    with pytest.raises(ValueError, match="short side and native crop must be at least 32"):
        lease.pack(packed, tmp_path / "x", short_side=16, native_crop=0)


def test_train_writes_parts_that_join_to_the_checked_checkpoints(
    unpacked: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed, _ = unpacked
    monkeypatch.setattr(lease, "PART_BYTES", 200_000)  # a width-1/8 net is ≈ 1 MB: several parts each
    tiny = ("--width", "0.125", "--crop", "32", "--batch", "2", "--max-steps", "2", "--threads", "1",
            "--val-images", "2", "--lambda-rebal", "0.75")  # fmt: skip
    out = tmp_path / "OUT"
    runs = [("eccv16", "eccv16-tiny", tiny), ("siggraph17", "siggraph17-tiny", tiny)]
    parts = lease.train(
        packed, out, work=tmp_path / "work", minutes=1e5, runs=runs, device="cpu", parallel=True
    )
    names = {p.name.partition(".pth")[0] for p in parts}
    assert names == {"eccv16-tiny", "siggraph17-tiny"}
    assert all(p.stat().st_size <= 200_000 for p in parts) and len(parts) > 2 * 2
    # What the device tool brings back: only the files under OUT, the parts and one text.
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in parts), lease.RUNS_FILE])
    text = (out / lease.RUNS_FILE).read_text()
    assert len(lease.RUN_LINE.findall(text)) == 2 and text.count('"step": 2') == 2  # entries and logs
    joined = lease.join(out)
    assert sorted(p.name for p in joined) == sorted(f"{n}.pth" for n in names)
    for path in joined:
        assert path.read_bytes() == (tmp_path / "work" / path.name).read_bytes()
    # A part lost or damaged on the way is refused, not joined into a broken checkpoint.
    first = out / "eccv16-tiny.pth.part1"
    first.write_bytes(first.read_bytes()[:-1])
    with pytest.raises(ValueError, match="parts join to sha256"):
        lease.join(out)
    assert not (out / "eccv16-tiny.pth").exists()
    first.unlink()
    with pytest.raises(FileNotFoundError, match=r"eccv16-tiny: missing eccv16-tiny\.pth\.part1"):
        lease.join(out)


def test_a_failed_run_is_recorded_and_the_others_still_come_back(
    unpacked: tuple[Path, Path], tmp_path: Path
) -> None:
    packed, _ = unpacked
    tiny = ("--width", "0.125", "--crop", "32", "--batch", "2", "--max-steps", "1", "--val-images", "2")
    runs = [
        ("eccv16", "eccv16-good", tiny),
        ("eccv16", "eccv16-bad", (*tiny, "--init-from", str(tmp_path / "no-such.pth"))),
    ]
    out = tmp_path / "OUT"
    with pytest.raises(RuntimeError, match="eccv16-bad failed"):
        lease.train(packed, out, work=tmp_path / "work", minutes=1e5, runs=runs, device="cpu")
    text = (out / lease.RUNS_FILE).read_text()
    assert "failed eccv16-bad exit 1" in text and "no-such.pth" in text  # the run's own error, for the note
    assert [name for name, _, _ in lease.RUN_LINE.findall(text)] == ["eccv16-good"]
    assert [p.name for p in lease.join(out)] == ["eccv16-good.pth"]


def test_a_checkpoint_over_the_ship_limit_stays_behind_with_its_curve(
    unpacked: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed, _ = unpacked
    monkeypatch.setattr(lease, "SHIP_LIMIT", 2_000_000)  # ECCV16 at width 1/8 is ≈ 1 MB, at 1/4 ≈ 4 MB
    tiny = ("--crop", "32", "--batch", "2", "--max-steps", "1", "--val-images", "2")
    runs = [("eccv16", "small", ("--width", "0.125", *tiny)), ("eccv16", "big", ("--width", "0.25", *tiny))]
    out = tmp_path / "OUT"
    parts = lease.train(
        packed, out, work=tmp_path / "work", minutes=1e5, runs=runs, device="cpu", parallel=True
    )
    assert {p.name for p in parts} == {"small.pth.part0"}
    text = (out / lease.RUNS_FILE).read_text()
    kept = re.search(r"^kept big sha256 ([0-9a-f]{64}) bytes (\d+)$", text, re.MULTILINE)
    assert kept and int(kept[2]) == (tmp_path / "work" / "big.pth").stat().st_size > 2_000_000
    assert text.count('"step": 1') == 2  # both curves come back
    assert [p.name for p in lease.join(out)] == ["small.pth"]


@pytest.mark.parametrize("model", ["eccv16", "siggraph17"])
def test_the_device_plans_are_ones_colorizers_train_accepts(model: str) -> None:
    name, options = lease.plan(model, "wide")
    args = train.parse_args([*options, "--model", model, "--device", "cuda", "--precision", "bf16"])
    assert name == f"{model}-w0.5-lease" and not args.init_from
    assert (args.width, args.crop, args.batch, args.lambda_rebal) == (0.5, 96, 64, 0.75)
    default = weights.REGISTRY[weights.DEFAULT[model]]
    assert args.locality_weight == float(default.meta.get("locality_weight", 0))  # the halo bar's term
    assert args.crop <= lease.NATIVE_CROP  # every packed square yields a crop
    # "continue": the default's trained checkpoint (not one calibrate derived from it), its own recipe.
    name, options = lease.plan(model, "continue")
    args = train.parse_args([*options, "--model", model])
    base = weights.REGISTRY[args.init_from]
    assert name == f"{base.name}-lease" and "rebalancing_undone" not in base.meta
    default = weights.REGISTRY[weights.DEFAULT[model]]
    assert base.name in (default.name, default.meta.get("init_from"))
    assert (args.width, args.lr, args.lambda_rebal) == (base.width, 1e-4, float(base.meta["lambda"]))
    assert args.locality_weight == float(base.meta.get("locality_weight", 0))
    name, options = lease.plan(model, "full")
    args = train.parse_args([*options, "--model", model])
    assert name == f"{model}-w1-lease" and args.width == 1 and args.crop == 96
    with pytest.raises(ValueError, match="mode must be"):
        lease.plan(model, "deep")
