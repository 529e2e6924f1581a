"""Hint spread: each colour hint carried along the photo's own lightness, up to half the image.

Why: SIGGRAPH17 as shipped (a quarter-width net trained for hours on one CPU core, colorizers/MODEL_CARD.md)
honours a hint at its own pixels (3.8 ab units off on average) but carries it only a short way: ten
hints gain +1.9 to +2.3 dB where the authors' network gains +4. The gateway therefore carries each
hint's colour further after the network, the way optimisation-based colorization does (Levin,
Lischinski and Weiss, "Colorization using Optimization", SIGGRAPH 2004, and the geodesic variants
after it): along paths of similar lightness, held back by edges, and never farther than half the
working size.

For hint h (its patch P_h at the working size S, colour a_h), at every working pixel p:

    d_h(p)  geodesic distance from P_h over the working L: a step to one of the 8 neighbours costs its
            length (1 or √2) plus β·|ΔL|, with β = BETA·S/256 (an edge's jump in L does not grow with
            the resolution, its distance in pixels does); above S = 256 on L averaged down to 256²
            (`spread`)
    e_h(p)  Euclidean distance from p to P_h; beyond R = S/2 the hint has no weight
    w_h(p)  = exp(−d_h(p) / σ),   σ = S/4
    f_h(p)  fade: 1 up to R/2, then a half cosine down to 0 at R
    ab'(p)  = ab(p) + Σ_h f_h w_h (a_h − ab(p)) / (κ + Σ_h w_h)

Close to a hint, in a region without edges, ab' goes to the hint's colour (w ≫ κ); across an edge or
far away it stays the network's; between two hints it blends them by their weights. The fade sits
outside the normalisation: inside it, w/(κ + w) stays near 1 until w is tiny, so the colour ended in
a hard circle on a flat sky (1 Dec, seen through `make run`); outside, it fades over the outer half
of the radius. Beyond R from every hint nothing changes.

R, σ, β and κ were chosen on 200 training photos (`python -m colorizers.tune_spread`, docs/colorization.md
§7, its rule written before the grid ran): the largest PSNR gain at 10 hints among the settings that
keep the colour bleed across true edges at or below the network's own, the contrast across them at or
above it, and the halo (the mean change beyond 64 px of every hint, issue #15's bar: under 5) at most
4. Weaker edges (β) or a longer σ gain up to 0.9 dB more by flooding the radius with the hint's
colour, which bleeds onto neighbouring objects, flattens edges and moves far pixels. Until 3 December
R was S/4, so the spread added nothing beyond 64 px by construction; S/2 gains 0.4 dB more on the
validation photos (+2.33 -> +2.72 dB) with the halo 2.60 -> 3.71.

The distances are shortest paths on the 8-neighbour graph by chamfer sweeps, forward and backward,
each within its hint's window of R around the patch; a step's cost is computed once per image, and a
row's steps from the row before run as one vectorised pass, leaving only the chain along the row serial
(0.94 -> 0.64 ms a hint at R = S/4, 2.8 -> 2.0 ms at S/2: aitzgorri.jpg at 256², one core). Run to
convergence they are Dijkstra's (tested); on photos that takes 4 or more sweep pairs; `ROUNDS` = 3
leaves them at most a median 1.3 % long and the weights on average within 0.013 of exact
(samples/aitzgorri.jpg at 256², four hints; tested: two left one hint's distances 12 % long): about
2 ms per hint on one core at every working size (1024 hints, `hints.MAX_HINTS`: 1.9 s).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numba.core import types
from numpy.typing import NDArray

from service.color.jit import array, kernel, readonly_array

BETA = 8.0  # per L unit, at a working size of 256
KAPPA = 0.02  # how much weight the network's own colour keeps: w = κ halves the pull to the hint
RADIUS_FRACTION = 0.5  # R: a hint reaches at most half the working size (128 px at 256)
SIGMA_FRACTION = 0.25  # σ: the geodesic distance over which a hint's weight falls by e (64 px at 256)
ROUNDS = 3  # sweep pairs of the distance (module docstring)
GRID = 256  # the weights' resolution at most (`spread`)


@dataclass(frozen=True)
class Patch:
    """A hint's square at the working size: rows top..bottom-1, columns left..right-1, its ab colour."""

    top: int
    left: int
    bottom: int
    right: int
    a: float
    b: float


