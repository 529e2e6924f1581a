from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from colorizers import harness, train, train_larsson
from colorizers.dataset import LabImages
from colorizers.eccv16 import ECCVGenerator
from colorizers.larsson16 import LarssonColorizer
from colorizers.run_state import RunState

# The keys of `<run-dir>/last.pt` as the trainers wrote them before the harness (run_state.Resumable):
# history, numpy RNG state and args as JSON strings. A run started then must resume now.
OLD_LAYOUT = {"model", "optimizer", "step", "elapsed", "history", "numpy_rng", "torch_rng", "args"}


def test_cosine_lr_runs_from_base_to_a_tenth() -> None:
    assert np.isclose(harness.cosine_lr(1.0, 0.0), 1.0) and np.isclose(harness.cosine_lr(1.0, 1.0), 0.1)
    assert np.isclose(harness.cosine_lr(1.0, 0.5), 0.55) and harness.cosine_lr(1.0, 2.0) == 0.1


def test_precision_auto_is_bf16_exactly_where_the_cpu_runs_it_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(harness, "native_bf16", lambda: (True, "AMX"))
    assert harness.resolve_bf16("auto", cpu) and harness.resolve_bf16("bf16", cpu)
    assert not harness.resolve_bf16("fp32", cpu) and not harness.resolve_bf16("auto", cuda)
    monkeypatch.setattr(harness, "native_bf16", lambda: (False, "this CPU has neither avx512_bf16 nor AMX"))
    assert not harness.resolve_bf16("auto", cpu)
    with pytest.raises(ValueError, match="needs native bf16 on the CPU, but this CPU has neither"):
        harness.resolve_bf16("bf16", cpu)
    with pytest.raises(ValueError, match="'fp16'"):
        harness.resolve_bf16("fp16", cpu)


def test_mixed_precision_runs_convolutions_in_bf16_only_when_on() -> None:
    conv, x = torch.nn.Conv2d(2, 3, 3), torch.rand(1, 2, 8, 8)
    with harness.mixed_precision(True, x.device):
        assert conv(x).dtype == torch.bfloat16
    with harness.mixed_precision(False, x.device):
        assert conv(x).dtype == torch.float32


def test_both_trainers_keep_their_flags_and_defaults() -> None:
    paths = ("cache", "run_dir", "out")
    eccv = {k: v for k, v in vars(train.parse_args([])).items() if k not in paths}
    assert eccv == {
        "model": "eccv16", "width": 0.25, "minutes": 90.0, "max_steps": 0, "crop": 128, "batch": 16,
        "lambda_rebal": 0.5, "init_from": "", "ship_only": False, "lr": 0.0003, "weight_decay": 0.001,
        "locality_weight": 0.0, "classification_fraction": 0.3, "seed": 0, "threads": 2, "device": "cpu",
        "precision": "auto", "name": "eccv16-w0.25-l0.5",
        "val_images": 64, "val_every": 5.0, "save_every": 5.0, "fresh": False,
        "val_steps": 0, "val_crop": 0, "first_crop": 0, "first_crop_fraction": 0.5, "augment": "flip",
    }  # fmt: skip
    larsson = {k: v for k, v in vars(train_larsson.parse_args([])).items() if k not in paths}
    assert larsson == {
        "width": 0.125, "minutes": 90.0, "max_steps": 0, "crop": 128, "batch": 16, "init_from": "",
        "lr": 0.0001, "weight_decay": 0.0, "dropout": 0.5, "seed": 0, "threads": 2, "device": "cpu",
        "precision": "auto", "name": "larsson16-w0.125",
        "val_images": 64, "val_every": 5.0, "save_every": 5.0, "fresh": False,
        "val_steps": 0, "val_crop": 0, "first_crop": 0, "first_crop_fraction": 0.5, "augment": "flip",
    }  # fmt: skip
    # the order of the flags is the order of `vars(args)`, which last.pt records under "args"
    assert list(vars(train_larsson.parse_args([])))[:6] == [
        "width",
        "minutes",
        "max_steps",
        "crop",
        "batch",
        "init_from",
    ]


