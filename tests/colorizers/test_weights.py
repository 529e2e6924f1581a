from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch

from colorizers import weights
from colorizers.eccv16 import ECCVGenerator
from colorizers.larsson16 import LarssonColorizer
from colorizers.siggraph17 import SIGGRAPHGenerator


def test_every_registered_checkpoint_names_its_architecture() -> None:
    networks = {"eccv16": ECCVGenerator, "siggraph17": SIGGRAPHGenerator, "larsson16": LarssonColorizer}
    for checkpoint in weights.REGISTRY.values():
        assert isinstance(checkpoint.build(), networks[checkpoint.arch])
        assert checkpoint.sha256 is not None or checkpoint.seed is not None


def test_siggraph17_mask_convention_comes_from_the_checkpoint() -> None:
    for checkpoint in weights.REGISTRY.values():
        if checkpoint.arch == "siggraph17":
            model = checkpoint.build()
            assert isinstance(model, SIGGRAPHGenerator)
            assert model.mask_offset == float(checkpoint.meta["mask_offset"])


@pytest.mark.parametrize("arch", ["eccv16", "siggraph17", "larsson16"])
def test_untrained_default_is_reported_as_untrained(arch: str) -> None:
    default = weights.REGISTRY[weights.DEFAULT[arch]]
    if default.trained:
        assert default.sha256 is not None and default.filename is not None
    else:
        assert "UNTRAINED" in default.description


def test_seeded_random_init_is_reproducible() -> None:
    checkpoint = weights.REGISTRY["eccv16-w0.25-random"]
    a, b = weights.load(checkpoint), weights.load(checkpoint)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_unregistered_file_is_refused_with_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "mystery.pth"
    torch.save(ECCVGenerator(width=0.125).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=digest):
        weights.identify(path)


def test_registered_file_round_trips_in_fp16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ECCVGenerator(width=0.125).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    entry = weights.Checkpoint(
        name="test-ckpt",
        arch="eccv16",
        width=0.125,
        trained=True,
        description="test",
        sha256=weights.sha256_of(path),
    )
    monkeypatch.setitem(weights.REGISTRY, entry.name, entry)
    checkpoint, loaded = weights.resolve("eccv16", path)
    assert checkpoint is entry
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().to(value.dtype), atol=0, rtol=0)


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"not the registered bytes")
    entry = weights.Checkpoint(
        name="x", arch="eccv16", width=0.125, trained=True, description="x", sha256="0" * 64
    )
    with pytest.raises(ValueError, match="expected 0000"):
        weights.load(entry, path)


def test_retired_checkpoint_names_the_commit_that_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retired = [c for c in weights.REGISTRY.values() if c.retired]
    assert retired, "the registry keeps entries for checkpoints retired from the tree"
    for checkpoint in retired:
        assert checkpoint.filename is not None and checkpoint.sha256 is not None
        assert not (weights.CHECKPOINTS_DIR / checkpoint.filename).exists()
    checkpoint = retired[0]
    with pytest.raises(FileNotFoundError, match=f"git show {checkpoint.retired}:colorizers/checkpoints/"):
        weights.load(checkpoint)
    # Restored under its name (or passed as a file), it loads as before: the sha256 still guards it.
    monkeypatch.setattr(weights, "CHECKPOINTS_DIR", tmp_path)
    stand_in = tmp_path / str(checkpoint.filename)
    stand_in.write_bytes(b"not the checkpoint")
    with pytest.raises(ValueError, match="expected " + str(checkpoint.sha256)):
        weights.load(checkpoint)


@pytest.mark.parametrize("name", sorted(c.name for c in weights.REGISTRY.values() if c.retired))
def test_retired_checkpoint_is_in_the_named_commit(name: str) -> None:
    checkpoint = weights.REGISTRY[name]
    repo = weights.CHECKPOINTS_DIR.parents[1]
    spec = f"{checkpoint.retired}:colorizers/checkpoints/{checkpoint.filename}"
    if subprocess.run(["git", "-C", str(repo), "cat-file", "-e", spec], capture_output=True).returncode:
        pytest.skip(f"{spec} is not in this checkout's history (a shallow clone or no git)")
    blob = subprocess.run(["git", "-C", str(repo), "show", spec], capture_output=True, check=True).stdout
    assert hashlib.sha256(blob).hexdigest() == checkpoint.sha256


def test_identify_names_a_missing_file_and_how_to_restore_a_retired_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint file") as missing:
        weights.identify(tmp_path / "nothing.pth")
    assert "git show" not in str(missing.value)
    retired = next(c for c in weights.REGISTRY.values() if c.retired)
    with pytest.raises(FileNotFoundError, match=f"git show {retired.retired}:colorizers/checkpoints/"):
        weights.identify(tmp_path / str(retired.filename))
