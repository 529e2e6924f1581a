from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from colorizers import quantize, train, weights
from colorizers.eccv16 import ECCVGenerator
from colorizers.evaluate import load_model


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


def test_one_step_decreases_the_loss_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = ECCVGenerator(width=0.125)
    centres, bin_weights = _weights()
    batch = train.make_batch(_lab_batch(), centres, bin_weights)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before, _ = train.train_step(model, optimizer, batch)
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
    digest = train.save_shipped(model, path)
    assert path.stat().st_size <= train.SHIP_LIMIT_BYTES  # width 1/4 ships in the repository
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

    def interrupted(*args: object) -> tuple[float, float]:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if stopped during step 3; last.pt holds step 2
        return real_step(*args)  # type: ignore[arg-type]

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
    assert np.isclose(train._lr(1.0, 0.0), 1.0) and np.isclose(train._lr(1.0, 1.0), 0.1)