@kernel(types.void(readonly_array(types.float32, 2), types.float32, array(types.float32, 3)))
def _step_costs_kernel(lightness, beta, costs):
    """The cost of a step into each pixel from its neighbour to the left, above, above-left and
    above-right (costs[0..3]): the step's length plus β·|ΔL|. A step is symmetric, so the backward
    sweeps read the same table from the other end; computed once per image, not per hint and round."""
    height, width = lightness.shape
    diagonal = np.float32(1.4142135)
    for y in range(height):
        for x in range(1, width):
            costs[0, y, x] = np.float32(1.0) + beta * abs(lightness[y, x] - lightness[y, x - 1])
        if y > 0:
            for x in range(width):
                costs[1, y, x] = np.float32(1.0) + beta * abs(lightness[y, x] - lightness[y - 1, x])
            for x in range(1, width):
                costs[2, y, x] = diagonal + beta * abs(lightness[y, x] - lightness[y - 1, x - 1])
            for x in range(width - 1):
                costs[3, y, x] = diagonal + beta * abs(lightness[y, x] - lightness[y - 1, x + 1])


@kernel(
    types.void(
        readonly_array(types.float32, 3),
        types.int64, types.int64, types.int64, types.int64,
        types.int64,
        array(types.float32, 2),
    )
)  # fmt: skip
def _geodesic_kernel(costs, y0, y1, x0, x1, rounds, dist):
    """Shortest-path distances inside the window [y0, y1) x [x0, x1), in place: `dist` holds 0 on the
    sources and +inf elsewhere in the window on entry; `costs` from `_step_costs_kernel`. Each round
    sweeps forward (from the neighbours above and to the left) and backward; at most `rounds` of them,
    fewer once one changes nothing. A row's steps from the row before do not depend on each other and
    run as one vectorised pass; only the chain along the row is serial."""
    left, up, up_left, up_right = costs[0], costs[1], costs[2], costs[3]
    row = np.empty(x1 - x0, np.float32)
    for _ in range(rounds):
        changed = False
        for y in range(y0, y1):
            for x in range(x0, x1):
                row[x - x0] = dist[y, x]
            if y > y0:
                for x in range(x0, x1):
                    row[x - x0] = min(row[x - x0], dist[y - 1, x] + up[y, x])
                for x in range(x0 + 1, x1):
                    row[x - x0] = min(row[x - x0], dist[y - 1, x - 1] + up_left[y, x])
                for x in range(x0, x1 - 1):
                    row[x - x0] = min(row[x - x0], dist[y - 1, x + 1] + up_right[y, x])
            for x in range(x0 + 1, x1):
                row[x - x0] = min(row[x - x0], row[x - x0 - 1] + left[y, x])
            for x in range(x0, x1):
                if row[x - x0] < dist[y, x]:
                    dist[y, x] = row[x - x0]
                    changed = True
        for y in range(y1 - 1, y0 - 1, -1):
            for x in range(x0, x1):
                row[x - x0] = dist[y, x]
            if y + 1 < y1:
                for x in range(x0, x1):
                    row[x - x0] = min(row[x - x0], dist[y + 1, x] + up[y + 1, x])
                for x in range(x0, x1 - 1):
                    row[x - x0] = min(row[x - x0], dist[y + 1, x + 1] + up_left[y + 1, x + 1])
                for x in range(x0 + 1, x1):
                    row[x - x0] = min(row[x - x0], dist[y + 1, x - 1] + up_right[y + 1, x - 1])
            for x in range(x1 - 2, x0 - 1, -1):
                row[x - x0] = min(row[x - x0], row[x - x0 + 1] + left[y, x + 1])
            for x in range(x0, x1):
                if row[x - x0] < dist[y, x]:
                    dist[y, x] = row[x - x0]
                    changed = True
        if not changed:
            return


@kernel(
    types.void(
        readonly_array(types.float32, 3),
        readonly_array(types.int64, 2),
        readonly_array(types.float32, 2),
        types.float32, types.float32,
        types.int64,
        array(types.float32, 2),
        array(types.float32, 2),
        array(types.float32, 3),
    )
)  # fmt: skip
def _weights_kernel(costs, rects, colours, sigma, radius, rounds, total, faded, pulled):
    """Σ_h w_h into `total`, Σ_h f_h w_h into `faded` and Σ_h f_h w_h a_h into `pulled` (all zero on
    entry); `costs` from `_step_costs_kernel`."""
    height, width = costs.shape[1], costs.shape[2]
    dist = np.empty((height, width), np.float32)
    reach = int(np.ceil(radius))
    half = radius / 2
    for h in range(rects.shape[0]):
        top, left, bottom, right = rects[h, 0], rects[h, 1], rects[h, 2], rects[h, 3]
        y0, y1 = max(0, top - reach), min(height, bottom + reach)
        x0, x1 = max(0, left - reach), min(width, right + reach)
        for y in range(y0, y1):
            for x in range(x0, x1):
                inside = top <= y < bottom and left <= x < right
                dist[y, x] = 0.0 if inside else np.inf
        _geodesic_kernel(costs, y0, y1, x0, x1, rounds, dist)
        a, b = colours[h, 0], colours[h, 1]
        for y in range(y0, y1):
            dy = max(top - y, 0, y - (bottom - 1))
            for x in range(x0, x1):
                dx = max(left - x, 0, x - (right - 1))
                e = np.sqrt(np.float32(dy * dy + dx * dx))
                if e < radius:
                    w = np.exp(-dist[y, x] / sigma)
                    f = np.float32(1.0)
                    if e > half:
                        f = np.float32(0.5) + np.float32(0.5) * np.cos(np.float32(np.pi) * (e - half) / half)
                    total[y, x] += w
                    faded[y, x] += f * w
                    pulled[0, y, x] += f * w * a
                    pulled[1, y, x] += f * w * b


