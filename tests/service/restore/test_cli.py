"""Tests for service.restore.cli: one tiny file per task, two iterations."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from service.restore.cli import main


def _write(path: Path, arr: np.ndarray) -> str:
    iio.imwrite(path, arr)
    return str(path)


class TestCli:
    def test_denoise_keeps_16_bit_grey(self, tmp_path: Path) -> None:
        src = np.random.default_rng(0).integers(0, 65535, (20, 30), dtype=np.uint16)
        out = tmp_path / "out.png"
        rc = main(
            ["denoise", _write(tmp_path / "in.png", src), str(out), "--sigma", "25", "--iterations", "2"]
        )
        got = iio.imread(out)
        assert rc == 0 and got.dtype == np.uint16 and got.shape == (20, 30)

    def test_sr_carries_alpha(self, tmp_path: Path) -> None:
        src = np.random.default_rng(0).integers(0, 255, (9, 11, 4), dtype=np.uint8)
        src[..., 3] = 200
        out = tmp_path / "out.png"
        main(["sr", _write(tmp_path / "in.png", src), str(out), "--factor", "2", "--iterations", "1"])
        got = iio.imread(out)
        assert got.shape == (18, 22, 4) and got.dtype == np.uint8
        assert np.all(got[..., 3] == 200)

    def test_inpaint_reads_mask(self, tmp_path: Path) -> None:
        src = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        mask = np.full((16, 16), 255, np.uint8)
        mask[4:8] = 0  # black = missing (reference convention)
        out = tmp_path / "out.png"
        args = ["inpaint", _write(tmp_path / "in.png", src), str(out), "--iterations", "1"]
        main([*args, "--mask", _write(tmp_path / "mask.png", mask)])
        assert iio.imread(out).shape == (16, 16, 3)

    def test_inpaint_without_mask_fails(self, tmp_path: Path) -> None:
        src = np.zeros((8, 8, 3), np.uint8)
        with pytest.raises(SystemExit, match="--mask"):
            main(["inpaint", _write(tmp_path / "in.png", src), str(tmp_path / "o.png"), "--iterations", "1"])
