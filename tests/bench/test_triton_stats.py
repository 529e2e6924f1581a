"""bench.triton_stats: counters from the statistics API, and the dynamic batch between two snapshots."""

from __future__ import annotations

import math

import pytest

from bench.triton_stats import ModelStats, parse


def document(inferences: int, executions: int, batches: dict[int, int]) -> dict[str, object]:
    """The shape of `get_inference_statistics(as_json=True)` (int64 values arrive as strings)."""
    return {
        "model_stats": [
            {
                "name": "eccv16",
                "version": "1",
                "inference_count": str(inferences),
                "execution_count": str(executions),
                "inference_stats": {
                    "compute_infer": {"count": str(inferences), "ns": str(inferences * 1_000_000)}
                },
                "batch_stats": [
                    {"batch_size": str(b), "compute_infer": {"count": str(n), "ns": str(n * b * 2_000_000)}}
                    for b, n in batches.items()
                ],
            },
            {"name": "other", "inference_count": "999", "execution_count": "1"},
        ]
    }


def test_parse_one_model() -> None:
    stats = parse(document(145, 110, {1: 75, 2: 35}), "eccv16")
    assert (stats.inference_count, stats.execution_count) == (145, 110)
    assert stats.batches == {1: 75, 2: 35}
    assert stats.infer_ms_per_execution(1) == pytest.approx(2.0)
    assert stats.infer_ms_per_execution(2) == pytest.approx(4.0)


def test_difference_gives_the_level_dynamic_batch() -> None:
    before = parse(document(100, 90, {1: 80, 2: 10}), "eccv16")
    after = parse(document(400, 190, {1: 80, 2: 10, 3: 100}), "eccv16")
    level = after - before
    assert level.dynamic_batch == 3.0
    assert level.batches == {3: 100}
    assert level.as_dict()["batch_histogram"] == {"3": 100}


def test_no_executions() -> None:
    assert math.isnan(ModelStats().dynamic_batch)
    assert math.isnan(ModelStats().infer_ms_per_execution(1))
    assert parse({}, "eccv16") == ModelStats()