def _write_old_layout(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """A last.pt at step 5 (30 s trained) in the old layout, after one real optimiser step; the first
    trainable weight set to 0.125 to be recognised. Returns that weight's name."""
    name, first = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    loss = torch.stack([p.pow(2).mean() for p in model.parameters() if p.requires_grad]).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        first.fill_(0.125)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 5,
        "elapsed": 30.0,
        "history": json.dumps([{"step": 5, "minutes": 0.5, "loss": 1.0, "img_per_s": 1.0}]),
        "numpy_rng": json.dumps(np.random.default_rng(123).bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "args": json.dumps({"name": "old"}),
    }
    assert state.keys() == OLD_LAYOUT
    run_dir.mkdir(parents=True)
    torch.save(state, run_dir / "last.pt")
    return name


def _eccv16(tmp_path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[list[str]], Path]]:
    model = ECCVGenerator(width=0.125)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-4, betas=(0.9, 0.99), weight_decay=1e-3)
    return model, optimizer, lambda argv: train.train(train.parse_args(argv))


def _larsson16(tmp_path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[list[str]], Path]]:
    model = LarssonColorizer(width=0.125)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, optimizer, lambda argv: train_larsson.train(train_larsson.parse_args(argv))


@pytest.mark.parametrize("trainer", [_eccv16, _larsson16])
def test_a_last_pt_of_the_old_layout_resumes(
    trainer: Callable[[Path], tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[list[str]], Path]]],
    tiny_cache: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model, optimizer, run = trainer(tmp_path)
    weight = _write_old_layout(tmp_path / "run", model, optimizer)
    caplog.set_level(logging.INFO, logger="colorizers")
    shipped = run(
        ["--width", "0.125", "--crop", "32", "--batch", "2", "--max-steps", "6", "--minutes", "100000",
         "--lr", "1e-12", "--cache", str(tiny_cache), "--run-dir", str(tmp_path / "run"),
         "--out", str(tmp_path / "out"), "--threads", "1", "--val-images", "2"]
    )  # fmt: skip
    assert " at step 5 (0.5 min trained)" in caplog.text
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state.keys() == OLD_LAYOUT  # and it still writes that layout
    assert state["step"] == 6 and state["elapsed"] > 30.0
    history = json.loads(state["history"])
    assert history[0] == {"step": 5, "minutes": 0.5, "loss": 1.0, "img_per_s": 1.0}
    assert [h["step"] for h in history] == [5, 6]
    # The numpy generator went on from the saved state: one batch of crops drawn since.
    rng = np.random.default_rng(123)
    LabImages(tiny_cache, "train").batch(rng, 32, 2)
    assert json.loads(state["numpy_rng"]) == rng.bit_generator.state
    # The model and the optimiser went on from theirs (lr ~ 0: the marked weight is unchanged).
    assert float(state["optimizer"]["state"][0]["step"]) == 2
    marked = torch.load(shipped, weights_only=True)[weight]
    assert torch.equal(marked, torch.full_like(marked, 0.125))


class _Fake(harness.Recipe):
    """A 1x1 convolution; every other draw of crops is refused; losses from `losses` once set."""

    def __init__(self, args: argparse.Namespace, device: torch.device, rng: np.random.Generator) -> None:
        self.model = torch.nn.Conv2d(1, 1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr)
        self.draws, self.losses = 0, [0.5, 1.5]

    def prepare(self, run: RunState, val_lab: torch.Tensor) -> None:
        self.val = val_lab[:, :1] / 100

    def validate(self) -> dict[str, float]:
        return {"val": 0.25}

    def summary(self) -> str:
        return "fake recipe"

    def step(self, crops: torch.Tensor, run: RunState, fraction: float) -> Sequence[float] | None:
        self.draws += 1
        if self.draws % 2:
            return None
        return self.losses

    def progress(self, running: np.ndarray) -> str:
        return f"loss {running[0]:.3f}"

    def record(self, running: np.ndarray, rate: float) -> dict[str, Any]:
        return {"loss": float(running[0]), "other": float(running[1])}

    def registry_entry(self, sha256: str, filename: str, common: dict[str, str]) -> str:
        return harness.registry_source(name="fake", arch_source='"fake"', width=1.0, description="d",
                                       sha256=sha256, filename=filename, meta=common)  # fmt: skip


