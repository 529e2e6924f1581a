"""Colour bleed across ground-truth edges: does a colorizer paint one object's hue over its neighbour?

Issue #15: "larsson16 paints the sky blue on two photos but also washes the blue over a red roof and a
white lighthouse". Whole-image metrics (ab L2, AuC, PSNR) hardly see that: the roof is a few per cent
of the pixels, and a model that leaves it gray scores about the same. So this module looks only where
the truth has a colour edge and asks what the prediction does on either side of it.

Edges. On each validation crop at the working resolution (centre `--size`² crop, sides floored to 32,
as `colorizers.compare` scores them) the true Lab image is differentiated with Sobel filters; the
edge strength and normal come from the structure tensor summed over L, a and b (Di Zenzo), so an edge
in lightness, in colour or in both is found with one normal. Edge pixels are the local maxima of that
strength along the normal (thin edges, the step's two pixels wide) of at least `MIN_GRADIENT` Lab
units per pixel. Each edge pixel is sampled on two sides, A and B, `--offset` pixels along the normal
each way (3x3 means, so one noisy pixel does not decide): far enough that the models' H/4 colour
(bilinearly upsampled, 4 pixels a cell) is not blurred across the edge by construction (the truth
pooled to H/4 and upsampled the same way, an oracle row of the table, bleeds on ~3 % of edges), near
enough to stay on the neighbouring object. Only edges between objects of different colour are kept:
true sides more than `MIN_STEP` ab units apart, and either `MIN_HUE_TURN` degrees apart in hue or one
of them gray (chroma < `MIN_CHROMA`). Light blue next to deep blue is one hue at two saturations; no
hue can leak there, and the rule below would call small overshoots of saturation bleed.

Bleed, per side A (its neighbour B), with truths t_A, t_B and prediction p_A:
- **bleed**: p_A has chroma ≥ `MIN_CHROMA` and lies nearer to B's hue than to A's: nearer to the ray
  from gray through t_B than to the ray through t_A (the colours of each hue at any saturation). The
  rays make it a test of hue, not of saturation: every model here is muted (0.3x the true
  colourfulness), so a blue tint on a white lighthouse is nearer white than the saturated sky in
  plain ab distance, yet it is exactly the leak the issue describes; and plain distance calls a sky
  that is merely desaturated "white leaking onto it". A gray side's ray is gray itself, which lies on
  every ray, so gray "leaking" onto a coloured object is never bleed (that is washing out). The chroma
  floor (10 ab, a clearly visible tint) keeps a model's faint overall cast out of it: the shipped
  checkpoints tint whole photos faintly sepia, which is not one object's colour on another (at 5 ab
  that cast made every edge of a white background "bleed" from the objects on it).
- **washed out**: p_A has chroma < `MIN_CHROMA` where t_A has at least that: colour missing, not
  misplaced. Reported apart, so a model cannot look leak-free by painting nothing.
An edge pixel counts as bleeding if either side bleeds, and as washed out if it does not bleed and a
side is washed out; so a prediction that copies one side's colour across the edge bleeds on 100 % of
it, the truth on 0 %, and gray washes out every edge between two coloured sides. Any colour flat
across an edge bleeds there (it is nearer one side's hue), so the crop's mean true colour painted
everywhere, the other oracle row, shows what no spatial information at all scores. The plain-distance
variant (p_A nearer t_B than t_A, chroma ≥ `MIN_CHROMA`) is reported beside it as `bleed_nearest`.

Also per model/decoding, over the same edges: the mean ab error at the sampled sides, the across-edge
contrast Σ|p_A − p_B| / Σ|t_A − t_B| (1: edges as sharp in colour as the truth; a leak or a wash both
lower it), and the bleed rate on the edges with a lightness step of at least `VISIBLE_L_STEP`, the
ones a model that sees only L could find. The whole-crop metrics of `colorizers.evaluate` (ab L2, AuC,
PSNR, colourfulness) are computed on the same crops so a decoding that leaks less can be checked for
its cost. Larsson16 is decoded in every hue x chroma method of `service.color.hue_chroma`; ECCV16 and
SIGGRAPH17 (no hints) at their shipped settings (`colorizers.compare.shipped`) are the references.

    python -m colorizers.evaluate_bleed --model larsson16   # writes colorizers/results/bleed.*
    python -m colorizers.evaluate_bleed --checkpoint NAME   # a registered candidate: results/NAME_bleed.*
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from colorizers import compare, quantize, weights
from colorizers.dataset import DEFAULT_CACHE, REPO, LabImages, manifest_sha256, redistributable
from colorizers.evaluate import Scores, ab_error, colourfulness, lab_to_rgb8
from colorizers.larsson16 import PAD_MULTIPLE, LarssonColorizer
from service.color import ab_decode, hue_chroma

log = logging.getLogger(__name__)

RESULTS = REPO / "colorizers" / "results"
MIN_GRADIENT = 4.0  # Lab units per pixel (Sobel / 8): a step of 8+ units over two pixels
MIN_STEP = 20.0  # ab units between the two true sides: different colours, not shading
MIN_HUE_TURN = 30.0  # degrees between the two true sides' hues (unless one is gray)
MIN_CHROMA = 10.0  # ab units: below this a colour reads as gray (a faint cast, not an object colour)
VISIBLE_L_STEP = 10.0  # L units between the sides: an edge the models, which see only L, could find
OFFSET = 6  # pixels from the edge to each side's sample at 256²: 1.5 cells of the H/4 prediction
MIN_PASS_BLEED_DROP = 0.2  # a decoding "clearly leaks less" if its bleed rate is ≥ 20 % lower ...
PSNR_SLACK_DB = 0.1  # ... and it costs at most 0.1 dB PSNR,
AUC_SLACK = 0.003  # 0.003 AuC (plain and rebalanced),
COLOURFULNESS_KEEP = 0.95  # and keeps ≥ 95 % of the colourfulness (leaking less by painting less is no gain)
ORACLE_QUARTER = "oracle: truth at H/4, upsampled"
ORACLE_FLAT = "oracle: the crop's mean true colour"
LARSSON_DEFAULT = f"Larsson16, {hue_chroma.HUE_DEFAULT} / {hue_chroma.CHROMA_DEFAULT}"

Lab = NDArray[np.float32]
Predictor = Callable[[Lab], dict[str, Lab]]  # (H, W) L -> {label: (2, H, W) ab}


@dataclass(frozen=True)
class Edges:
    """Edge pixels of one true image and their two side samples (3x3 means), each (n, 2) or (n,)."""

    points: NDArray[np.intp]  # (n, 2) row, column of the edge pixel
    side_a: NDArray[np.intp]  # (n, 2) row, column of side A's sample
    side_b: NDArray[np.intp]
    true_a: NDArray[np.float64]  # (n, 2) true ab at side A
    true_b: NDArray[np.float64]
    l_step: NDArray[np.float64]  # (n,) |L_A - L_B|

    def __len__(self) -> int:
        return len(self.points)


def _box3(plane: NDArray[np.floating]) -> NDArray[np.float64]:
    return ndimage.uniform_filter(np.asarray(plane, np.float64), size=3, mode="nearest")


def find_edges(
    lab: Lab,
    *,
    offset: int = OFFSET,
    min_gradient: float = MIN_GRADIENT,
    min_step: float = MIN_STEP,
    min_hue_turn: float = MIN_HUE_TURN,
    min_chroma: float = MIN_CHROMA,
) -> Edges:
    """Thin edges of the true (3, H, W) Lab image between sides whose true ab differ by > `min_step` and
    whose hues differ by ≥ `min_hue_turn` degrees, or one of which is gray (chroma < `min_chroma`)."""
    if lab.ndim != 3 or lab.shape[0] != 3:
        raise ValueError(f"lab must have shape (3, H, W), got {lab.shape}")
    if offset < 1:
        raise ValueError(f"offset must be at least 1 pixel, got {offset}")
    channels = np.asarray(lab, np.float64)
    # Sobel / 8: the derivative in units per pixel. Structure tensor summed over L, a, b (Di Zenzo):
    # its leading eigenvector is the normal along which the colour changes most, its root the rate.
    gx = np.stack([ndimage.sobel(c, axis=1, mode="nearest") for c in channels]) / 8
    gy = np.stack([ndimage.sobel(c, axis=0, mode="nearest") for c in channels]) / 8
    jxx, jyy, jxy = (gx * gx).sum(0), (gy * gy).sum(0), (gx * gy).sum(0)
    half_diff = (jxx - jyy) / 2
    strength = np.sqrt((jxx + jyy) / 2 + np.hypot(half_diff, jxy))
    theta = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    nx, ny = np.cos(theta), np.sin(theta)  # unit normal (x = column, y = row)

    height, width = strength.shape
    rows, cols = np.nonzero(strength >= min_gradient)
    nxs, nys = nx[rows, cols], ny[rows, cols]
    # Non-maximum suppression along the normal: one edge pixel across the contour, not a band.
    ahead = strength[np.clip(np.rint(rows + nys).astype(np.intp), 0, height - 1),
                     np.clip(np.rint(cols + nxs).astype(np.intp), 0, width - 1)]  # fmt: skip
    behind = strength[np.clip(np.rint(rows - nys).astype(np.intp), 0, height - 1),
                      np.clip(np.rint(cols - nxs).astype(np.intp), 0, width - 1)]  # fmt: skip
    here = strength[rows, cols]
    keep = (here >= ahead) & (here >= behind)
    rows, cols, nxs, nys = rows[keep], cols[keep], nxs[keep], nys[keep]
    a_rows, a_cols = (
        np.rint(rows - offset * nys).astype(np.intp),
        np.rint(cols - offset * nxs).astype(np.intp),
    )
    b_rows, b_cols = (
        np.rint(rows + offset * nys).astype(np.intp),
        np.rint(cols + offset * nxs).astype(np.intp),
    )
    # Both samples and their 3x3 windows inside the image: no side is made up by edge padding.
    inside = np.ones(len(rows), bool)
    for r, c in ((a_rows, a_cols), (b_rows, b_cols)):
        inside &= (r >= 1) & (r <= height - 2) & (c >= 1) & (c <= width - 2)
    rows, cols = rows[inside], cols[inside]
    a_rows, a_cols, b_rows, b_cols = a_rows[inside], a_cols[inside], b_rows[inside], b_cols[inside]
    smooth = np.stack([_box3(c) for c in channels])
    true_a = smooth[1:, a_rows, a_cols].T
    true_b = smooth[1:, b_rows, b_cols].T
    step = np.hypot(*(true_a - true_b).T)
    # Different colours, not one hue at two saturations (light and deep blue): a hue can only leak
    # between different hues, or onto (or off) a gray side, whose hue is undefined.
    gray_side = (np.hypot(*true_a.T) < min_chroma) | (np.hypot(*true_b.T) < min_chroma)
    hue_a, hue_b = np.arctan2(true_a[:, 1], true_a[:, 0]), np.arctan2(true_b[:, 1], true_b[:, 0])
    turn = np.abs(np.angle(np.exp(1j * (hue_a - hue_b))))  # wrapped to [0, π]
    different = (step > min_step) & (gray_side | (turn >= np.radians(min_hue_turn)))
    return Edges(
        points=np.stack([rows, cols], 1)[different],
        side_a=np.stack([a_rows, a_cols], 1)[different],
        side_b=np.stack([b_rows, b_cols], 1)[different],
        true_a=true_a[different],
        true_b=true_b[different],
        l_step=np.abs(smooth[0, a_rows, a_cols] - smooth[0, b_rows, b_cols])[different],
    )


def _distance_to_hue(p: NDArray[np.float64], colour: NDArray[np.float64]) -> NDArray[np.float64]:
    """(n, 2) points, (n, 2) colours -> (n,) distance from each point to the ray from gray through the
    colour: to the nearest colour of that hue at any saturation (a gray colour's ray is gray itself)."""
    length2 = (colour * colour).sum(1)
    along = np.divide((p * colour).sum(1), length2, out=np.zeros(len(p)), where=length2 > 0)
    nearest = np.maximum(along, 0.0)[:, None] * colour
    return np.hypot(*(p - nearest).T)


@dataclass(frozen=True)
class SideVerdicts:
    """Per edge pixel (n,) booleans for one side: bleed (hue rule), bleed (nearest rule), washed out."""

    bleed: NDArray[np.bool_]
    bleed_nearest: NDArray[np.bool_]
    washed: NDArray[np.bool_]


def judge_side(pred: NDArray[np.float64], own: NDArray[np.float64], other: NDArray[np.float64],
               *, min_chroma: float = MIN_CHROMA) -> SideVerdicts:  # fmt: skip
    """The module docstring's rules for one side: `pred`, `own` (its truth), `other` (the far side's)."""
    chroma = np.hypot(*pred.T)
    coloured = chroma >= min_chroma
    bleed = coloured & (_distance_to_hue(pred, other) < _distance_to_hue(pred, own))
    nearest = coloured & (np.hypot(*(pred - other).T) < np.hypot(*(pred - own).T))
    washed = ~coloured & (np.hypot(*own.T) >= min_chroma)
    return SideVerdicts(bleed, nearest, washed)


@dataclass
class BleedCounts:
    """Accumulates one model/decoding's verdicts over the edges of many crops."""

    edges: int = 0
    bleed: int = 0
    bleed_nearest: int = 0
    washed: int = 0
    visible_edges: int = 0
    visible_bleed: int = 0
    side_error: float = 0.0  # Σ over both sides of |p - t|
    pred_contrast: float = 0.0  # Σ |p_A - p_B|
    true_contrast: float = 0.0  # Σ |t_A - t_B|

    def add(self, edges: Edges, pred_ab: NDArray[np.floating], *, min_chroma: float = MIN_CHROMA,
            visible_l_step: float = VISIBLE_L_STEP) -> NDArray[np.bool_]:  # fmt: skip
        """Judge `pred_ab` (2, H, W) at `edges`; returns the (n,) bleed mask (hue rule)."""
        smooth = np.stack([_box3(c) for c in pred_ab])
        pred_a = smooth[:, edges.side_a[:, 0], edges.side_a[:, 1]].T
        pred_b = smooth[:, edges.side_b[:, 0], edges.side_b[:, 1]].T
        on_a = judge_side(pred_a, edges.true_a, edges.true_b, min_chroma=min_chroma)
        on_b = judge_side(pred_b, edges.true_b, edges.true_a, min_chroma=min_chroma)
        bleed = on_a.bleed | on_b.bleed
        visible = edges.l_step >= visible_l_step
        self.edges += len(edges)
        self.bleed += int(bleed.sum())
        self.bleed_nearest += int((on_a.bleed_nearest | on_b.bleed_nearest).sum())
        self.washed += int((~bleed & (on_a.washed | on_b.washed)).sum())
        self.visible_edges += int(visible.sum())
        self.visible_bleed += int((bleed & visible).sum())
        self.side_error += float(np.hypot(*(pred_a - edges.true_a).T).sum())
        self.side_error += float(np.hypot(*(pred_b - edges.true_b).T).sum())
        self.pred_contrast += float(np.hypot(*(pred_a - pred_b).T).sum())
        self.true_contrast += float(np.hypot(*(edges.true_a - edges.true_b).T).sum())
        return bleed

    def summary(self) -> dict[str, float]:
        if self.edges == 0:
            raise ValueError("no edges counted")
        return {
            "edges": self.edges,
            "bleed": self.bleed / self.edges,
            "bleed_nearest": self.bleed_nearest / self.edges,
            "washed_out": self.washed / self.edges,
            "bleed_visible": self.visible_bleed / max(self.visible_edges, 1),
            "side_ab_error": self.side_error / (2 * self.edges),
            "contrast_ratio": self.pred_contrast / self.true_contrast,
        }


def larsson16_decodings(model: LarssonColorizer, default_only_as: str = "") -> Predictor:
    """One forward pass, decoded in every hue x chroma method, each upsampled as the gateway does; with
    `default_only_as`, only the default decoding, under that label."""
    methods = (
        [(hue_chroma.HUE_DEFAULT, hue_chroma.CHROMA_DEFAULT)]
        if default_only_as
        else [(h, c) for h in hue_chroma.HUE_METHODS for c in hue_chroma.CHROMA_METHODS]
    )

    @torch.no_grad()
    def predict(lightness: Lab) -> dict[str, Lab]:
        hue, chroma = (t[0].numpy() for t in model(torch.from_numpy(lightness)[None, None]))
        out = {}
        for hue_method, chroma_method in methods:
            small = hue_chroma.decode_ab(hue, chroma, lightness, hue_method=hue_method,
                                         chroma_method=chroma_method)  # fmt: skip
            label = default_only_as or f"Larsson16, {hue_method} / {chroma_method}"
            out[label] = ab_decode.resize_ab(small, (lightness.shape[0], lightness.shape[1]))
        return out

    return predict


def oracles(lab: Lab) -> dict[str, Lab]:
    """Two references made from the truth, to read the models' numbers against: the truth at the models'
    H/4 resolution, upsampled as theirs is (what the resolution alone costs at this offset), and the
    crop's mean true colour everywhere (a wash with no spatial information at all)."""
    _, h, w = lab.shape
    quarter = lab[1:, : h // 4 * 4, : w // 4 * 4].reshape(2, h // 4, 4, w // 4, 4).mean(axis=(2, 4))
    flat = np.broadcast_to(lab[1:].mean(axis=(1, 2), keepdims=True), lab[1:].shape)
    return {ORACLE_QUARTER: ab_decode.resize_ab(quarter, (h, w)), ORACLE_FLAT: np.ascontiguousarray(flat)}


def _single(entry: compare.Entry) -> Predictor:
    return lambda lightness: {entry.label: entry.colorize(lightness)}


def _larsson(name: str) -> LarssonColorizer:
    if name not in weights.REGISTRY:
        raise ValueError(f"checkpoint {name!r} is not in colorizers/weights.py's registry")
    model = weights.load(weights.REGISTRY[name])
    if not isinstance(model, LarssonColorizer):
        raise ValueError(f"{name} is not a Larsson16 checkpoint")
    return model


def shipped_label(name: str) -> str:
    """The reference row of the shipped checkpoint when another one is evaluated."""
    return f"shipped {name}, {hue_chroma.HUE_DEFAULT} / {hue_chroma.CHROMA_DEFAULT}"


def predictors(model: str, checkpoint: str = "") -> tuple[dict[str, str], list[Predictor]]:
    """({label: checkpoint}, predictors): `model`'s decodings (of `checkpoint`, default: the shipped one)
    plus the other shipped models as references; for a `checkpoint` that is not the shipped one, also
    the shipped one's default decoding, on the same crops (a candidate's comparison)."""
    if model != "larsson16":
        raise ValueError(f"only larsson16 has decodings to compare, got {model!r}")
    shipped = weights.DEFAULT["larsson16"]
    name = checkpoint or shipped
    labels = {
        f"Larsson16, {h} / {c}": name for h in hue_chroma.HUE_METHODS for c in hue_chroma.CHROMA_METHODS
    }
    found: list[Predictor] = [larsson16_decodings(_larsson(name))]
    if name != shipped:
        labels[shipped_label(shipped)] = shipped
        found.append(larsson16_decodings(_larsson(shipped), default_only_as=shipped_label(shipped)))
    # The references exactly as the model card's comparison runs them (shipped temperature, no hints).
    for entry in compare.shipped():
        if weights.REGISTRY[entry.checkpoint].arch == "larsson16":
            continue
        labels[entry.label] = entry.checkpoint
        found.append(_single(entry))
    return labels, found


@dataclass
class Sample:
    """What the figure needs of one redistributable crop: the truth, and per label its ab and bleed mask."""

    index: int
    lab: Lab
    edges: Edges
    ab: dict[str, Lab] = field(default_factory=dict)
    bleed: dict[str, NDArray[np.bool_]] = field(default_factory=dict)


def evaluate(
    labels: dict[str, str],
    found: list[Predictor],
    images: LabImages,
    *,
    size: int = 256,
    offset: int = OFFSET,
    max_images: int = 0,
    samples: tuple[int, ...] = (),
    minutes: float = 0.0,
) -> tuple[dict, list[Sample]]:
    """Bleed counts and whole-crop scores of every label on the same crops; the `samples` kept for figures.

    The `samples` are scored first, then the rest in split order, so a run cut short by `minutes` (> 0:
    no crop is started after that much time) still has its figure; `max_images` set to the count it
    reached (`metrics["images"]`) reproduces it."""
    centres = torch.from_numpy(quantize.bin_centres())
    count = len(images) if max_images <= 0 else min(max_images, len(images))
    labels = {**labels, ORACLE_QUARTER: "", ORACLE_FLAT: ""}
    bleed = {label: BleedCounts() for label in labels}
    scores = {label: Scores() for label in labels}
    gray, truth_colour, kept, crops_with_edges = Scores(), [], [], 0
    start = time.perf_counter()
    order = [*samples, *(i for i in range(len(images)) if i not in samples)][:count]
    done = 0
    for i in order:
        if minutes > 0 and time.perf_counter() - start > 60 * minutes:
            log.info("time budget of %g min spent after %d crops", minutes, done)
            break
        done += 1
        lab = images.centre_crop(i, size)
        h, w = (lab.shape[1] // PAD_MULTIPLE) * PAD_MULTIPLE, (lab.shape[2] // PAD_MULTIPLE) * PAD_MULTIPLE
        lab = np.ascontiguousarray(lab[:, :h, :w])
        edges = find_edges(lab, offset=offset)
        crops_with_edges += len(edges) > 0
        true_rgb = lab_to_rgb8(lab[0], lab[1:])
        true_bins = quantize.nearest_bin(torch.from_numpy(lab[None, 1:]), centres)[0].numpy()
        gray.add(np.hypot(lab[1], lab[2]), true_bins, lab_to_rgb8(lab[0], np.zeros_like(lab[1:])), true_rgb)
        truth_colour.append(colourfulness(true_rgb))
        sample = Sample(i, lab, edges) if i in samples else None
        predictions = oracles(lab)
        for predict in found:
            predictions.update(predict(lab[0]))
        for label, ab in predictions.items():
            scores[label].add(ab_error(ab, lab[1:]), true_bins, lab_to_rgb8(lab[0], ab), true_rgb)
            mask = bleed[label].add(edges, ab) if len(edges) else np.zeros(0, bool)
            if sample is not None:
                sample.ab[label], sample.bleed[label] = ab, mask
        if sample is not None:
            kept.append(sample)
        if done % 10 == 0:
            log.info("%d / %d crops, %.1f s per crop", done, count, (time.perf_counter() - start) / done)
    metrics = {
        "images": done,
        "split_images": len(images),
        "seconds_per_crop": (time.perf_counter() - start) / max(done, 1),
        "crops_with_edges": crops_with_edges,
        "size": size,
        "offset": offset,
        "thresholds": {
            "min_gradient": MIN_GRADIENT,
            "min_step": MIN_STEP,
            "min_chroma": MIN_CHROMA,
            "min_hue_turn": MIN_HUE_TURN,
            "visible_l_step": VISIBLE_L_STEP,
        },
        "gray": gray.summary(),
        "truth": {"colourfulness": float(np.mean(truth_colour))},
        "models": {
            label: {"checkpoint": checkpoint, **bleed[label].summary(), **scores[label].summary()}
            for label, checkpoint in labels.items()
        },
    }
    return metrics, kept


def _keeps_colour(m: dict, base: dict) -> bool:
    """Leaking less by painting less is no gain: colourfulness kept and no more edges washed out."""
    return (
        m["colourfulness"] >= COLOURFULNESS_KEEP * base["colourfulness"]
        and m["washed_out"] <= base["washed_out"]
    )


def _alternatives(models: dict[str, dict], default: str) -> list[str]:
    return [label for label in models if label.startswith("Larsson16") and label != default]


def recommend(models: dict[str, dict], default: str = LARSSON_DEFAULT) -> str | None:
    """The Larsson16 decoding that clearly leaks less than `default` at no cost elsewhere, or None.

    "Clearly less": a bleed rate at least `MIN_PASS_BLEED_DROP` lower (relative). "No cost": PSNR,
    AuC and rebalanced AuC within the slacks, and the colour kept (`_keeps_colour`). Of those passing,
    the lowest bleed rate.
    """
    base = models[default]
    passing = [
        label
        for label in _alternatives(models, default)
        if (m := models[label])["bleed"] <= (1 - MIN_PASS_BLEED_DROP) * base["bleed"]
        and m["psnr"] >= base["psnr"] - PSNR_SLACK_DB
        and m["auc"] >= base["auc"] - AUC_SLACK
        and m["auc_rebal"] >= base["auc_rebal"] - AUC_SLACK
        and _keeps_colour(m, base)
    ]  # fmt: skip
    return min(passing, key=lambda label: models[label]["bleed"]) if passing else None


def best_alternative(models: dict[str, dict], default: str = LARSSON_DEFAULT) -> str:
    """The decoding the figure sets beside the default: the recommended one, else the least-bleeding one
    that keeps the colour if it bleeds less than the default, else the least-bleeding one outright
    (which then shows what leaking less costs)."""
    recommended = recommend(models, default)
    if recommended:
        return recommended
    alternatives = _alternatives(models, default)
    keeping = [label for label in alternatives if _keeps_colour(models[label], models[default])]
    best_keeping = min(keeping, key=lambda label: models[label]["bleed"], default=None)
    if best_keeping and models[best_keeping]["bleed"] < models[default]["bleed"]:
        return best_keeping
    return min(alternatives, key=lambda label: models[label]["bleed"])


def _marked(rgb: NDArray[np.uint8], points: NDArray[np.intp], colour: tuple[int, int, int]) -> Image.Image:
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for row, col in points:
        draw.point((int(col), int(row)), fill=colour)
    return image


def figure(samples: list[Sample], columns: list[str], cell: int = 256) -> Image.Image:
    """Rows of: truth with its colour edges (yellow) | each column's prediction, bleeding edges in magenta."""
    sheet = Image.new("RGB", (cell * (1 + len(columns)), cell * len(samples)), "white")
    for r, sample in enumerate(samples):
        lightness = sample.lab[0]
        tiles = [_marked(lab_to_rgb8(lightness, sample.lab[1:]), sample.edges.points, (255, 255, 0))]
        for label in columns:
            rgb = lab_to_rgb8(lightness, sample.ab[label])
            tiles.append(_marked(rgb, sample.edges.points[sample.bleed[label]], (255, 0, 255)))
        for c, tile in enumerate(tiles):
            sheet.paste(tile.resize((cell, cell), Image.Resampling.NEAREST), (c * cell, r * cell))
    return sheet


def _where_coloured(m: dict) -> str:
    """Bleed among the edges not washed out: how often colour put at an edge is the other side's hue."""
    painted = 1 - m["washed_out"]
    return f"{m['bleed'] / painted:.0%}" if painted > 0 else "–"


def markdown(metrics: dict, manifest: str, recommended: str | None, shown: str, figure_name: str,
             sources: list[str]) -> str:  # fmt: skip
    """bleed.md: the table of the model card's section, and what was shown."""
    t = metrics["thresholds"]
    lines = [
        f"Validation split, {metrics['images']} of its {metrics['split_images']} images (the redistributable "
        f"ones first, then in split order; {metrics['crops_with_edges']} with colour edges), centre "
        f"{metrics['size']}² crops, manifest sha256 `{manifest[:16]}…`; sides sampled {metrics['offset']} px "
        f"along the normal; edges ≥ {t['min_gradient']:g} Lab/px with the true sides > {t['min_step']:g} ab "
        f"apart and ≥ {t['min_hue_turn']:g}° apart in hue (or one side gray); gray below chroma "
        f"{t['min_chroma']:g}.",
        "",
        "| model / decoding (hue / chroma) | edges | bleed ↓ | bleed where coloured | bleed, nearest-colour "
        "rule | washed out "
        f"| bleed at ΔL ≥ {t['visible_l_step']:g} | ab error at sides ↓ | contrast pred/true | ab L2 ↓ "
        "| AuC ↑ | AuC rebal ↑ | PSNR dB ↑ | colourfulness |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in metrics["models"].items():
        name = label + (" (default)" if label == LARSSON_DEFAULT else "")
        name += " (recommended)" if label == recommended else ""
        lines.append(
            f"| {name} | {m['edges']} | {m['bleed']:.1%} | {_where_coloured(m)} | {m['bleed_nearest']:.1%} "
            f"| {m['washed_out']:.1%} "
            f"| {m['bleed_visible']:.1%} | {m['side_ab_error']:.1f} | {m['contrast_ratio']:.2f} "
            f"| {m['ab_l2']:.2f} | {m['auc']:.3f} | {m['auc_rebal']:.3f} | {m['psnr']:.2f} "
            f"| {m['colourfulness']:.1f} |"
        )
    g = metrics["gray"]
    lines.append(
        f"| gray (ab = 0) | | 0 % | – | 0 % | | | | 0 | {g['ab_l2']:.2f} | {g['auc']:.3f} "
        f"| {g['auc_rebal']:.3f} | {g['psnr']:.2f} | {g['colourfulness']:.1f} |"
    )
    lines.append(f"| ground truth | | 0 % | 0 % | 0 % | 0 % | 0 % | 0 | 1 | 0 | 1 | 1 | ∞ "
                 f"| {metrics['truth']['colourfulness']:.1f} |")  # fmt: skip
    verdict = (
        f"Recommended: **{recommended}** leaks clearly less than the default at no cost in the other metrics."
        if recommended
        else "No decoding leaks clearly less (≥ 20 % lower bleed) at no cost in PSNR, AuC, colourfulness "
        "and washed-out rate; beside the default, the figure shows the decoding that bleeds least."
    )
    lines += ["", verdict, "", f"![truth with its colour edges | {LARSSON_DEFAULT} | {shown}]({figure_name})",
              "", f"Columns: truth with its colour edges (yellow) | {LARSSON_DEFAULT} | {shown}; "
              "magenta: edges where the prediction bleeds.", ""]  # fmt: skip
    if sources:
        lines += [
            "Photos (validation photos with a redistributable licence):",
            *[f"- {s}" for s in sources],
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m colorizers.evaluate_bleed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="larsson16", help="the model whose decodings are compared")
    parser.add_argument(
        "--checkpoint", default="",
        help="a registered candidate to evaluate instead of the shipped one, beside the shipped default "
        "decoding; writes <checkpoint>_bleed.* instead of bleed.*",
    )  # fmt: skip
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument("--size", type=int, default=256, help="centre crop size")
    parser.add_argument("--offset", type=int, default=OFFSET, help="pixels from the edge to each side sample")
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--minutes", type=float, default=0.0, help="start no crop after this (0: no limit)")
    parser.add_argument("--figure-rows", type=int, default=3, help="crops in the figure")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    labels, found = predictors(args.model, args.checkpoint)
    # Figures are committed, so they show only the validation photos that may be redistributed.
    shareable = {i: f"`{member}` ({licence})" for i, member, licence in redistributable(args.cache, "val")}
    metrics, samples = evaluate(labels, found, LabImages(args.cache, "val"), size=args.size,
                                offset=args.offset, max_images=args.max_images,
                                samples=tuple(shareable), minutes=args.minutes)  # fmt: skip
    models = metrics["models"]
    recommended = recommend(models)
    shown = best_alternative(models)
    metrics.update(data_manifest_sha256=manifest_sha256(args.cache), default=LARSSON_DEFAULT,
                   recommended=recommended, shown=shown)  # fmt: skip
    # The crops where the default bleeds most: the failure, and what the other decoding does there.
    worst = sorted(samples, key=lambda s: -int(s.bleed[LARSSON_DEFAULT].sum()))[: args.figure_rows]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.checkpoint}_bleed" if args.checkpoint else "bleed"
    figure_name = f"{stem}.png"
    if worst:
        figure(worst, [LARSSON_DEFAULT, shown]).save(args.out / figure_name, optimize=True)
    (args.out / f"{stem}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = markdown(metrics, metrics["data_manifest_sha256"], recommended, shown, figure_name,
                    [shareable[s.index] for s in worst])  # fmt: skip
    (args.out / f"{stem}.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
