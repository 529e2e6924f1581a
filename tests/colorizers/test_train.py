from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from colorizers import quantize, run_state, train, weights
from colorizers.eccv16 import ECCVGenerator
from colorizers.evaluate import load_model
from colorizers.siggraph17 import SIGGRAPHGenerator


def _lab_batch(count: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lightness = torch.rand(count, 1, size, size, generator=g) * 100
    ab = torch.nn.functional.interpolate(torch.randn(count, 2, 4, 4, generator=g) * 40, size=(size, size))
    return torch.cat([lightness, ab], 1)


def _weights(lam: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.from_numpy(quantize.bin_centres())
    return centres, torch.from_numpy(quantize.rebalance_weights(quantize.authors_prior(), lam)).float()


def test_batch_targets_are_at_quarter_resolution_and_gray_images_weigh_nothing() -> None:
    lab = _lab_batch(3)
    lab[2, 1:] = 0  # a gray image
    centres, bin_weights = _weights()
    batch = train.make_batch(lab, centres, bin_weights)
    assert batch.lightness.shape == (3, 1, 32, 32) and batch.target.shape == (3, 313, 8, 8)
    assert batch.weights.shape == (3, 8, 8)
    assert torch.all(batch.weights[2] == 0) and torch.all(batch.weights[:2] > 0)
    # A colour pixel weighs what its most likely bin (the soft target's argmax) weighs.
    assert torch.equal(batch.weights[:2], bin_weights[batch.target[:2].argmax(1)])
    assert batch.target.is_contiguous()


@pytest.mark.parametrize("bf16", [False, True])
def test_one_step_decreases_the_loss_on_a_tiny_batch(bf16: bool) -> None:
    torch.manual_seed(0)
    model = ECCVGenerator(width=0.125)
    centres, bin_weights = _weights()
    batch = train.make_batch(_lab_batch(), centres, bin_weights)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before, _ = train.train_step(model, optimizer, batch, bf16=bf16)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16: the forward only
    with torch.no_grad():
        model.train()  # same BN mode as the step, so the two losses are comparable
        after, _ = quantize.rebalanced_cross_entropy(
            model.logits(batch.lightness), batch.target, batch.weights
        )
    assert float(after) < before


def test_fp16_checkpoint_round_trips_through_registry_and_evaluate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(1)
    model = ECCVGenerator(width=0.25).eval()
    path = tmp_path / "eccv16-test.pth"
    digest = run_state.save_shipped(model, path)
    assert path.stat().st_size <= run_state.SHIP_LIMIT_BYTES  # width 1/4 ships in the repository
    entry = weights.Checkpoint(
        name="eccv16-test", arch="eccv16", width=0.25, trained=True, description="t", sha256=digest
    )
    monkeypatch.setitem(weights.REGISTRY, entry.name, entry)
    loaded = weights.load(entry, path)
    evaluated, _ = load_model(str(path))
    assert evaluated.width == 0.25
    for key, value in model.state_dict().items():
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], expected)
        assert torch.equal(evaluated.state_dict()[key], expected)
    text = train.registry_entry("eccv16-test", 0.25, digest, path.name, {"lambda": "0.5"})
    assert digest in text and "trained=True" in text


def _run(cache: Path, tmp_path: Path, run: str) -> Path:
    args = train.parse_args(
        ["--width", "0.125", "--crop", "32", "--batch", "2", "--max-steps", "4", "--minutes", "100000",
         "--cache", str(cache), "--run-dir", str(tmp_path / run), "--out", str(tmp_path / run / "out"),
         "--threads", "1", "--val-images", "2", "--save-every", "0", "--name", "tiny"]
    )  # fmt: skip
    return train.train(args)


