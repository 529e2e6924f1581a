"""colorizers.tune_spread.score on synthetic photos whose truth is known: a network that colours only
the hinted pixels, on two-colour photos split by an edge in lightness."""

from __future__ import annotations

import numpy as np
import torch

from colorizers import tune_spread


def _two_objects(size: int = 128) -> np.ndarray:
    """Left half dark red, right half light blue: one colour edge with a step in L."""
    lab = np.empty((3, size, size), np.float32)
    lab[0, :, : size // 2], lab[0, :, size // 2 :] = 35.0, 75.0
    lab[1, :, : size // 2], lab[2, :, : size // 2] = 50.0, 30.0
    lab[1, :, size // 2 :], lab[2, :, size // 2 :] = -10.0, -40.0
    return lab


def _only_the_hints(lightness: torch.Tensor, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hint * mask


def test_the_spread_gains_over_the_network_and_a_strong_beta_bleeds_less() -> None:
    images = [_two_objects(), _two_objects()[:, :, ::-1].copy()]
    rows = tune_spread.score(_only_the_hints, images, [(0.25, 0.25, 0.0, 0.05), (0.25, 0.25, 16.0, 0.05)])
    network, blind, edge_aware = (
        rows[tune_spread.NETWORK],
        rows["(0.25, 0.25, 0.0, 0.05)"],
        rows["(0.25, 0.25, 16.0, 0.05)"],
    )
    assert blind["gain_db"] > network["gain_db"] + 1 and edge_aware["gain_db"] > network["gain_db"] + 2
    # Without β the hints' colours flow over the edge; with it they stop there.
    assert edge_aware["bleed"] < blind["bleed"]
    assert edge_aware["gain_db"] > blind["gain_db"]
    assert network["washed_out"] > edge_aware["washed_out"]


def test_the_halo_counts_only_what_reaches_beyond_64_px_of_every_hint() -> None:
    """On 256² photos: R = S/4 (64 px) cannot change anything beyond 64 px, so its halo is the network's
    own, exactly; R = S/2 reaches there along the flat halves and moves the colour."""
    images = [_two_objects(256), _two_objects(256)[:, :, ::-1].copy()]
    rows = tune_spread.score(_only_the_hints, images, [(0.25, 0.25, 8.0, 0.02), (0.5, 0.25, 8.0, 0.02)])
    network, quarter = rows[tune_spread.NETWORK], rows["(0.25, 0.25, 8.0, 0.02)"]
    half = rows["(0.5, 0.25, 8.0, 0.02)"]
    assert network["halo"] == 0.0  # the stand-in network colours only the hinted pixels
    assert quarter["halo"] == 0.0
    assert half["halo"] > 1.0 and half["gain_db"] > quarter["gain_db"]


def test_the_markdown_table_lists_every_setting_best_first() -> None:
    rows = {
        tune_spread.NETWORK: {"gain_db": 1.0, "halo": 2.0, "bleed": 0.5, "washed_out": 0.2,
                              "side_ab_error": 9.0, "contrast_ratio": 0.3},
        "(0.25, 0.25, 4.0, 0.05)": {"gain_db": 2.0, "halo": 2.5, "bleed": 0.4, "washed_out": 0.1,
                                    "side_ab_error": 8.0, "contrast_ratio": 0.3},
    }  # fmt: skip
    table = tune_spread.markdown(rows, 2, "train", "ckpt").splitlines()
    assert table[4].startswith("| (0.25, 0.25, 4.0, 0.05) | +2.00 | 2.50 |")
    assert table[5].startswith("| network alone | +1.00 | 2.00 |")
