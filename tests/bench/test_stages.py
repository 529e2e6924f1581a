"""bench.stages: the in-process split of a Colorize call runs the gateway's own functions."""

from __future__ import annotations

import numpy as np
import pytest

from bench import gateway_overhead as go
from bench import stages
from bench.inputs import jpeg_bytes
from contract import ECCV16, WORKING_SIZE_DEFAULT


def _jpeg(height: int, width: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, 1 - x / width], axis=-1) * 255
    return jpeg_bytes(rgb.astype(np.uint8))


@pytest.mark.parametrize("size", [(64, 96), (2048, 2048)])  # the large one laps sRGB→L + resize as one
def test_every_stage_of_the_gateway_is_timed(size: tuple[int, int]) -> None:
    image = _jpeg(*size)
    logits = go.model_outputs(ECCV16, go.true_ab(np.zeros((64, 64, 3), np.uint8), WORKING_SIZE_DEFAULT))[
        "logits"
    ]
    ms = stages.time_stages([image], logits, working_size=WORKING_SIZE_DEFAULT, output_format="PNG", reps=2)
    assert list(ms) == [*stages.DECODE_STAGES, *stages.POST_STAGES, "encode as JPEG (context)"]
    assert all(value > 0 for value in ms.values())


def test_laps_add_up_per_stage() -> None:
    ticks = iter([0.0, 1.0, 3.0, 3.5, 10.0, 10.25])
    laps = stages.Laps(lambda: next(ticks))
    laps("a")
    laps("b")
    laps("a")
    laps.restart()
    laps("c")
    assert laps.ms == {"a": 1500.0, "b": 2000.0, "c": 250.0}