def test_interrupted_run_resumes_to_the_same_weights(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step, calls = train.train_step, []

    def interrupted(*args: object, **kwargs: bool) -> tuple[float, float]:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if stopped during step 3; last.pt holds step 2
        return real_step(*args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(train, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _run(tiny_cache, tmp_path, "resumed")
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 2
    resumed = _run(tiny_cache, tmp_path, "resumed")
    straight = _run(tiny_cache, tmp_path, "straight")
    a = torch.load(resumed, weights_only=True)
    b = torch.load(straight, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert " at step 2 (" in (tmp_path / "resumed" / "train.log").read_text()
    assert "sha256" in (tmp_path / "resumed" / "registry_entry.txt").read_text()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--crop", "100"])
    with pytest.raises(SystemExit):
        train.parse_args(["--lambda-rebal", "2"])


# SIGGRAPH17


def _hint_batch(hints: bool = True) -> train.HintBatch:
    batch = train.make_hint_batch(_lab_batch(3), np.random.default_rng(0), hints=hints)
    if batch is None:
        raise AssertionError("the synthetic crops are colourful")
    return batch


def test_hint_batch_drops_gray_images_and_targets_the_grid_at_quarter_resolution() -> None:
    lab = _lab_batch(3)
    lab[1, 1:] = 0  # a gray image
    batch = train.make_hint_batch(lab, np.random.default_rng(0), hints=False)
    assert batch is not None and batch.lightness.shape == (2, 1, 32, 32)
    assert batch.target.shape == (2, 8, 8) and batch.target.dtype == torch.int64
    assert torch.all(batch.mask == 0) and torch.all(batch.hint == 0)
    lab[:, 1:] = 0
    assert train.make_hint_batch(lab, np.random.default_rng(0), hints=True) is None


def test_training_forward_is_forward_both_with_detaches() -> None:
    torch.manual_seed(0)
    model = SIGGRAPHGenerator(width=0.125, mask_offset=0.5).eval()
    batch = _hint_batch()
    ab, logits = model.forward_both(batch.lightness, batch.hint, batch.mask)
    with torch.no_grad():
        reg_ab, reg_logits = train.siggraph_forward(model, batch, classification=False)
        cls_ab, cls_logits = train.siggraph_forward(model, batch, classification=True)
    assert reg_ab is not None and torch.allclose(reg_ab, ab) and torch.allclose(reg_logits, logits)
    assert cls_ab is None and torch.allclose(cls_logits, logits)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("classification", [True, False])
def test_one_siggraph_step_decreases_the_loss_on_a_tiny_batch(classification: bool, bf16: bool) -> None:
    torch.manual_seed(0)
    model = SIGGRAPHGenerator(width=0.125, mask_offset=0.5)
    batch = _hint_batch(hints=not classification)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before, _ = train.siggraph_step(model, optimizer, batch, classification=classification, bf16=bf16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        after, _ = train.siggraph_loss(
            *train.siggraph_forward(model, batch, classification=classification), batch
        )
    assert float(after) < before


def _first_eccv16_loss(bf16: bool) -> float:
    torch.manual_seed(0)
    model = ECCVGenerator(width=0.125)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return train.train_step(model, optimizer, train.make_batch(_lab_batch(), *_weights()), bf16=bf16)[0]


def _first_siggraph17_loss(bf16: bool) -> float:
    torch.manual_seed(0)
    model = SIGGRAPHGenerator(width=0.125, mask_offset=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, _ = train.siggraph_step(
        model, optimizer, _hint_batch(), classification=False, locality_weight=1.0, bf16=bf16
    )
    return loss


@pytest.mark.parametrize("first_loss", [_first_eccv16_loss, _first_siggraph17_loss])
def test_a_bf16_step_reports_the_fp32_loss_to_bf16_rounding(first_loss: Callable[[bool], float]) -> None:
    # Same weights, same batch: the loss each step reports is the one before its update, so the bf16
    # forward's differs from fp32's by rounding only, and differs at all only if autocast took effect.
    fp32, bf16 = first_loss(False), first_loss(True)
    assert fp32 != bf16 and abs(bf16 - fp32) < 0.02 * abs(fp32)


def test_regression_loss_is_ce_plus_ten_l1_in_normalised_units() -> None:
    batch = _hint_batch()
    logits = torch.zeros(3, 529, 8, 8)  # uniform: CE = log 529
    loss, ce = train.siggraph_loss(batch.ab + 11.0, logits, batch)
    assert np.isclose(float(ce), np.log(529), atol=1e-5)
    assert np.isclose(float(loss), np.log(529) + 10 * 11 / 110, atol=1e-5)


def test_siggraph_run_ships_a_checkpoint_with_its_mask_convention(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = train.parse_args(
        ["--model", "siggraph17", "--width", "0.125", "--crop", "32", "--batch", "2", "--max-steps", "4",
         "--minutes", "100000", "--cache", str(tiny_cache), "--run-dir", str(tmp_path / "run"),
         "--out", str(tmp_path / "out"), "--threads", "1", "--val-images", "2", "--classification-fraction",
         "0.5"]
    )  # fmt: skip
    assert args.name == "siggraph17-w0.125" and args.weight_decay == 0
    path = train.train(args)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "regression with hints from step 2" in log and "val_l1_hints" in log
    entry = (tmp_path / "run" / "registry_entry.txt").read_text()
    assert 'arch="siggraph17"' in entry and "'mask_offset': '0.5'" in entry
    checkpoint = weights.Checkpoint(
        name="sg-test", arch="siggraph17", width=0.125, trained=True, description="t",
        sha256=weights.sha256_of(path), meta={"mask_offset": "0.5"},
    )  # fmt: skip
    model = weights.load(checkpoint, path)
    assert isinstance(model, SIGGRAPHGenerator) and model.mask_offset == 0.5


def test_eccv16_defaults_are_unchanged() -> None:
    args = train.parse_args([])
    assert args.model == "eccv16" and args.name == "eccv16-w0.25-l0.5" and args.weight_decay == 1e-3


def test_rebalanced_siggraph_loss_weights_each_pixel_by_its_true_bin() -> None:
    centres, bin_weights = _weights(0.5)
    lab = _lab_batch(2)
    batch = train.make_hint_batch(lab, np.random.default_rng(0), hints=False, centres=centres,
                                  bin_weights=bin_weights)  # fmt: skip
    assert batch is not None and batch.weights is not None and batch.weights.shape == (2, 8, 8)
    expected = bin_weights[quantize.nearest_bin(lab[:, 1:, ::4, ::4], centres)]
    assert torch.equal(batch.weights, expected)
    logits = torch.zeros(2, 529, 8, 8)
    loss, ce = train.siggraph_loss(batch.ab + 11.0, logits, batch)
    assert np.isclose(float(ce), np.log(529), atol=1e-5)  # the plain CE, logged
    mean_w = float(batch.weights.mean())
    assert np.isclose(float(loss), mean_w * (np.log(529) + 10 * 11 / 110), rtol=1e-5)
    plain = train.make_hint_batch(lab, np.random.default_rng(0), hints=False)
    assert plain is not None and plain.weights is None


def test_siggraph_defaults_to_no_rebalancing_and_names_a_rebalanced_run() -> None:
    assert train.parse_args(["--model", "siggraph17"]).lambda_rebal == 1
    args = train.parse_args(["--model", "siggraph17", "--lambda-rebal", "0.5"])
    assert args.name == "siggraph17-w0.25-l0.5"


START = "siggraph17-w0.25-l0.75-loc2-b120"  # a shipped SIGGRAPH17 checkpoint in the tree


def test_run_starts_from_a_shipped_checkpoint_resumes_and_ships_only(
    tiny_cache: Path, tmp_path: Path
) -> None:
    common = ["--model", "siggraph17", "--width", "0.25", "--crop", "32", "--batch", "2", "--minutes",
              "100000", "--cache", str(tiny_cache), "--run-dir", str(tmp_path / "run"), "--out",
              str(tmp_path / "out"), "--threads", "1", "--val-images", "2", "--classification-fraction", "0",
              "--lambda-rebal", "0.5", "--init-from", START, "--lr", "1e-12"]  # fmt: skip
    train.train(train.parse_args([*common, "--max-steps", "2"]))
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"starting from the weights of {START}" in log and '"init_from"' in log
    shipped = weights.load(weights.REGISTRY[START]).state_dict()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 2
    key = "model1.0.weight"
    torch.testing.assert_close(state["model"][key], shipped[key], atol=1e-3, rtol=0)  # lr ~ 0: unchanged
    # Resuming continues from step 2 without reloading the shipped weights.
    train.train(train.parse_args([*common, "--max-steps", "3"]))
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("starting from the weights") == 1 and "resumed" in log
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3
    # --ship-only writes last.pt's weights without a step.
    path = train.train(train.parse_args([*common, "--ship-only"]))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3
    entry = (tmp_path / "run" / "registry_entry.txt").read_text()
    assert "'lambda': '0.5'" in entry and f"'init_from': '{START}'" in entry
    assert "'steps': '3'" in entry
    assert path.is_file()


def test_far_from_hints_is_every_pixel_outside_the_square_around_each_hint() -> None:
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 10, 20] = 1
    far = train.far_from_hints(mask, 4)
    near = far[0, 0] == 0
    ys, xs = torch.nonzero(near, as_tuple=True)
    assert (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) == (6, 14, 16, 24)
    # Every Euclidean-near pixel is near here too, so "far" is also far by the evaluation's distance.
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    assert bool(near[((yy - 10) ** 2 + (xx - 20) ** 2) <= 16].all())


def test_far_from_hints_matches_the_chebyshev_distance_to_the_nearest_hint() -> None:
    """Many hints, some on the border, against a brute-force distance: the separable pooling must
    give the same square as one k x k window, also where the squares overlap or are clipped."""
    rng = np.random.default_rng(3)
    mask = torch.from_numpy((rng.random((2, 1, 40, 56)) < 0.01).astype(np.float32))
    mask[0, 0, 0, 55] = mask[1, 0, 39, 0] = 1
    yy, xx = np.mgrid[:40, :56]
    for radius in (1, 3, 12):
        far = train.far_from_hints(mask, radius).numpy()
        for n in range(2):
            ys, xs = np.nonzero(mask[n, 0].numpy())
            distance = np.min(np.maximum(abs(yy[..., None] - ys), abs(xx[..., None] - xs)), axis=-1)
            np.testing.assert_array_equal(far[n, 0], (distance > radius).astype(np.float32))


def test_locality_loss_measures_how_far_the_hints_move_distant_pixels() -> None:
    torch.manual_seed(0)
    model = SIGGRAPHGenerator(width=0.125, mask_offset=0.5).eval()
    batch = _hint_batch()
    with torch.no_grad():
        plain, _ = model.forward_both(
            batch.lightness, torch.zeros_like(batch.hint), torch.zeros_like(batch.mask)
        )
        assert float(train.locality_loss(model, plain, batch)) == 0.0  # hints that change nothing
        moved = plain + torch.tensor([3.0, -4.0]).view(1, 2, 1, 1)  # every pixel moved by 5 ab, |a|+|b| = 7
        assert float(batch.mask.sum()) > 0 and float(train.far_from_hints(batch.mask, 8).sum()) > 0
        assert np.isclose(float(train.locality_loss(model, moved, batch)), 7 / 2 / 110, rtol=1e-5)


def test_the_locality_weight_is_recorded_and_checked() -> None:
    args = train.parse_args(["--model", "siggraph17", "--locality-weight", "10"])
    assert args.locality_weight == 10
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "siggraph17", "--locality-weight", "-1"])


def test_the_no_hint_pass_of_the_locality_term_gets_the_gradient_too() -> None:
    # A detached no-hint target ran away in training (module docstring): the term must pull both ways.
    torch.manual_seed(0)
    model = SIGGRAPHGenerator(width=0.125, mask_offset=0.5).train()
    batch = _hint_batch()
    fixed = torch.zeros_like(batch.ab)  # a hinted output without gradient: only the no-hint pass can move
    train.locality_loss(model, fixed, batch).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
