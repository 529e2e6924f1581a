"""service.color.hint_spread against independent oracles: Dijkstra (scipy) for the geodesic distance,
and the module's formula written out in numpy over those distances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from service.color import fused, hint_spread
from service.color.hint_spread import Patch

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
_STEPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _dijkstra(lightness: np.ndarray, sources: np.ndarray, beta: float) -> np.ndarray:
    """Shortest paths on the 8-neighbour graph, a step costing its length plus beta·|ΔL|."""
    h, w = lightness.shape
    index = np.arange(h * w).reshape(h, w)
    rows, cols, costs = [], [], []
    for dy, dx in _STEPS:
        ys, xs = np.mgrid[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        rows.append(index[ys, xs].ravel())
        cols.append(index[ys + dy, xs + dx].ravel())
        step = np.hypot(dy, dx) + beta * np.abs(lightness[ys + dy, xs + dx] - lightness[ys, xs])
        costs.append(step.ravel())
    graph = coo_matrix((np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))), (h * w, h * w))
    found = dijkstra(graph.tocsr(), indices=index[sources], min_only=True)
    return found.reshape(h, w)


def _image(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    """Smooth lightness with a bright wall that has one gap: shortest paths must wind round it."""
    rng = np.random.default_rng(seed)
    lightness = np.cumsum(rng.normal(0, 1.5, (h, w)), axis=1).astype(np.float32) + 50
    lightness[5:h, w // 2] = 100.0
    return np.clip(lightness, 0, 100)


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_geodesic_distance_is_dijkstras(beta: float) -> None:
    lightness = _image(1)
    sources = np.zeros(lightness.shape, bool)
    sources[30:33, 4:7] = True
    got = hint_spread.geodesic_distance(lightness, sources, beta, rounds=1000)
    np.testing.assert_allclose(got, _dijkstra(lightness, sources, beta), rtol=1e-5, atol=1e-3)


def _spread_oracle(lightness: np.ndarray, ab: np.ndarray, patches: list[Patch], beta: float, kappa: float,
                   radius: float, sigma: float) -> np.ndarray:  # fmt: skip
    """The module docstring's formula in numpy, each hint's distance by Dijkstra over the whole image
    (the same as the kernel's window when the window is the whole image)."""
    h, w = lightness.shape
    ys, xs = np.mgrid[0:h, 0:w]
    pull, total = np.zeros_like(ab, np.float64), np.zeros((h, w))
    for p in patches:
        sources = np.zeros((h, w), bool)
        sources[p.top : p.bottom, p.left : p.right] = True
        d = _dijkstra(lightness, sources, beta)
        dy = np.maximum.reduce([p.top - ys, np.zeros_like(ys), ys - (p.bottom - 1)])
        dx = np.maximum.reduce([p.left - xs, np.zeros_like(xs), xs - (p.right - 1)])
        e = np.hypot(dy, dx)
        weight = np.where(e < radius, np.exp(-d / sigma), 0.0)
        fade = np.where(e <= radius / 2, 1.0, 0.5 + 0.5 * np.cos(np.pi * (e - radius / 2) / (radius / 2)))
        pull += fade * weight * (np.array([p.a, p.b])[:, None, None] - ab)
        total += weight
    return ab + pull / (kappa + total)


def test_spread_is_the_formula_over_dijkstra_distances() -> None:
    lightness = _image(2)
    ab = np.random.default_rng(3).normal(0, 20, (2, *lightness.shape)).astype(np.float32)
    patches = [
        Patch(30, 4, 33, 7, 60.0, -20.0),
        Patch(2, 40, 8, 46, -30.0, 50.0),
        Patch(20, 20, 21, 21, 5, 5),
    ]
    # A radius of the whole image: every hint's window is the image, as the oracle's Dijkstra sees it.
    got = hint_spread.spread(lightness, ab, patches, radius_fraction=1.5, rounds=1000)
    size = max(lightness.shape)
    want = _spread_oracle(
        lightness, ab, patches, hint_spread.BETA * size / 256, hint_spread.KAPPA, 1.5 * size,
        hint_spread.SIGMA_FRACTION * size,
    )  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)


def test_the_sweeps_come_close_to_the_exact_distance_on_a_photo() -> None:
    rgb = np.asarray(Image.open(SAMPLES / "aitzgorri.jpg").convert("RGB"))
    lightness = fused.resize_l(fused.srgb8_to_l(np.ascontiguousarray(rgb)), (256, 256))
    beta, sigma = hint_spread.BETA, hint_spread.SIGMA_FRACTION * 256
    for y, x in [(40, 60), (128, 128), (200, 30), (90, 220)]:
        sources = np.zeros(lightness.shape, bool)
        sources[y : y + 6, x : x + 6] = True
        exact = hint_spread.geodesic_distance(lightness, sources, beta, rounds=1000)
        fast = hint_spread.geodesic_distance(lightness, sources, beta)
        near = exact < 3 * sigma  # where the weight is above 0.05
        assert np.all(fast >= exact - 1e-3)  # sweeps only ever overestimate
        assert np.median((fast - exact)[near] / np.maximum(exact[near], 1)) < 0.03
        assert np.abs(np.exp(-fast / sigma) - np.exp(-exact / sigma))[near].mean() < 0.02


