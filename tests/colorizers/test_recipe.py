"""colorizers.recipe: equal compute per trial, and real (tiny) trials run, resumed and reported."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from colorizers import recipe
from colorizers.recipe import BASE, TRIALS, Trial


@pytest.fixture(scope="module")
def flops() -> dict[tuple[float, int], int]:
    return recipe.flops_table(TRIALS)


def test_convolution_flops_follow_the_pixels_and_the_width(flops: dict[tuple[float, int], int]) -> None:
    # Convolutions cost in proportion to the pixels: 128² is (128/64)² = 4x 64² (padding aside).
    assert flops[0.25, 128] / flops[0.25, 64] == pytest.approx(4.0, rel=0.01)
    # and roughly to width² (the 1-channel input and the 313-bin head grow linearly)
    assert 3.5 < flops[0.5, 96] / flops[0.25, 96] < 4.1


def test_every_trial_gets_the_same_compute(flops: dict[tuple[float, int], int]) -> None:
    for name, trial in TRIALS.items():
        budget = (trial.budget_images or 16_000) * flops[BASE.width, BASE.crop]
        steps = recipe.steps_for(trial, 16_000, flops)
        assert steps * trial.flops_per_step(flops) == pytest.approx(budget, rel=0.01), name
    assert recipe.steps_for(TRIALS["batch-8"], 16_000, flops) == 2 * recipe.steps_for(BASE, 16_000, flops)
    # a trial differs from the base by what it names, and only by that
    for name, trial in TRIALS.items():
        differs = {k for k in vars(BASE) if k != "changes" and getattr(trial, k) != getattr(BASE, k)}
        assert differs == set(trial.changes), name


def test_the_low_resolution_start_costs_less_per_step(flops: dict[tuple[float, int], int]) -> None:
    trial = TRIALS["low-res-first"]
    spent = [recipe._spent(trial, step, 100, flops) for step in range(101)]
    assert spent[0] == 0 and spent[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in itertools.pairwise(spent))
    assert spent[50] == pytest.approx(flops[0.25, 64] / (flops[0.25, 64] + flops[0.25, 128]))


def test_tiny_trials_run_resume_and_report(tiny_cache: Path, tmp_path: Path) -> None:
    trials = {
        "base": Trial(crop=32, batch=2),  # continued from the shipped START, as the real trials
        "b": Trial(crop=40, batch=2, first_crop=32, changes={"first_crop": 32}),
    }
    steps = {"base": 8, "b": 8}
    runs = tmp_path / "runs"
    recipe.run_trials(trials, steps, runs, tiny_cache, jobs=2)
    for name in trials:
        history = json.loads((runs / name / "history.json").read_text())
        assert [h["step"] for h in history] == list(range(9))  # 0: the starting weights, scored
        assert recipe.finished(runs, name, 8)
    stamp = (runs / "base" / "history.json").stat().st_mtime_ns
    recipe.run_trials(trials, steps, runs, tiny_cache, jobs=2)  # finished: nothing runs again
    assert (runs / "base" / "history.json").stat().st_mtime_ns == stamp
    flops = recipe.flops_table(trials)
    rows = recipe.summarise(trials, steps, runs, flops)
    assert rows["base"]["finished"] and rows["base"]["curve"][-1]["budget"] == 1.0
    assert set(rows["base"]["final"]) == {"val_ce", "val_ce_rebal_paper", "val_chroma", "val_chroma_truth"}
    text = recipe.markdown(rows, 1)
    assert "| base | — | 8 |" in text and "| b | first crop 32 | 8 |" in text
    # b's differences are against base (both started the same way): signed, three decimals
    b_ce = rows["b"]["final"]["val_ce"] - rows["base"]["final"]["val_ce"]
    assert f"({b_ce:+.3f})" in text
    recipe.plot(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_unknown_trials_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        recipe.main(["--trials", "base,crop-9", "--report"])
    assert "unknown trial(s) ['crop-9']" in capsys.readouterr().err
