from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from colorizers import calibrate, evaluate, quantize, weights
from colorizers.dataset import LabImages, manifest_sha256
from colorizers.eccv16 import ECCVGenerator
from colorizers.run_state import save_shipped


def _prior(seed: int = 0) -> np.ndarray:
    """A skewed 313-bin prior with a few unseen bins, like a photo collection's."""
    rng = np.random.default_rng(seed)
    prior = rng.gamma(0.3, size=313)
    prior[rng.choice(313, 20, replace=False)] = 0.0
    return prior / prior.sum()


def test_weighted_cross_entropy_learns_the_posterior_tilted_by_w_and_the_shift_undoes_it() -> None:
    # The module's premise, checked by gradient descent rather than by its algebra: free logits fitted
    # to a posterior P under the rebalanced loss sum_q P(q) w(q) (-log p(q)) end at p ∝ w·P, and adding
    # logit_shift(α = 1) brings them back to P.
    lam = 0.5
    prior = _prior()
    w = quantize.rebalance_weights(prior, lam)
    posterior = np.random.default_rng(1).dirichlet(np.full(313, 0.5))
    target = torch.from_numpy(posterior * w)
    logits = torch.zeros(313, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -(target * torch.log_softmax(logits, 0)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    learned = torch.softmax(logits.detach(), 0).numpy()
    tilted = posterior * w / (posterior * w).sum()
    np.testing.assert_allclose(learned, tilted, atol=1e-5)  # a wrong tilt is off by ~1e-3
    undone = torch.softmax(logits.detach() + torch.from_numpy(calibrate.logit_shift(prior, lam, 1.0)), 0)
    np.testing.assert_allclose(undone.numpy(), posterior, atol=1e-5)


def test_shifted_model_tilts_each_pixel_by_w_to_the_minus_alpha() -> None:
    torch.manual_seed(0)
    prior, lam, alpha = _prior(2), 0.75, 0.4
    model = ECCVGenerator(width=0.25).eval()
    lightness = torch.rand(1, 1, 64, 64) * 100
    with torch.no_grad():
        before = torch.softmax(model.logits(lightness), 1).double().numpy()
        model = calibrate.shifted(model, calibrate.logit_shift(prior, lam, alpha))
        after = torch.softmax(model.logits(lightness), 1)
    expected = before * quantize.rebalance_weights(prior, lam)[None, :, None, None] ** -alpha
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(after.double().numpy(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_zero_to_one_is_refused_with_its_value(alpha: float) -> None:
    with pytest.raises(ValueError, match=str(alpha)):
        calibrate.logit_shift(_prior(), 0.5, alpha)


@pytest.fixture
def registered_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A trained-looking ECCV16 entry whose file and data cache live in tmp_path (registry patched)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.tsv").write_text("path\tlicence\nimg00.png\tCC0\n")
    np.save(cache / "prior.npy", _prior(3))
    checkpoints = tmp_path / "checkpoints"
    torch.manual_seed(1)
    digest = save_shipped(ECCVGenerator(width=0.25), checkpoints / "base.pth")
    entry = weights.Checkpoint(
        name="base", arch="eccv16", width=0.25, trained=True, description="test base", sha256=digest,
        filename="base.pth", meta={"lambda": "0.75", "temperature": "0.6",
                                   "data_manifest_sha256": manifest_sha256(cache)},
    )  # fmt: skip
    monkeypatch.setattr(weights, "CHECKPOINTS_DIR", checkpoints)
    monkeypatch.setitem(weights.REGISTRY, "base", entry)
    return "base", cache


def test_derived_checkpoint_differs_from_its_base_only_in_the_logits_bias(
    registered_base: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, cache = registered_base
    out = tmp_path / "checkpoints"
    assert calibrate.main(["--checkpoint", base, "--alpha", "0.5", "--name", "derived", "--cache", str(cache),
                           "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    for field in ("name='derived'", "'rebalancing_undone': '0.5'", "'init_from': 'base'"):
        assert field in printed
    old = torch.load(out / "base.pth", weights_only=True)
    new = torch.load(out / "derived.pth", weights_only=True)
    changed = [k for k in old if not torch.equal(old[k], new[k])]
    assert changed == ["model8.6.bias"]
    shift = calibrate.logit_shift(np.load(cache / "prior.npy"), 0.75, 0.5)
    np.testing.assert_allclose((new[changed[0]].float() - old[changed[0]].float()).numpy(), shift, atol=0.02)


def test_a_cache_other_than_the_training_data_is_refused(
    registered_base: tuple[str, Path], tmp_path: Path
) -> None:
    base, cache = registered_base
    (cache / "manifest.tsv").write_text("path\tlicence\nother.png\tCC0\n")
    with pytest.raises(ValueError, match="manifest"):
        calibrate.calibrate(base, 0.5, "derived", cache, tmp_path / "out")


def test_only_a_trained_eccv16_checkpoint_can_be_derived(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("eccv16-w0.25-random")):
        calibrate.calibrate("eccv16-w0.25-random", 0.5, "x", tmp_path, tmp_path)


def test_sweep_row_is_the_evaluation_of_the_derived_checkpoint(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two paths to one number: the sweep adds the shift to the logits; `calibrate` writes it into the
    # bias of a checkpoint that `evaluate` then scores as it would any other.
    torch.manual_seed(4)
    digest = save_shipped(ECCVGenerator(width=0.25), tmp_path / "base.pth")
    entry = weights.Checkpoint(
        name="base", arch="eccv16", width=0.25, trained=True, description="test base", sha256=digest,
        filename="base.pth", meta={"lambda": "0.5", "data_manifest_sha256": manifest_sha256(tiny_cache)},
    )  # fmt: skip
    monkeypatch.setattr(weights, "CHECKPOINTS_DIR", tmp_path)
    monkeypatch.setitem(weights.REGISTRY, "base", entry)
    result = calibrate.sweep("base", [0.0, 0.5], [0.6], tiny_cache, size=64)
    calibrate.calibrate("base", 0.5, "derived", tiny_cache, tmp_path)
    derived, _ = evaluate.load_model(str(tmp_path / "derived.pth"))
    reference, _ = evaluate.evaluate(derived, LabImages(tiny_cache, "val"), size=64, temperatures=(0.6,))
    row = next(r for r in result["rows"] if r["alpha"] == 0.5)
    for key in ("ab_l2", "auc_rebal", "psnr", "colourfulness", "share_psnr_at_least_gray"):
        assert row[key] == pytest.approx(reference["temperatures"]["0.6"][key], rel=1e-3), key
    plain = next(r for r in result["rows"] if r["alpha"] == 0.0)
    assert row["ab_l2"] != plain["ab_l2"]  # the shift reached the decode
    table = calibrate.sweep_markdown(result)
    assert "| α \\ T | 0.6 |" in table and table.count("\n| ") == 3  # header row + one row per α