def test_without_hints_nothing_changes() -> None:
    ab = np.ones((2, 16, 16), np.float32)
    assert hint_spread.spread(np.zeros((16, 16), np.float32), ab, []) is ab


def test_a_hint_colours_its_flat_region_and_nothing_beyond_its_radius() -> None:
    size = 256
    lightness = np.full((size, size), 60.0, np.float32)
    ab = np.zeros((2, size, size), np.float32)
    out = hint_spread.spread(lightness, ab, [Patch(100, 100, 106, 106, 40.0, -40.0)])
    # At the hint: w = 1 against κ, so 1/(1 + κ) of the way; near it in a flat region, most of the way.
    assert out[0, 102, 102] == pytest.approx(40.0 / (1 + hint_spread.KAPPA), rel=1e-4)
    assert out[0, 102, 130] > 0.7 * 40.0
    # Beyond R (128 px at 256) of the patch, untouched, exactly; and a long way before it, some colour.
    radius = hint_spread.RADIUS_FRACTION * size
    distance = np.hypot(*np.mgrid[0:size, 0:size] - 102.5)
    assert np.any(distance > radius + 4)
    assert np.all(out[:, distance > radius + 4] == 0.0)
    assert out[0, 102, 102 + 60] < out[0, 102, 102 + 30] < out[0, 102, 102 + 10]
    assert out[0, 102 + 100, 102] > 0.1 * 40.0


@pytest.mark.parametrize(("step", "at_most"), [(50.0, 0.75), (90.0, 0.25)])
def test_an_edge_holds_the_spread_back(step: float, at_most: float) -> None:
    # The same hint beside a vertical edge of `step` L units, and on the same photo without the edge:
    # on the hint's side nothing changes; across, the colour arrives weaker, the more so the stronger
    # the edge (its L step adds β·ΔL to every path across).
    size = 128

    def spread(edge: float) -> np.ndarray:
        lightness = np.full((size, size), 10.0, np.float32)
        lightness[:, 64:] += edge
        return hint_spread.spread(
            lightness, np.zeros((2, size, size), np.float32), [Patch(60, 50, 66, 56, 50.0, 0)]
        )

    with_edge, without = spread(step), spread(0.0)
    assert with_edge[0, 63, 62] == pytest.approx(without[0, 63, 62], rel=1e-3)  # 7 px, the hint's side
    assert with_edge[0, 63, 66] < at_most * without[0, 63, 66]  # 11 px, across


def test_the_working_size_scales_the_reach() -> None:
    # The same picture at twice the size: the hint reaches twice as far (R and σ fractions of S, β scaled
    # with S).
    small, large = (np.full((s, s), 50.0, np.float32) for s in (128, 256))
    out_small = hint_spread.spread(
        small, np.zeros((2, 128, 128), np.float32), [Patch(60, 60, 62, 62, 30.0, 0)]
    )
    out_large = hint_spread.spread(
        large, np.zeros((2, 256, 256), np.float32), [Patch(120, 120, 124, 124, 30.0, 0)]
    )
    assert out_small[0, 61, 61 + 20] == pytest.approx(out_large[0, 122, 123 + 40], abs=1.0)


def test_above_256_the_weights_are_the_256_ones_upsampled() -> None:
    # A 256² photo and the same photo at 512², each pixel 2x2 with a fine texture (±4 L in a
    # checkerboard, gone when averaged back to 256). The spread at 512 reproduces the one at 256 (where
    # its settings were chosen), up to the bilinear upsampling of the weights; on the full 512 grid
    # the texture would add to every path's cost and hold the hints back.
    rgb = np.asarray(Image.open(SAMPLES / "aitzgorri.jpg").convert("RGB"))
    small = fused.resize_l(fused.srgb8_to_l(np.ascontiguousarray(rgb)), (256, 256))
    texture = np.where((np.add.outer(np.arange(512), np.arange(512)) % 2) == 0, 4.0, -4.0).astype(np.float32)
    large = np.clip(np.repeat(np.repeat(small, 2, axis=0), 2, axis=1) + texture, 0, 100)
    ab_small = np.random.default_rng(4).normal(0, 10, (2, 256, 256)).astype(np.float32)
    ab_large = np.repeat(np.repeat(ab_small, 2, axis=1), 2, axis=2)
    hints = [(30, 40, 6, 40.0, -30.0), (150, 120, 4, -20.0, 50.0), (200, 220, 9, 10.0, 10.0)]
    at_256 = hint_spread.spread(small, ab_small, [Patch(y, x, y + s, x + s, a, b) for y, x, s, a, b in hints])
    at_512 = hint_spread.spread(
        large, ab_large, [Patch(2 * y, 2 * x, 2 * (y + s), 2 * (x + s), a, b) for y, x, s, a, b in hints]
    )
    change = np.abs(at_256 - ab_small).mean()
    assert change > 3.0  # the hints did change the picture
    difference = np.abs(at_512 - np.repeat(np.repeat(at_256, 2, axis=1), 2, axis=2))
    assert difference.mean() < 0.1 * change, (difference.mean(), change)


def test_kernels_are_compiled_at_import() -> None:
    kernels: tuple[Any, ...] = (hint_spread._geodesic_kernel, hint_spread._weights_kernel)
    for kernel in kernels:
        assert kernel.signatures and not kernel._can_compile, kernel