def geodesic_distance(
    lightness: NDArray[np.float32], sources: NDArray[np.bool_], beta: float, rounds: int = ROUNDS
) -> NDArray[np.float32]:
    """Shortest-path distance from the `sources` pixels over the whole image (the kernel's own distance,
    exposed for its tests): steps to 8-neighbours cost their length plus `beta`·|ΔL|."""
    dist = np.where(sources, np.float32(0), np.float32(np.inf)).astype(np.float32)
    height, width = lightness.shape
    _geodesic_kernel(step_costs(lightness, beta), 0, height, 0, width, rounds, dist)
    return dist


def step_costs(lightness: NDArray[np.float32], beta: float) -> NDArray[np.float32]:
    """(4, H, W) costs of the steps into each pixel from the left, above, above-left and above-right."""
    costs = np.full((4, *lightness.shape), np.inf, np.float32)
    _step_costs_kernel(np.ascontiguousarray(lightness, np.float32), np.float32(beta), costs)
    return costs


def spread(
    lightness: NDArray[np.float32],
    ab: NDArray[np.float32],
    patches: Sequence[Patch],
    *,
    beta: float = BETA,
    kappa: float = KAPPA,
    radius_fraction: float = RADIUS_FRACTION,
    sigma_fraction: float = SIGMA_FRACTION,
    rounds: int = ROUNDS,
    grid: int = GRID,
) -> NDArray[np.float32]:
    """(S, S) working L and the network's (2, S, S) ab -> ab with each hint's colour spread (module doc).

    Above `grid` (256, where the settings were chosen) the weights are computed on L averaged down to
    `grid` pixels, the patches scaled, and their sums upsampled bilinearly. At a finer grid the texture
    of grass or foliage adds to every path's cost, so a hint would reach less far than it was tuned to
    (at 512 the output moved 5 ab units on average), and a hint would cost S² (24 ms at 1024, against
    about 1.2 ms at any size this way)."""
    if not patches:
        return ab
    height, width = lightness.shape
    scale = min(1.0, grid / max(height, width))
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    small = np.ascontiguousarray(lightness, np.float32)
    if scale < 1:
        small = np.asarray(cv2.resize(small, (cols, rows), interpolation=cv2.INTER_AREA), np.float32)
    sy, sx = rows / height, cols / width
    rects = np.array(
        [(math.floor(p.top * sy), math.floor(p.left * sx),
          max(math.floor(p.top * sy) + 1, math.ceil(p.bottom * sy)),
          max(math.floor(p.left * sx) + 1, math.ceil(p.right * sx))) for p in patches],
        np.int64,
    )  # fmt: skip
    colours = np.array([(p.a, p.b) for p in patches], np.float32)
    coarse = max(rows, cols)
    total = np.zeros((rows, cols), np.float32)
    faded = np.zeros((rows, cols), np.float32)
    pulled = np.zeros((2, rows, cols), np.float32)
    _weights_kernel(
        step_costs(small, beta * coarse / 256), rects, colours, np.float32(sigma_fraction * coarse),
        np.float32(radius_fraction * coarse), rounds, total, faded, pulled,
    )  # fmt: skip
    if scale < 1:
        up = functools.partial(cv2.resize, dsize=(width, height), interpolation=cv2.INTER_LINEAR)
        total, faded = np.asarray(up(total), np.float32), np.asarray(up(faded), np.float32)
        pulled = np.stack([np.asarray(up(c), np.float32) for c in pulled])
    # Σ f_h w_h (a_h − ab) = Σ f_h w_h a_h − ab Σ f_h w_h
    return np.asarray(ab + (pulled - ab * faded) / (np.float32(kappa) + total), np.float32)
