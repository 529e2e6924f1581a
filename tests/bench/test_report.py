"""bench.report, bench.readme_section and the results document, rendered from a fixture (no measuring)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import readme_section, report
from bench.__main__ import clean
from bench.stages import attribute

FIXTURE = Path(__file__).with_name("results_fixture.json")


@pytest.fixture
def results() -> dict[str, Any]:
    return dict(json.loads(FIXTURE.read_text()))


def test_report_has_machine_figures_with_goals_and_every_part(results: dict[str, Any]) -> None:
    text = report.render(results)
    assert text.startswith("# priorlab benchmark report")
    assert "AMD EPYC (AVX2), 2 cores (2 usable)" in text and "Triton 2.51.0" in text
    assert "UNTRAINED" in text and "5.36 GFLOP" in text
    # each figure with the ISA and its part's load average
    host = "AVX2, 2025-01-01, load "
    assert f"| achieved dynamic batch, eccv16, c=4, system shm | 2.50 | ≥ 1.80 | met | {host}" in text
    assert f"| gateway p50 ÷ Triton-direct p50 | 1.88× | ≤ 1.30× | **missed** | {host}" in text
    assert "| 150 vs 80 ms |" in text
    assert "| FLOP/s ÷ sgemm | n/a | ≥ 0.50× | not measured | ISA not recorded, earlier run, load " in text
    assert "| FLOP/s ÷ sgemm | n/a | ≥ 0.50× | not measured |" in text
    assert "| eccv16 | system shm | 4 | 12.50 | 300.0 | 420.0 | 450.0 | 2.50 | 2:50, 3:50 | **no** |" in text
    assert "| 1 | 10 | 0 | 5.00 | 150.0 | 170.0 | n/a | 6.0 / 82.0 / 55.0 |" in text
    assert "| Triton call | 82.0 | 55% |" in text
    assert "Skipped: contract.MODELS has no 'eccv16_ab' yet" in text
    assert "**Failed**: RuntimeError: boom" in text
    assert "- note: siggraph17 shm=True c=4" in text
    assert "![perf_analyzer_throughput_latency.png](perf_analyzer_throughput_latency.png)" in text
    assert "quick smoke run" not in text


def test_quick_runs_say_so(results: dict[str, Any]) -> None:
    results["quick"] = True
    assert "quick smoke run" in report.render(results)
    assert "`--quick` smoke run" in readme_section.render(results)


def test_readme_section(results: dict[str, Any]) -> None:
    text = readme_section.render(results)
    assert text.startswith("## Performance")
    assert "AMD EPYC (AVX2), 2 cores" in text and "Triton 2.51.0" in text and "untrained" in text
    host = "AVX2, 2025-01-01, load "
    assert f"| gateway p50 ÷ Triton-direct p50 | 1.88× | ≤ 1.30× | **missed** | {host}" in text
    assert len(text.splitlines()) < 20


def test_readme_section_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert readme_section.main(["--results", str(FIXTURE)]) == 0
    assert capsys.readouterr().out.startswith("## Performance")
    assert readme_section.main(["--results", str(tmp_path / "none.json")]) == 1


def test_clean_makes_standard_json() -> None:
    document = clean({"a": math.nan, "b": [1.0, math.inf, {"c": (2, -math.inf)}]})
    assert document == {"a": None, "b": [1.0, None, {"c": [2, None]}]}
    json.dumps(document, allow_nan=False)


def test_attribute_splits_reported_times_by_in_process_shares() -> None:
    split = attribute(
        {"decode_ms": 6.0, "triton_ms": 80.0, "postprocess_ms": 40.0, "total_ms": 126.0},
        130.0,
        {"image decode": 1.0, "sRGB→L + resize": 2.0, "annealed mean": 5.0, "ab upsample + Lab→sRGB": 5.0,
         "encode": 10.0},
    )  # fmt: skip
    assert split == {
        "image decode": 2.0,
        "sRGB→L + resize": 4.0,
        "Triton call": 80.0,
        "annealed mean": 10.0,
        "ab upsample + Lab→sRGB": 10.0,
        "encode": 20.0,
        "gRPC + scheduling": 4.0,
    }
