"""bench.dip.speed's multi-seed bf16 check: the scheduler, the kept traces, the statistics and the verdict,
with stand-in trace processes (a real trace is 500 DIP iterations)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.dip import speed

# fp32 `fused` PSNR per seed, and each variant's offset from it per seed (at every check iteration)
FUSED = {0: 20.0, 1: 21.0, 2: 19.0, 3: 20.5}
OFFSET = {"fused": {s: 0.0 for s in FUSED}, "channels_last": {0: 0.3, 1: -0.2, 2: 0.1, 3: -0.2},
          "bf16_channels_last": {0: 0.05, 1: -0.05, 2: 0.02, 3: 0.02}}  # fmt: skip


def _fake_cmd(args: Any, variant: str, seed: int) -> list[str]:
    psnr = {str(k): FUSED[seed] + OFFSET[variant][seed] + k / 100 for k in speed.CHECK_ITERATIONS}
    line = {"variant": variant, "seed": seed, "settings": "x", "ema_psnr": psnr, "wall_s": 1.0}
    return [sys.executable, "-c", f"print({json.dumps(json.dumps(line))})"]


@pytest.fixture(autouse=True)
def _fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "CHECK_POLL_S", 0.01)


def _args(tmp_path: Path, seeds: int, jobs: int = 2) -> Any:
    return speed.parse(["--bf16-check", "--data", str(tmp_path), "--size", "128", "--threads", "1",
                        "--seeds", str(seeds), "--jobs", str(jobs)])  # fmt: skip


def test_seed_statistics_and_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "_trace_cmd", _fake_cmd)
    saved: list[dict[str, Any]] = []
    check = speed.bf16_check(_args(tmp_path, 4), None, saved.append)
    assert len(saved) == 12  # every trace saved as it finished
    assert set(check["traces"]) == {"fused", "channels_last", "bf16_channels_last"}  # seed 0
    assert set(check["seed_traces"]) == {"1", "2", "3"}
    stats = check["seed_stats"]
    assert stats["n"] == 4 and stats["t975"] == pytest.approx(3.182)
    p = stats["paired"]["bf16_channels_last"]["100"]
    assert p["mean"] == pytest.approx(0.01)
    sd = math.sqrt(sum((d - 0.01) ** 2 for d in (0.05, -0.05, 0.02, 0.02)) / 3)
    assert p["sd"] == pytest.approx(sd) and p["se"] == pytest.approx(sd / 2)
    assert p["ci95"] == pytest.approx([0.01 - 3.182 * sd / 2, 0.01 + 3.182 * sd / 2])
    assert stats["mean_db"]["fused"]["500"] == pytest.approx(20.125 + 5)
    assert stats["fp32_seed_sd_db"]["500"] == pytest.approx(
        math.sqrt(sum((x - 20.125) ** 2 for x in FUSED.values()) / 3)
    )
    assert check["pass"] == {"bf16_channels_last": True}  # multi-seed verdict
    assert check["single_seed_pass"] == {"bf16_channels_last": True}
    md = "\n".join(speed._check_markdown(json.loads(json.dumps(check))))
    assert "over 4 seeds" in md and "+0.010 ±" in md and speed.DECISION_RULE in md


def test_a_mean_difference_beyond_the_tolerance_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speed, "_trace_cmd", _fake_cmd)
    monkeypatch.setitem(OFFSET, "bf16_channels_last", {0: 0.05, 1: -0.3, 2: -0.2, 3: -0.1})  # mean -0.1375
    check = speed.bf16_check(_args(tmp_path, 4), None, lambda c: None)
    assert check["pass"] == {"bf16_channels_last": False}
    assert check["single_seed_pass"] == {"bf16_channels_last": True}  # seed 0 alone would have passed


def test_kept_traces_are_not_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, int]] = []

    def cmd(args: Any, variant: str, seed: int) -> list[str]:
        started.append((variant, seed))
        return _fake_cmd(args, variant, seed)

    monkeypatch.setattr(speed, "_trace_cmd", cmd)
    first = speed.bf16_check(_args(tmp_path, 2, jobs=1), None, lambda c: None)
    assert started == [(v, s) for s in (0, 1) for v in ("fused", "channels_last", "bf16_channels_last")]
    assert first["seed_stats"]["n"] == 2
    started.clear()
    again = speed.bf16_check(_args(tmp_path, 3), json.loads(json.dumps(first)), lambda c: None)
    assert sorted(started) == [("bf16_channels_last", 2), ("channels_last", 2), ("fused", 2)]
    assert again["seed_stats"]["seeds"] == [0, 1, 2]


def test_one_seed_keeps_the_single_seed_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "_trace_cmd", _fake_cmd)
    check = speed.bf16_check(_args(tmp_path, 1), None, lambda c: None)
    assert "seed_stats" not in check and check["pass"] == {"bf16_channels_last": True}
    assert "one seed" in "\n".join(speed._check_markdown(check))


def test_the_replacement_rule_pairs_with_fp32_nhwc_on_its_own_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speed, "_trace_cmd", _fake_cmd)
    monkeypatch.setattr(speed, "REPLACEMENT_SEEDS", (4, 5, 6))
    monkeypatch.setitem(FUSED, 4, 20.0)
    monkeypatch.setitem(FUSED, 5, 21.0)
    monkeypatch.setitem(FUSED, 6, 22.0)
    monkeypatch.setitem(OFFSET, "channels_last", {**OFFSET["channels_last"], 4: 0.3, 5: 0.1, 6: 0.2})
    monkeypatch.setitem(
        OFFSET, "bf16_channels_last", {**OFFSET["bf16_channels_last"], 4: 0.4, 5: 0.3, 6: 0.0}
    )
    first = speed.bf16_check(_args(tmp_path, 4), None, lambda c: None)  # seeds 0-3, all three variants
    assert "replacement" not in first  # none of its seeds traced yet
    common = ["--bf16-check", "--data", str(tmp_path), "--size", "128", "--threads", "1", "--jobs", "2",
              "--check-variants", "channels_last,bf16_channels_last"]  # fmt: skip
    argv = [*common, "--first-seed", "4", "--seeds", "2"]
    check = speed.bf16_check(speed.parse(argv), json.loads(json.dumps(first)), lambda c: None)
    assert set(check["seed_traces"]["4"]) == {"channels_last", "bf16_channels_last"}  # no fused for them
    assert check["seed_stats"]["seeds"] == [0, 1, 2, 3]  # the first rule keeps its seeds and baseline
    r = check["replacement"]
    assert r["stats"]["seeds"] == [4, 5] and r["stats"]["baseline"] == "channels_last"
    assert not r["complete"]
    p = r["stats"]["paired"]["bf16_channels_last"]["300"]
    assert p["diffs"] == pytest.approx([0.1, 0.2]) and p["mean"] == pytest.approx(0.15)
    assert r["pass"] == {"bf16_channels_last": False}  # 0.15 > 0.1
    md = "\n".join(speed._check_markdown(json.loads(json.dumps(check))))
    assert "interim: 2 of 3 seeds" in md and speed.REPLACEMENT_RULE in md
    last = speed.parse([*common, "--first-seed", "6", "--seeds", "1"])  # seed 6 alone
    done = speed.bf16_check(last, json.loads(json.dumps(check)), lambda c: None)
    assert done["replacement"]["complete"] and done["replacement"]["stats"]["seeds"] == [4, 5, 6]
    assert done["replacement"]["pass"] == {"bf16_channels_last": True}  # mean of 0.1, 0.2, -0.2 = 0.033


def test_the_replacement_rule_alone_on_a_new_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the replacement rule's seeds, no seed-0 `fused` trace (a host whose results file has none):
    every partial save renders, and the table is the replacement rule's."""
    monkeypatch.setattr(speed, "_trace_cmd", _fake_cmd)
    monkeypatch.setattr(speed, "REPLACEMENT_SEEDS", (4, 5))
    monkeypatch.setitem(FUSED, 4, 20.0)
    monkeypatch.setitem(FUSED, 5, 21.0)
    monkeypatch.setitem(OFFSET, "channels_last", {**OFFSET["channels_last"], 4: 0.3, 5: 0.1})
    monkeypatch.setitem(OFFSET, "bf16_channels_last", {**OFFSET["bf16_channels_last"], 4: 0.32, 5: 0.12})
    argv = ["--bf16-check", "--data", str(tmp_path), "--size", "128", "--threads", "1", "--jobs", "1",
            "--check-variants", "channels_last,bf16_channels_last",
            "--first-seed", "4", "--seeds", "2"]  # fmt: skip
    rendered: list[str] = []
    check = speed.bf16_check(
        speed.parse(argv),
        None,
        lambda c: rendered.append("\n".join(speed._check_markdown(json.loads(json.dumps(c))))),
    )
    assert len(rendered) == 4 and check["traces"] == {}
    r = check["replacement"]
    assert r["complete"] and r["pass"] == {"bf16_channels_last": True}  # +0.02 at every iteration
    assert "seeds 4-15" in rendered[-1] and speed.REPLACEMENT_RULE in rendered[-1]


def test_the_t_table_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for dof, t in speed.T975.items():
        assert t == pytest.approx(stats.t.ppf(0.975, dof), abs=6e-4), dof
    assert max(speed.T975) >= 11  # the replacement rule's 12 seeds
