"""Resuming a training run and shipping its weights: the state `colorizers.harness`'s loop keeps.

`<run-dir>/last.pt` holds everything an interrupted run needs to continue as if it had not stopped:
model, optimiser, step, training time, the validation history and both RNG states. It is written to
a temporary file and renamed, so a kill during the write leaves the previous one intact.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from colorizers.weights import sha256_of

log = logging.getLogger(__name__)

SHIP_LIMIT_BYTES = 10 << 20  # issue #4: shipped checkpoints are at most 10 MB


@dataclass
class RunState:
    step: int = 0
    elapsed: float = 0.0  # seconds spent in training steps, resumes included
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Resumable:
    """The run directory's `last.pt` for this model, optimiser and numpy generator."""

    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    args: dict[str, str] = field(default_factory=dict)  # recorded for the reader, not read back

    @property
    def path(self) -> Path:
        return self.run_dir / "last.pt"

    def load(self, fresh: bool = False) -> RunState:
        """Restore model, optimiser and RNGs from `last.pt` (unless `fresh`); the state to continue from.

        Loaded onto the CPU whatever the run's device: the model and optimiser copy their tensors to
        where their parameters live, and torch's RNG state must be a CPU tensor (loaded onto CUDA,
        every resume on the lent GPU on 4 December failed with "RNG state must be a torch.ByteTensor")."""
        if fresh or not self.path.is_file():
            return RunState()
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        run = RunState(state["step"], state["elapsed"], json.loads(state["history"]))
        log.info("resumed %s at step %d (%.1f min trained)", self.path, run.step, run.elapsed / 60)
        return run

    def save(self, run: RunState) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": run.step,
            "elapsed": run.elapsed,
            "history": json.dumps(run.history),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "args": json.dumps(self.args),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.run_dir / "last.tmp"
        torch.save(state, temporary)
        temporary.replace(self.path)


def fp16_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
        for k, v in model.state_dict().items()
    }


def save_shipped(model: nn.Module, path: Path) -> str:
    """Write the fp16 state_dict; returns its SHA-256 (warns when over the repository's size limit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state_dict(model), path)
    size = path.stat().st_size
    if size > SHIP_LIMIT_BYTES:
        log.warning(
            "%s is %.1f MB: over the %d MB the repository ships", path, size / 2**20, SHIP_LIMIT_BYTES >> 20
        )
    return sha256_of(path)


class Progress:
    """A one-line progress bar on a terminal; a log line a minute otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self.tty and now - self.last > 0.5:
            sys.stderr.write("\r" + text[:150].ljust(150))
            sys.stderr.flush()
            self.last = now
        elif not self.tty and now - self.last > 60:
            log.info("%s", text)
            self.last = now

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


class PauseFilter:
    """Step durations with pauses taken out, so `--minutes` counts training, not waiting.

    A run in the background is paused (SIGSTOP) while benchmarks are timed, and a paused step
    measures the whole pause: on 30 Nov an ECCV16 run's clock read 70 of 120 minutes after 26 minutes
    of training. A step that takes more than `factor` times the typical step is counted as a typical
    step. The typical step is a slow moving average, so a lasting slowdown (another job sharing the
    core) is followed within a few dozen steps while a single long pause is not.
    """

    def __init__(self, factor: float = 5.0, warmup: int = 20) -> None:
        self.factor = factor
        self.warmup = warmup
        self.seen = 0
        self.typical = 0.0

    def count(self, seconds: float) -> float:
        self.seen += 1
        if self.seen <= self.warmup:  # the first steps set the scale (and compile, allocate)
            self.typical += (seconds - self.typical) / self.seen
            return seconds
        counted = min(seconds, self.factor * self.typical)
        self.typical = 0.95 * self.typical + 0.05 * counted
        return counted
