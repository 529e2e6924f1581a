from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from colorizers import data, sources
from colorizers.dataset import LabImages, manifest_sha256


def _manifest(cache: Path) -> list[dict[str, str]]:
    with (cache / "manifest.tsv").open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _by_name(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {Path(r["member"]).name: r for r in rows}


class TestBuild:
    def test_exact_duplicate_dropped_near_duplicate_kept_in_one_split(self, tiny_cache: Path) -> None:
        rows = _by_name(_manifest(tiny_cache))
        assert len(rows) == 13  # 12 distinct + near.jpg; dup.png is a byte copy of img01: one goes
        assert ("dup.png" in rows) != ("img01.png" in rows)
        assert rows["near.jpg"]["group"] == rows["img00.png"]["group"]
        assert rows["near.jpg"]["split"] == rows["img00.png"]["split"]
        assert len({r["group"] for r in rows.values()}) == 12

    def test_both_splits_used_and_summary_consistent(self, tiny_cache: Path) -> None:
        rows = _manifest(tiny_cache)
        summary = json.loads((tiny_cache / "summary.json").read_text())
        assert summary["images"] == {s: sum(r["split"] == s for r in rows) for s in ("train", "val")}
        assert min(summary["images"].values()) > 0
        assert summary["near_duplicate_groups"] == 1
        assert {r["licence"] for r in rows} == {"CC0-1.0"}
        assert manifest_sha256(tiny_cache) == summary["manifest_sha256"]

    def test_rebuild_is_deterministic_and_seed_changes_split(
        self, tiny_cache: Path, tmp_path: Path, build_cache: Callable[..., dict]
    ) -> None:
        build_cache(tmp_path / "a")
        assert (tmp_path / "a" / "cache" / "manifest.tsv").read_bytes() == (
            tiny_cache / "manifest.tsv"
        ).read_bytes()
        build_cache(tmp_path / "b", seed=1)
        splits = {r["sha256"]: r["split"] for r in _manifest(tiny_cache)}
        other = {r["sha256"]: r["split"] for r in _manifest(tmp_path / "b" / "cache")}
        assert splits.keys() == other.keys() and splits != other

    def test_stored_lab_matches_skimage_of_the_downscaled_photo(self, tiny_cache: Path) -> None:
        rows = [r for r in _manifest(tiny_cache) if r["split"] == "train"]
        images = LabImages(tiny_cache, "train")
        assert len(images) == len(rows)
        name = Path(rows[0]["member"]).name
        raw = (tiny_cache.parent / "photos" / name).read_bytes()
        expected = rgb2lab(data.downscale(data.decode(raw, name), 64))
        stored = images.image(0).transpose(1, 2, 0)
        assert stored.shape == expected.shape and min(stored.shape[:2]) == 64
        np.testing.assert_allclose(stored, expected, atol=0.07)  # float16 storage

    def test_evaluation_near_copy_is_dropped(
        self, tmp_path: Path, build_cache: Callable[..., dict], photo_folder: Callable[..., Path]
    ) -> None:
        evaluation = tmp_path / "eval"
        evaluation.mkdir()
        photo_folder(tmp_path / "src")  # the same seeded photos the cache is built from
        with Image.open(tmp_path / "src" / "img05.png") as photo:
            photo.save(evaluation / "copy.png")
        summary = build_cache(tmp_path / "c", leak=(evaluation,))
        names = _by_name(_manifest(tmp_path / "c" / "cache"))
        assert "img05.png" not in names and len(names) == 12
        assert any("img05.png: near-copy of an evaluation image" in s for s in summary["skipped"])


class TestSplitting:
    def test_declared_scenes_and_close_hashes_group_together(self) -> None:
        hashes = [0b0, 0b111, (1 << 64) - 1, 0xFFFF0000FFFF0000]
        # items 0 and 1 are 3 bits apart; 2 and 3 are far apart but declared one scene
        assert data.group_near_duplicates(hashes, ["", "", "s", "s"], max_bits=8) == [0, 0, 2, 2]
        assert data.group_near_duplicates(hashes, max_bits=2) == [0, 1, 2, 3]

    def test_assign_split_is_a_pure_function_of_seed_and_key(self) -> None:
        keys = [f"group{i}" for i in range(400)]
        first = [data.assign_split(k, seed=0, val_fraction=0.1) for k in keys]
        assert first == [data.assign_split(k, seed=0, val_fraction=0.1) for k in keys]
        assert 20 <= first.count("val") <= 60
        assert first != [data.assign_split(k, seed=1, val_fraction=0.1) for k in keys]

    def test_phash_is_stable_under_rescale_and_differs_across_photos(
        self, colour_image: Callable[..., Image.Image]
    ) -> None:
        rng = np.random.default_rng(3)
        a, b = colour_image(rng), colour_image(rng)
        small = np.asarray(a.resize((48, 36), Image.Resampling.BILINEAR))
        assert data.hamming(data.phash(np.asarray(a)), data.phash(small)) <= data.NEAR_DUPLICATE_BITS
        assert data.hamming(data.phash(np.asarray(a)), data.phash(np.asarray(b))) > data.NEAR_DUPLICATE_BITS


class TestReading:
    def test_random_crops_are_seeded_and_sized(self, tiny_cache: Path) -> None:
        images = LabImages(tiny_cache, "train")
        a = images.batch(np.random.default_rng(7), 32, 4)
        b = images.batch(np.random.default_rng(7), 32, 4)
        assert a.shape == (4, 3, 32, 32) and a.dtype.is_floating_point
        assert np.array_equal(a.numpy(), b.numpy())
        assert float(a[:, 0].min()) >= 0 and float(a[:, 0].max()) <= 100

    def test_crop_larger_than_the_images_is_refused(self, tiny_cache: Path) -> None:
        with pytest.raises(ValueError, match="larger than a stored image"):
            LabImages(tiny_cache, "train").random_crop(np.random.default_rng(0), 128)

    def test_augmentations(self, tiny_cache: Path) -> None:
        """none: every crop is a window of a stored image as stored; flip: some are mirrored windows;
        flip-scale: some are neither (rescaled), all of the asked size and within the image's values."""
        images = LabImages(tiny_cache, "train")
        stored = [images.image(i) for i in range(len(images))]

        def window_of(crop: np.ndarray, mirrored: bool) -> bool:
            crop = crop[:, :, ::-1] if mirrored else crop
            size = crop.shape[-1]
            return any(
                np.array_equal(image[:, y : y + size, x : x + size], crop)
                for image in stored
                for y in range(image.shape[1] - size + 1)
                for x in range(image.shape[2] - size + 1)
            )

        rng = np.random.default_rng(3)
        plain = [images.random_crop(rng, 32, "none") for _ in range(6)]
        assert all(window_of(c, mirrored=False) for c in plain)
        flipped = [images.random_crop(rng, 32, "flip") for _ in range(12)]
        assert any(not window_of(c, mirrored=False) and window_of(c, mirrored=True) for c in flipped)
        scaled = [images.random_crop(rng, 32, "flip-scale") for _ in range(12)]
        assert all(c.shape == (3, 32, 32) for c in scaled)
        assert any(not window_of(c, False) and not window_of(c, True) for c in scaled)
        assert all(float(c[0].min()) >= 0 and float(c[0].max()) <= 100 for c in scaled)
        with pytest.raises(ValueError, match="augment must be one of"):
            images.random_crop(rng, 32, "rotate")

    def test_missing_cache_names_the_command(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=r"colorizers\.data"):
            LabImages(tmp_path, "train")


class TestSources:
    def test_every_source_names_members_and_a_licence(self) -> None:
        names = [s.name for s in sources.SOURCES]
        assert len(names) == len(set(names))
        for source in sources.SOURCES:
            assert source.members and source.licence and source.kind in ("folder", "deb", "wheel")
            if source.kind == "wheel":
                assert "==" in source.package  # pinned, so the photos are reproducible

    def test_offline_without_downloads_skips_cleanly(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        deb = next(s for s in sources.SOURCES if s.kind == "deb")
        assert sources.fetch(deb, tmp_path, offline=True) is None
        assert "skipping source" in caplog.text

    def test_dep5_copyright_gives_per_file_licences(self, tmp_path: Path) -> None:
        doc = tmp_path / "usr" / "share" / "doc" / "pkg"
        doc.mkdir(parents=True)
        (doc / "copyright").write_text(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
            "Files: *\nLicense: GPL-2+\n\n"
            "Files: doc/*\nLicense: GFDL-1.2+\n\n"
            "Files: 16.04/a_by_x.jpg\n 16.04/b_by_y.jpg\nCopyright: x\nLicense: CC0-1.0\n"
        )
        assert sources.dep5_licences(tmp_path, "pkg") == [
            ("a_by_x.jpg", "CC0-1.0"),
            ("b_by_y.jpg", "CC0-1.0"),
        ]

    def test_exif_orientation_is_applied(self) -> None:
        # A camera-style JPEG stored landscape with EXIF orientation 6 (display rotated 90° clockwise),
        # a red block in its stored top-left corner.
        stored = np.full((40, 64, 3), 128, np.uint8)
        stored[:20, :32] = (220, 30, 30)
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, format="JPEG", quality=95, exif=exif)
        with Image.open(io.BytesIO(buffer.getvalue())) as raw:
            assert raw.getexif()[0x0112] == 6
            pixels = np.asarray(raw.convert("RGB"))
        upright = data.decode(buffer.getvalue(), "portrait.jpg")
        assert upright.size == (40, 64) and upright.mode == "RGB"
        # Exactly the stored pixels turned clockwise: the red block is now top right.
        turned = np.asarray(upright)
        np.testing.assert_array_equal(turned, np.rot90(pixels, k=-1))
        assert turned[:32, 20:, 0].mean() > 200 and turned[:32, :20, 0].mean() < 150
