"""What every part of one run shares: settings, output folders, the processes, cached inputs, the clock."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench import inputs
from bench.config import BenchConfig
from bench.figures import Figure
from bench.stack import Stack


@dataclass
class Context:
    config: BenchConfig
    out: Path  # committed results: JSON, REPORT.md, PNG, CSV
    stack: Stack
    deadline: float  # time.monotonic() by which the whole run must end
    notes: list[str] = field(default_factory=list)

    @property
    def raw(self) -> Path:
        """Bulky or machine-specific files (input-data JSON, logs): gitignored `raw/`."""
        return self.out / "raw"

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    @functools.cached_property
    def photos(self) -> list[Path]:
        return inputs.photo_paths(self.config.max_photos)

    @functools.cached_property
    def l_planes(self) -> list[NDArray[np.float32]]:
        """Each photo's L at the working size: what the gateway sends Triton."""
        return [inputs.working_l(inputs.load_rgb(p), self.config.working_size) for p in self.photos]

    @functools.cached_property
    def jpegs(self) -> list[bytes]:
        """Each photo as the load generator's request: a request_size² JPEG."""
        return inputs.request_jpegs(self.photos, self.config.request_size)


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason, "figures": []}


def figures_of(*figures: Figure) -> list[dict[str, Any]]:
    return [f.as_dict() for f in figures]
