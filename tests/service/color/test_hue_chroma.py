"""Larsson16 decoding against a float64 reference written plainly from the rules (and colorsys/skimage)."""

from __future__ import annotations

import cmath
import colorsys
import math

import numpy as np
import pytest
from skimage import color

from service.color import hue_chroma
from service.errors import InvalidArgument

BINS = 32


def centre(k: int) -> float:
    return (k + 0.5) / BINS


def reference_quantile(p: list[float], q: float) -> float:
    total, cmf = sum(p), 0.0
    for k, pk in enumerate(p):
        cmf += pk / total
        if cmf >= q:
            return centre(k)
    return centre(BINS - 1)


def reference_chroma(p: list[float], method: str) -> float:
    total = sum(p)
    if method == "expectation":
        return sum(pk / total * centre(k) for k, pk in enumerate(p))
    if method == "mode":
        return centre(max(range(BINS), key=lambda k: p[k]))
    return reference_quantile(p, {"median": 0.5, "q75": 0.75}[method])


def reference_hue(p: list[float], method: str) -> tuple[float, float]:
    total = sum(p)
    if method == "mode":
        return centre(max(range(BINS), key=lambda k: p[k])), 1.0
    if method == "median":
        return reference_quantile(p, 0.5), 1.0
    z = sum(pk / total * cmath.exp(2j * math.pi * centre(k)) for k, pk in enumerate(p))
    hue = (cmath.phase(z) / (2 * math.pi)) % 1.0
    fade = min(max(abs(z) / BINS, 0.0), 0.03) / 0.03 if method == "expectation-cf" else 1.0
    return hue, fade


def reference_rgb(
    hue_p: list[float], chroma_p: list[float], gray: float, hue_m: str, chroma_m: str
) -> list[float]:
    hue, fade = reference_hue(hue_p, hue_m)
    c = reference_chroma(chroma_p, chroma_m) * fade
    v = gray + c / 2
    s = 2 * c / (2 * gray + c) if 2 * gray + c > 0 else 0.0
    hsv = colorsys.hsv_to_rgb(min(max(hue, 0), 1), min(max(s, 0), 1), min(max(v, 0), 1))
    rgb = [min(max(x, 0.0), 1.0) for x in hsv]
    mean = sum(rgb) / 3
    return [min(max(x - mean + gray, 0.0), 1.0) for x in rgb]


def distributions(rng: np.random.Generator, h: int, w: int, sharpness: float) -> np.ndarray:
    """(32, h, w) softmax distributions of random logits, rounded to FP16 like the served outputs."""
    logits = rng.normal(size=(BINS, h, w)) * sharpness
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float16)


@pytest.mark.parametrize("hue_method", hue_chroma.HUE_METHODS)
@pytest.mark.parametrize("chroma_method", hue_chroma.CHROMA_METHODS)
def test_decode_matches_the_float64_reference(hue_method: str, chroma_method: str) -> None:
    rng = np.random.default_rng(3)
    h, w = 5, 7
    hue_p = distributions(rng, h, w, 4.0)
    chroma_p = distributions(rng, h, w, 2.0)
    gray = rng.uniform(0, 1, (h, w)).astype(np.float32)
    gray[0, 0] = 0.0  # black: S = 0/0 handled
    got = hue_chroma.decode_rgb(hue_p, chroma_p, gray, hue_method=hue_method, chroma_method=chroma_method)
    assert got.shape == (h, w, 3) and got.dtype == np.float32
    for i in range(h):
        for j in range(w):
            want = reference_rgb(
                hue_p[:, i, j].astype(float).tolist(), chroma_p[:, i, j].astype(float).tolist(),
                float(gray[i, j]), hue_method, chroma_method,
            )  # fmt: skip
            np.testing.assert_allclose(got[i, j], want, atol=2e-5, err_msg=f"pixel {(i, j)}")


