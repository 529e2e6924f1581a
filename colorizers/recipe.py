"""The training recipe for small compute, measured (issue #15 ask 1): one knob at a time, equal compute.

    python -m colorizers.recipe                 # every trial not yet finished, --jobs at a time
    python -m colorizers.recipe --trials base,crop-64 --jobs 1
    python -m colorizers.recipe --report        # table, curves and JSON from the trials finished so far

Each trial trains ECCV16 (`colorizers.train`, seed 0) with the base recipe (`BASE`: width 1/4, crops
of 96², batch 16, Adam at 3e-4 on a cosine, λ = 0.75, mirrored crops), continued from the shipped
`START` as every run here is, with one change (`TRIALS`): crop size, a low-resolution-first schedule,
batch size, learning rate, λ of the class rebalancing, augmentation; the base again with another seed,
for the noise a Δ must beat; and width, which changes the network, from scratch beside the base
recipe from scratch (with a larger budget: the first few thousand crops only reach the colour prior).

- **Equal compute.** Every trial gets the convolution FLOPs of `--budget-images` base steps' worth of
  96² crops at width 1/4 (`bench.flops` counts the model's forward; the backward costs about twice
  that for every trial alike), so a larger crop, batch or width gets fewer steps. Steps, not minutes:
  trials can share the machine without the budget depending on what else ran.
- **The same yardstick.** Every trial is scored on the same 128 validation photos, 128² centre crops,
  at eight points through its budget: the plain cross-entropy of the true colour (how well the net
  knows the colour; comparable across λ), the rebalanced one at the paper's λ = 0.5 (rare colours
  count), and the mean chroma of the T = 0.38 decode against the truth's (the sepia symptom).
- Trials resume: a trial whose `history.json` reaches its step count is done; another run of the same
  command continues the others from their `last.pt`.

Writes `colorizers/results/recipe.{json,md,png}`; the card (MODEL_CARD.md) reads them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.flops import count_conv_flops
from colorizers.dataset import DEFAULT_CACHE
from colorizers.eccv16 import ECCVGenerator
from colorizers.evaluate import RESULTS_DIR

log = logging.getLogger(__name__)

RUNS = DEFAULT_CACHE.parent / "recipe"
VAL_CROP = 128
VAL_IMAGES = 128
VAL_POINTS = 8
LATE = 0.74  # a trial's scores: its validations from here to the end of its budget (about three)
BUDGET_IMAGES = 16_000  # ≈ 7 minutes of one core of this machine for the base trial
SCRATCH_BUDGET = 24_000  # from scratch: the first 8k crops only reach the colour prior
START = "eccv16-w0.25-l1"  # where a continued run starts: a shipped checkpoint (λ = 1, crops of 128²)


@dataclass(frozen=True)
class Trial:
    width: float = 0.25
    crop: int = 96
    batch: int = 16
    lr: float = 3e-4
    lambda_rebal: float = 0.75
    augment: str = "flip"
    first_crop: int = 0  # low resolution first: this crop for the first half of the steps
    seed: int = 0  # network initialisation, crops and their order
    init_from: str = START  # "" = from scratch
    budget_images: int = 0  # 0: the command's --budget-images
    changes: dict[str, Any] = field(default_factory=dict, compare=False)

    def flops_per_step(self, flops: Mapping[tuple[float, int], int]) -> float:
        """Forward convolution FLOPs of one step, averaged over the schedule (half the steps at the
        first crop when there is one)."""
        per_image = float(flops[self.width, self.crop])
        if self.first_crop:
            per_image = (per_image + flops[self.width, self.first_crop]) / 2
        return self.batch * per_image


BASE = Trial()


def _trial(**changes: Any) -> Trial:
    return Trial(**{**vars(BASE), **changes, "changes": changes})


# Issue #15 ask 1's list, in the order they run. Continued from START (every run here resumes from a
# shipped checkpoint, so that is the regime the recipe is for), but width, which changes the network:
# those start from scratch, beside the base recipe from scratch.
TRIALS: dict[str, Trial] = {
    "base": BASE,
    "base-seed-1": _trial(seed=1),  # how far the seed alone moves the scores: the yardstick for a Δ
    "crop-64": _trial(crop=64),
    "crop-128": _trial(crop=128),
    "low-res-first": _trial(crop=128, first_crop=64),
    "lr-1e-3": _trial(lr=1e-3),
    "lr-1e-4": _trial(lr=1e-4),
    "batch-8": _trial(batch=8),
    "batch-32": _trial(batch=32),
    "lambda-0.5": _trial(lambda_rebal=0.5),
    "lambda-1": _trial(lambda_rebal=1.0),
    "no-flip": _trial(augment="none"),
    "flip-scale": _trial(augment="flip-scale"),
    "scratch": _trial(init_from="", budget_images=SCRATCH_BUDGET),
    "scratch-width-0.125": _trial(init_from="", budget_images=SCRATCH_BUDGET, width=0.125),
    "scratch-width-0.5": _trial(init_from="", budget_images=SCRATCH_BUDGET, width=0.5),
}


def conv_flops(width: float, crop: int) -> int:
    """Forward convolution FLOPs of ECCV16 at `width` on one `crop`² image."""
    model = ECCVGenerator(width=width).eval()
    with torch.no_grad():
        total, _ = count_conv_flops(model, lambda: model.logits(torch.zeros(1, 1, crop, crop)))
    return total


def flops_table(trials: Mapping[str, Trial]) -> dict[tuple[float, int], int]:
    keys = {(BASE.width, BASE.crop)}
    for t in trials.values():
        keys |= {(t.width, t.crop)} | ({(t.width, t.first_crop)} if t.first_crop else set())
    return {key: conv_flops(*key) for key in sorted(keys)}


def steps_for(trial: Trial, budget_images: int, flops: Mapping[tuple[float, int], int]) -> int:
    """The trial's step count: its budget (`budget_images` unless it names its own) in base crops'
    FLOPs, divided by its FLOPs per step."""
    budget = (trial.budget_images or budget_images) * flops[BASE.width, BASE.crop]
    return max(VAL_POINTS, round(budget / trial.flops_per_step(flops)))


def command(name: str, trial: Trial, steps: int, runs: Path, cache: Path) -> list[str]:
    run_dir = runs / name
    cmd = [
        sys.executable, "-m", "colorizers.train", "--model", "eccv16",
        "--width", f"{trial.width:g}", "--crop", str(trial.crop), "--batch", str(trial.batch),
        "--lr", f"{trial.lr:g}", "--lambda-rebal", f"{trial.lambda_rebal:g}", "--augment", trial.augment,
        "--max-steps", str(steps), "--minutes", "1e9", "--seed", str(trial.seed), "--threads", "1",
        "--val-steps", str(max(1, steps // VAL_POINTS)), "--val-crop", str(VAL_CROP),
        "--val-images", str(VAL_IMAGES), "--save-every", "3", "--cache", str(cache),
        "--name", f"recipe-{name}", "--run-dir", str(run_dir), "--out", str(run_dir),
    ]  # fmt: skip
    if trial.first_crop:
        cmd += ["--first-crop", str(trial.first_crop), "--first-crop-fraction", "0.5"]
    if trial.init_from:
        cmd += ["--init-from", trial.init_from]
    return cmd


def history(runs: Path, name: str) -> list[dict[str, Any]]:
    path = runs / name / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def finished(runs: Path, name: str, steps: int) -> bool:
    return any(entry.get("step") == steps for entry in history(runs, name))


def run_trials(
    trials: Mapping[str, Trial], steps: Mapping[str, int], runs: Path, cache: Path, jobs: int
) -> None:
    """Each unfinished trial as its own process, `jobs` at a time; stdout/stderr to `<run>/train.log`."""
    pending = [name for name in trials if not finished(runs, name, steps[name])]
    running: dict[str, subprocess.Popen[bytes]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                (runs / name).mkdir(parents=True, exist_ok=True)
                with open(runs / name / "train.log", "ab") as out:
                    cmd = command(name, trials[name], steps[name], runs, cache)
                    running[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
                log.info("trial %s: %d steps, started", name, steps[name])
            time.sleep(2)
            for name, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    log_path = runs / name / "train.log"
                    raise SystemExit(f"trial {name} failed ({proc.returncode}): see {log_path}")
                log.info("trial %s: done", name)
    finally:
        for proc in running.values():
            proc.terminate()


def summarise(
    trials: Mapping[str, Trial], steps: Mapping[str, int], runs: Path, flops: Mapping[tuple[float, int], int]
) -> dict[str, Any]:
    """Per trial: its settings, steps, throughput, the validation curve (x: share of the budget) and
    its scores: the mean over the validations in the last quarter of the budget (`LATE`; one
    validation moves by 0.02-0.03 from the next), empty until the trial has finished."""
    rows: dict[str, Any] = {}
    for name, trial in trials.items():
        entries = [e for e in history(runs, name) if "val_ce" in e]
        done = finished(runs, name, steps[name])
        curve = [
            {"budget": round(_spent(trial, e["step"], steps[name], flops), 4),
             **{k: round(float(e[k]), 4) for k in ("val_ce", "val_ce_rebal_paper", "val_chroma") if k in e}}
            for e in entries
        ]  # fmt: skip
        late = [e for e, point in zip(entries, curve, strict=True) if point["budget"] >= LATE] if done else []
        keys = ("val_ce", "val_ce_rebal_paper", "val_chroma", "val_chroma_truth")
        final = {k: sum(float(e[k]) for e in late) / len(late) for k in keys if late and k in late[0]}
        rows[name] = {
            "changes": trial.changes,
            "against": _reference(name, trial),
            "steps": steps[name],
            "finished": done,
            "images_per_s": [e["img_per_s"] for e in entries if "img_per_s" in e],
            "curve": curve,
            "final": final,
        }
    return rows


def _reference(name: str, trial: Trial) -> str:
    """The trial a row's Δ is taken against: the base recipe started the same way."""
    reference = "base" if trial.init_from else "scratch"
    return "" if name == reference else reference