def _fake_args(cache: Path, tmp_path: Path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    harness.add_common_arguments(
        p, width=1.0, crop_help="", name_help="", model_arguments=lambda p: p.add_argument("--lr", type=float)
    )
    args = p.parse_args(
        ["--crop", "32", "--batch", "2", "--lr", "0.1", "--cache", str(cache), "--name", "fake",
         "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--threads", "1", *extra]
    )  # fmt: skip
    return args


def test_the_loop_counts_only_steps_taken_validates_saves_and_ships(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made: list[_Fake] = []

    def build(args: argparse.Namespace, device: torch.device, rng: np.random.Generator) -> _Fake:
        made.append(_Fake(args, device, rng))
        return made[-1]

    args = _fake_args(tiny_cache, tmp_path, "--max-steps", "3", "--val-every", "0", "--save-every", "1000")
    path = harness.run(args, build, log_file=tmp_path / "run" / "train.log")
    assert made[0].draws == 6 and path == tmp_path / "out" / "fake.pth" and path.is_file()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    history = json.loads(state["history"])
    assert state["step"] == 3 and [h["step"] for h in history] == [1, 2, 3]
    assert list(history[0]) == ["step", "minutes", "loss", "other", "val"]
    assert history[0]["loss"] == 0.5 and history[0]["other"] == 1.5  # the first step's losses, not averaged
    assert math.isclose(history[1]["loss"], 0.5) and history[1]["val"] == 0.25
    log = (tmp_path / "run" / "train.log").read_text()
    assert "training fake: fake recipe, " in log and '"val": 0.25' in log
    entry = (tmp_path / "run" / "registry_entry.txt").read_text()
    assert "meta={'crop': '32', 'batch': '2', 'steps': '3', 'minutes': " in entry
    assert entry.index("'lr': '0.1', 'seed': '0', 'data_manifest_sha256': ") > 0
    assert f"registry entry for colorizers/weights.py:\n{entry}\n" in capsys.readouterr().out


def test_a_non_finite_loss_stops_the_run(tiny_cache: Path, tmp_path: Path) -> None:
    def build(args: argparse.Namespace, device: torch.device, rng: np.random.Generator) -> _Fake:
        fake = _Fake(args, device, rng)
        fake.losses = [math.nan, 1.0]
        return fake

    with pytest.raises(RuntimeError, match=r"loss became nan at step 0; lower --lr"):
        harness.run(_fake_args(tiny_cache, tmp_path, "--max-steps", "3"), build)


def test_low_resolution_first_validation_by_steps_and_the_history_file(
    tiny_cache: Path, tmp_path: Path
) -> None:
    """--first-crop for the first --first-crop-fraction of the steps, then --crop; --val-steps validates
    every N steps (and at the end) on --val-crop crops; history.json holds what last.pt holds."""
    made: list[_Fake] = []
    sizes: list[int] = []

    class Sized(_Fake):
        def step(self, crops: torch.Tensor, run: RunState, fraction: float) -> Sequence[float] | None:
            sizes.append(crops.shape[-1])
            return self.losses

    def build(args: argparse.Namespace, device: torch.device, rng: np.random.Generator) -> _Fake:
        made.append(Sized(args, device, rng))
        return made[-1]

    args = _fake_args(
        tiny_cache, tmp_path, "--max-steps", "8", "--minutes", "1e9", "--first-crop", "48",
        "--first-crop-fraction", "0.25", "--val-steps", "3", "--val-crop", "40", "--save-every", "1000",
    )  # fmt: skip
    harness.run(args, build)
    assert sizes == [48, 48, 32, 32, 32, 32, 32, 32]  # fraction = step / 8 < 0.25 for steps 0 and 1
    assert made[0].val.shape[-1] == 40
    written = json.loads((tmp_path / "run" / "history.json").read_text())
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert [h["step"] for h in written] == [3, 6, 8] and written == json.loads(state["history"])


@pytest.mark.parametrize(
    ("parse", "flag", "message"),
    [
        (train.parse_args, "--first-crop", "--first-crop must be a multiple of 8 and at least 32, got 20"),
        (train.parse_args, "--val-crop", "--val-crop must be a multiple of 8 and at least 32, got 20"),
        (train_larsson.parse_args, "--first-crop", "--first-crop must be a positive multiple of 32, got 20"),
        (train_larsson.parse_args, "--val-crop", "--val-crop must be a positive multiple of 32, got 20"),
    ],
)
def test_the_other_crop_sizes_are_checked_like_the_crop(
    parse: Callable[[list[str]], argparse.Namespace],
    flag: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse([flag, "20"])
    assert message in capsys.readouterr().err
    assert getattr(parse([]), flag[2:].replace("-", "_")) == 0  # 0: off / the training crop
