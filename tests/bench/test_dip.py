"""bench.dip: runnable as modules, the committed results still render, and the helpers it shares with
the rest of the benchmarks (no DIP run here: the smoke runs are `python -m bench.dip.<name> --quick`)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import dip_hook, plots, report
from bench.config import ROOT
from bench.dip import batch, common, quality, speed
from bench.flops import sgemm_gflops

RESULTS = ROOT / "bench" / "results" / "dip"


def _committed(name: str) -> dict[str, Any]:
    return dict(json.loads((RESULTS / name).read_text()))


def _table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("module", ["speed", "quality", "batch"])
def test_each_runs_as_a_module(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.dip.{module}", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"python -m bench.dip.{module}" in result.stdout and "--quick" in result.stdout


@pytest.mark.parametrize("name", ["speed", "speed_cuda"])
def test_committed_speed_tables_render_as_committed(name: str) -> None:
    data = _committed(f"{name}.json")
    text = speed._markdown(data)  # rows, meta and, where run, the profiles and the bf16 check
    assert _table_lines(text) == _table_lines((RESULTS / f"{name}.md").read_text())


def test_committed_quality_renders_as_committed() -> None:
    spread = _committed(quality.SPREAD) if (RESULTS / quality.SPREAD).exists() else None
    text = quality._markdown(_committed("quality.json"), {"date": "-"}, spread)
    assert text.splitlines()[3:] == (RESULTS / "quality.md").read_text().splitlines()[3:]


def test_committed_batch_tables_render_as_committed() -> None:
    data = _committed("batch.json")
    data["meta"].setdefault("image", "F16")  # the committed run predates meta["image"]
    text = batch._markdown(data["rows"], data["modes"], data["meta"])
    assert _table_lines(text) == _table_lines((RESULTS / "batch.md").read_text())


def test_where_a_speed_run_writes(tmp_path: Path) -> None:
    assert speed.json_path(speed.parse(["--out", str(tmp_path)])) == tmp_path / "speed.json"
    quick = speed.parse(["--quick", "--out", str(tmp_path)])
    assert speed.json_path(quick) == tmp_path / "quick" / "speed.json"
    assert (quick.size, quick.tasks, quick.variants) == (64, "denoise,jpeg", "reference_loop,default")
    cuda = speed.parse(["--device", "cuda", "--out", str(tmp_path)])
    assert speed.json_path(cuda) == tmp_path / "speed_cuda.json"
    assert speed.parse([]).out == RESULTS


def test_the_hook_judges_the_default_against_reference_loop_and_reports_flops() -> None:
    data = _committed("speed.json")
    figures = {f.key: f for f in dip_hook.figures(data["rows"], data["meta"])}
    tasks = dict.fromkeys(r["task"] for r in data["rows"])
    for task in tasks:
        of_task = {r["variant"]: r for r in data["rows"] if r["task"] == task}
        speedup = figures[f"dip_{task}_default_vs_reference_loop"]
        expected = of_task["default"]["s_per_iter_median"] / of_task["reference_loop"]["s_per_iter_median"]
        assert speedup.value == pytest.approx(expected)
        assert (speedup.goal, speedup.direction) == (0.7, "<=")
    denoise = min((r for r in data["rows"] if r["task"] == "denoise"), key=lambda r: r["s_per_iter_median"])
    share = figures["dip_denoise_flops_share"]
    assert share.value == pytest.approx(denoise["achieved_gflops"] / data["meta"]["sgemm_gflops"])
    assert share.goal is None and f"{denoise['s_per_iter_median']:.3f} s/iteration" in share.context
    assert math.isnan(dip_hook.figures(data["rows"][:1], {})[0].value)  # no sgemm: not measured


def test_the_autostop_part_judges_the_recorded_runs(tmp_path: Path) -> None:
    from bench.config import BenchConfig
    from bench.context import Context
    from bench.stack import Stack

    ctx = Context(BenchConfig.smoke(), tmp_path, Stack(logs=tmp_path / "logs"), deadline=1e12)
    part = dip_hook.run_autostop(ctx)  # quick: reads the committed table, runs nothing
    rules = _committed("quality.json")["stoprules"]
    figures = {f["key"]: f for f in part["figures"]}
    work = figures["dip_autostop_work"]
    assert work["value"] == pytest.approx(rules["median_total_iterations"] / 3000, abs=1e-3)
    assert (work["goal"], work["direction"]) == (0.5, "<=")
    within = figures["dip_autostop_within"]
    assert within["value"] == pytest.approx(rules["within_0_5_db"] / rules["rerun"])
    assert within["met"] is (rules["within_0_5_db"] / rules["rerun"] >= 13 / 14)


def test_a_fast_config_is_timed_for_at_least_min_timed_s() -> None:
    quick = speed.run_one("jpeg", "reference_loop", 32, warmup=1, timed=2)
    assert quick["timed_iterations"] == 2  # without a floor: exactly `timed`
    row = speed.run_one("jpeg", "reference_loop", 32, warmup=1, timed=2, min_timed_s=0.5)
    assert row["timed_iterations"] > 2
    # the timed iterations' wall times add up to the floor (the median of them is one of them)
    assert row["timed_iterations"] * row["s_per_iter_p90"] >= 0.5


def test_noisy_pairs_are_seeded_crops(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "ramp.png"
    ramp = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (30, 1, 3))
    Image.fromarray(ramp).save(path)
    clean, noisy = common.noisy_pair(path, 16, 25 / 255, seed=3)
    assert clean.shape == noisy.shape == (16, 16, 3) and noisy.dtype == np.float32
    np.testing.assert_array_equal(clean, ramp[7:23, 12:28] / np.float32(255))
    np.testing.assert_array_equal(noisy, common.noisy_pair(path, 16, 25 / 255, seed=3)[1])
    assert noisy.min() >= 0 and noisy.max() <= 1 and not np.array_equal(noisy, clean)
    with pytest.raises(ValueError, match="smaller than the 32² crop"):
        common.noisy_pair(path, 32, 0.1, seed=0)


def test_sgemm_on_the_cpu_has_torch_and_optionally_numpy() -> None:
    rates = sgemm_gflops(64, reps=2)
    assert set(rates) == {"torch", "numpy"} and all(v > 0 for v in rates.values())
    assert set(sgemm_gflops(64, reps=1, numpy=False)) == {"torch"}


def test_dip_plots(tmp_path: Path) -> None:
    rows = _committed("batch.json")["rows"]
    modes = ["sequential", "batched"]
    png = plots.jobs_per_second(rows, modes, tmp_path / "batch.png", "title", "jobs/s")
    assert png is not None and png.stat().st_size > 0
    res = _committed("quality.json")
    runs = res["autostop"]["runs"][:2]
    png = plots.autostop_traces(runs, res["stoprules"], tmp_path / "autostop.png")
    assert png is not None and png.stat().st_size > 0
    assert plots.autostop_traces([], None, tmp_path / "none.png") is None


def test_table_is_the_reports() -> None:
    assert report.table(("a", "b"), [(1, "x")]) == ["| a | b |", "|---|---|", "| 1 | x |", ""]


def test_the_committed_stop_rules_compare_fits_on_the_same_crops() -> None:
    # Each gap is a held-out run's choice read off the fit on every pixel: both must be the same crop.
    res = _committed("quality.json")
    assert res["autostop"]["crop"] == res["stoprules"]["crop"]


def test_replay_refuses_fits_of_another_crop(tmp_path: Path) -> None:
    (tmp_path / "quality.json").write_text(
        json.dumps({"autostop": {"crop": 128, "runs": []}, "stoprules": {"crop": 96, "runs": []}})
    )
    args = argparse.Namespace(out=tmp_path, max_iterations=None, quick=False)
    with pytest.raises(SystemExit, match=r"128² crops but the held-out runs 96²"):
        quality._replay_section(args)


def test_the_fits_record_their_means_around_the_held_out_minima(tmp_path: Path) -> None:
    t = np.arange(1, 1001, dtype=np.float64)
    falling_then_rising = np.where(t <= 400, 1.0 - 0.9 * (t - 1) / 399, 0.1 + (t - 400) * 1e-3)
    rows = [{"image": "F16", "sigma": 25, "holdout_trace": falling_then_rising.tolist()}]
    (tmp_path / "quality.json").write_text(json.dumps({"stoprules": {"crop": 96, "runs": rows}}))
    args = argparse.Namespace(out=tmp_path, max_iterations=None, quick=False)
    assert quality._held_out_minima(args, 96) == {("F16", 25): 400}
    assert quality._held_out_minima(args, 128) == {}  # another crop: not the same runs
    # The replay judges a mean policy by the window recorded around that minimum.
    row = {"holdout_trace": rows[0]["holdout_trace"], "s_per_iter": 0.1}
    run = {"psnr_trace": list(np.linspace(20, 30, 1000)), "window_c": 400}
    run |= {"windows": [[1.0, 1.2], [1.0, 1.5]], "window_psnr": [28.0, 29.25]}
    default = quality.AutoStop(refit_scale=1.5, refit_mean_from=1.0)
    got = quality._replayed(row, run, default, 3000)["refit"]
    assert (got["held_out_minimum"], got["iteration"], got["psnr"]) == (400, 600, 29.25)