def _spent(trial: Trial, step: int, steps: int, flops: Mapping[tuple[float, int], int]) -> float:
    """Share of the budget spent after `step` of `steps`: with a low-resolution start the first half
    of the steps costs less."""
    if not trial.first_crop:
        return step / steps
    cheap, dear = flops[trial.width, trial.first_crop], flops[trial.width, trial.crop]
    half = steps / 2
    spent = min(step, half) * cheap + max(0.0, step - half) * dear
    return spent / (half * cheap + (steps - half) * dear)


def markdown(rows: Mapping[str, Any], budget_images: int) -> str:
    lines = [
        "# The recipe for small compute: one change at a time, equal compute",
        "",
        f"`python -m colorizers.recipe` — ECCV16 continued from `{START}`, seed 0 (but `base-seed-1`), "
        f"{budget_images:,} base crops' worth of convolution FLOPs per trial ({SCRATCH_BUDGET:,} for the "
        "`scratch` trials, from a random start), one thread each; scored on the same "
        f"{VAL_IMAGES} validation photos (centre {VAL_CROP}² crops), each score the mean of the "
        "validations in the last quarter of the budget. Lower CE is better; chroma ÷ truth "
        "is the sepia symptom (1 = as colourful as the photos). Δ: against `base` (`scratch` for the "
        "scratch trials); `base-seed-1` shows how far the seed alone moves them.",
        "",
        "| trial | change | steps | img/s | val CE (Δ) | rebalanced CE at λ 0.5 (Δ) | chroma ÷ truth |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        final = row["final"]
        change = ", ".join(_change(k, v) for k, v in row["changes"].items()) or "—"
        rates = sorted(row["images_per_s"])
        rate = f"{rates[len(rates) // 2]:.1f}" if rates else "—"
        if not final:
            lines.append(f"| {name} | {change} | {row['steps']} | {rate} | not finished | | |")
            continue

        chroma = final.get("val_chroma", 0.0) / max(1e-9, final.get("val_chroma_truth", 1.0))
        against = rows.get(row["against"], {}).get("final", {}) if row["against"] else {}
        ce, rebal = (_with_delta(final, against, k) for k in ("val_ce", "val_ce_rebal_paper"))
        lines.append(f"| {name} | {change} | {row['steps']} | {rate} | {ce} | {rebal} | {chroma:.2f}× |")
    return "\n".join(lines) + "\n"


_KNOB_NAMES = {"lambda_rebal": "λ", "first_crop": "first crop"}


def _change(knob: str, value: Any) -> str:
    """One change of a trial, as the table shows it."""
    if knob == "init_from":
        return f"from {value}" if value else "from scratch"
    if knob == "budget_images":
        return f"{value:,} crops' compute"
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{_KNOB_NAMES.get(knob, knob)} {shown}"


def _with_delta(final: Mapping[str, float], base: Mapping[str, float], key: str) -> str:
    if key not in final:
        return "—"
    return f"{final[key]:.3f}" + (f" ({final[key] - base[key]:+.3f})" if key in base else "")


def plot(rows: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    tab20 = plt.get_cmap("tab20")
    colours = [tab20(i / 19) for i in range(20)]
    for i, (name, row) in enumerate(rows.items()):
        if not row["curve"]:
            continue
        x = [p["budget"] for p in row["curve"]]
        # one colour per trial; the trials from scratch dashed, against their own base
        dashed = "--" if row["against"] == "scratch" or name == "scratch" else "-"
        style: dict[str, Any] = {"linewidth": 1.2, "color": colours[i % len(colours)], "linestyle": dashed}
        if name in ("base", "scratch"):
            style.update(linewidth=2.5, color="black")
        for ax, key in zip(axes, ("val_ce", "val_ce_rebal_paper"), strict=True):
            ax.plot(x, [p.get(key, float("nan")) for p in row["curve"]], label=name, **style)
    for ax, title in zip(axes, ("validation CE", "validation CE, rebalanced at λ 0.5"), strict=True):
        ax.set_xlabel("share of the compute budget")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m colorizers.recipe", description=__doc__.splitlines()[0])
    p.add_argument("--trials", default="", help="comma-separated names (default: all, in order)")
    p.add_argument("--budget-images", type=int, default=BUDGET_IMAGES)
    p.add_argument("--jobs", type=int, default=2, help="trials at a time (one thread each)")
    p.add_argument("--report", action="store_true", help="only write the report from what has finished")
    p.add_argument("--runs", type=Path, default=RUNS)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = [n for n in args.trials.split(",") if n] or list(TRIALS)
    unknown = [n for n in names if n not in TRIALS]
    if unknown:
        p.error(f"unknown trial(s) {unknown}; known: {', '.join(TRIALS)}")
    trials = {n: TRIALS[n] for n in names}
    flops = flops_table(TRIALS)
    steps = {n: steps_for(t, args.budget_images, flops) for n, t in TRIALS.items()}
    if not args.report:
        run_trials(trials, steps, args.runs, args.cache, args.jobs)
    rows = summarise(TRIALS, steps, args.runs, flops)
    args.results.mkdir(parents=True, exist_ok=True)
    report = {"budget_images": args.budget_images, "val_crop": VAL_CROP, "val_images": VAL_IMAGES,
              "flops": {f"{w:g}@{c}": f for (w, c), f in flops.items()}, "trials": rows}  # fmt: skip
    (args.results / "recipe.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / "recipe.md").write_text(markdown(rows, args.budget_images))
    plot(rows, args.results / "recipe.png")
    print((args.results / "recipe.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