def test_peaked_distributions_give_that_hue_and_chroma() -> None:
    # All mass in hue bin 0 (red side) and chroma bin 15: median chroma 15.5/32, no fading.
    hue_p = np.zeros((BINS, 1, 1), np.float32)
    chroma_p = np.zeros((BINS, 1, 1), np.float32)
    hue_p[0], chroma_p[15] = 1.0, 1.0
    hue, fade = hue_chroma.hue_from(hue_p)
    assert hue[0, 0] == pytest.approx(0.5 / BINS) and fade[0, 0] == pytest.approx(1.0)
    assert hue_chroma.chroma_from(chroma_p)[0, 0] == pytest.approx(15.5 / BINS)


def test_uniform_hue_fades_to_gray() -> None:
    hue_p = np.full((BINS, 2, 2), 1 / BINS, np.float32)
    chroma_p = np.zeros((BINS, 2, 2), np.float32)
    chroma_p[-1] = 1.0
    gray = np.full((2, 2), 0.4, np.float32)
    rgb = hue_chroma.decode_rgb(hue_p, chroma_p, gray)
    np.testing.assert_allclose(rgb, 0.4, atol=1e-6)
    colourful = hue_chroma.decode_rgb(hue_p, chroma_p, gray, hue_method="expectation")
    assert np.ptp(colourful, axis=-1).min() > 0.3  # without fading, full chroma


def test_median_takes_the_bin_where_the_cmf_reaches_one_half() -> None:
    p = np.zeros((BINS, 1, 3), np.float32)
    p[[2, 9], 0, 0] = 0.5  # CMF reaches exactly 0.5 at bin 2
    p[[2, 9], 0, 1] = [0.49, 0.51]  # crosses at bin 9
    p[[4, 6, 20], 0, 2] = [0.3, 0.3, 0.4]  # median 6, q75 20
    np.testing.assert_allclose(hue_chroma.chroma_from(p)[0], [2.5 / BINS, 9.5 / BINS, 6.5 / BINS])
    assert hue_chroma.chroma_from(p, "q75")[0, 2] == pytest.approx(20.5 / BINS)


def test_hsv_to_rgb_matches_colorsys_in_every_sector() -> None:
    hue = np.linspace(0, 1, 61, dtype=np.float32)[:, None]
    sat = np.full_like(hue, 0.7)
    val = np.full_like(hue, 0.9)
    got = hue_chroma.hsv_to_rgb(hue, sat, val)[:, 0]
    want = [colorsys.hsv_to_rgb(float(h), 0.7, 0.9) for h in hue[:, 0]]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_l_to_gray_is_skimages_neutral_colour() -> None:
    lightness = np.linspace(0, 100, 201, dtype=np.float32)[None]
    want = color.lab2rgb(np.stack([lightness, 0 * lightness, 0 * lightness], -1).astype(np.float64))
    np.testing.assert_allclose(hue_chroma.l_to_gray(lightness), want.mean(-1), atol=1e-4)


def test_decode_ab_is_the_lab_of_the_decoded_rgb_at_quarter_resolution() -> None:
    rng = np.random.default_rng(0)
    hue_p, chroma_p = distributions(rng, 4, 6, 5.0), distributions(rng, 4, 6, 3.0)
    lightness = rng.uniform(20, 90, (16, 24)).astype(np.float32)
    ab = hue_chroma.decode_ab(hue_p, chroma_p, lightness)
    assert ab.shape == (2, 4, 6) and ab.dtype == np.float32
    gray = hue_chroma.l_to_gray(lightness).reshape(4, 4, 6, 4).mean(axis=(1, 3))
    rgb = hue_chroma.decode_rgb(hue_p, chroma_p, gray)
    np.testing.assert_allclose(
        ab, color.rgb2lab(rgb.astype(np.float64))[..., 1:].transpose(2, 0, 1), atol=2e-3
    )
    assert np.abs(ab).max() > 5  # sharp random distributions decode to real colours


def test_unknown_methods_and_bad_shapes_are_refused() -> None:
    p = np.full((BINS, 2, 2), 1 / BINS, np.float32)
    with pytest.raises(InvalidArgument, match="hue decode"):
        hue_chroma.hue_from(p, "sampled")
    with pytest.raises(InvalidArgument, match="chroma decode"):
        hue_chroma.chroma_from(p, "q90")
    with pytest.raises(ValueError, match="share"):
        hue_chroma.decode_rgb(p, p, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="bins, h, w"):
        hue_chroma.chroma_from(p[0])
