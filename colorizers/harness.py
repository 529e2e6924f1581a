"""The training loop of every colorizer trainer: each trainer is its model's `Recipe` plus a call to `run`.

`colorizers.train` (ECCV16, SIGGRAPH17) and `colorizers.train_larsson` (Larsson16) share, through
this module, the common command-line flags (`add_common_arguments`), the learning-rate schedule
(`cosine_lr`) and the loop itself (`run`):

- random training crops (`LabImages.batch`, on the CPU: mirrored half the time by default, `--augment`;
  of `--first-crop` for the first `--first-crop-fraction` of the budget if set, then of `--crop`) go
  to the recipe's `step`; the run stops after `--minutes` of training-step time, resumes included,
  or `--max-steps`;
- the learning rate follows a cosine from `--lr` down to `--lr`/10 over that budget (time or steps,
  whichever is further along);
- every `--val-every` minutes (or `--val-steps` steps), and at the end, the recipe scores the fixed
  validation crops (centre crops of the validation split at `--val-crop`, by default the training
  size) and the history gains an entry, logged as JSON and kept in `<run-dir>/history.json`;
- the steps' forward passes run under bf16 autocast where the CPU has native bf16 (`--precision`,
  `resolve_bf16`): about twice the steps a minute on AMX, the same validation after 500 steps of
  ECCV16 (MODEL_CARD.md, "bf16 training"); validation always runs in fp32;
- every `--save-every` minutes, and at the end, `<run-dir>/last.pt` is written through
  `run_state.Resumable`, whose keys are the resume format; the same command resumes it (`--fresh`
  starts over);
- at the end the weights are written as an fp16 state_dict to `<out>/<name>.pth`, and the registry
  entry for `colorizers/weights.py` is printed with the file's SHA-256 and written to
  `<run-dir>/registry_entry.txt`.

What differs per model (its flags, model and optimiser, batches, loss, validation, log fields and
registry entry) is the trainer's `Recipe`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from colorizers import weights
from colorizers.dataset import AUGMENTATIONS, DEFAULT_CACHE, LabImages, manifest_sha256
from colorizers.run_state import PauseFilter, Progress, Resumable, RunState, save_shipped
from colorizers.weights import CHECKPOINTS_DIR
from service.restore.isa import native_bf16

log = logging.getLogger(__name__)

DEFAULT_RUNS = DEFAULT_CACHE.parent / "colorize-runs"
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """`--precision` -> whether the training steps' forward passes run under bf16 autocast.

    Where the CPU has native bf16 (AMX, avx512_bf16) a SIGGRAPH17 step at width 1/4, crops of 96,
    batch 16 on one thread took 0.58 s in bf16 against 1.10 s in fp32 (Xeon with AMX); emulated bf16
    is slower than fp32, so `auto` keeps fp32 there and `bf16` is refused. On CUDA `auto` is fp32
    (not measured there). Raises ValueError for `bf16` where it cannot run natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cpu"):
        return False
    if device.type != "cpu":
        return True
    native, why = native_bf16()
    if precision == "bf16" and not native:
        raise ValueError(f"--precision bf16 needs native bf16 on the CPU, but {why}; use auto or fp32")
    return native


def mixed_precision(bf16: bool, device: torch.device) -> torch.autocast:
    """The context a training step runs its forward passes in: bf16 autocast if `bf16` (convolutions
    in bf16, their weights and gradients kept fp32), else a no-op. Losses are computed outside it on
    `.float()` outputs, so a log-softmax never runs in bf16."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def cosine_lr(base: float, progress: float) -> float:
    """The learning rate at `progress` (0 to 1, clipped) of the budget: a cosine from base to base/10."""
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def add_common_arguments(
    p: argparse.ArgumentParser,
    *,
    width: float,
    crop_help: str,
    name_help: str,
    model_arguments: Callable[[argparse.ArgumentParser], object],
) -> None:
    """Add the flags `run` reads; `model_arguments` adds the model's own (its `--lr` among them,
    which `run` also reads) after `--batch`, where `--help` lists them."""
    p.add_argument(
        "--width", type=float, default=width, help="channel width multiplier (default: %(default)s)"
    )
    p.add_argument(
        "--minutes", type=float, default=90.0, help="budget of training-step time, resumes included"
    )
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time only)")
    p.add_argument("--crop", type=int, default=128, help=crop_help)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--init-from", default="",
        help="start a fresh run from these weights: a registry name of the same architecture (e.g. "
        "eccv16-w0.25-l1) or a .pth; a run that resumes from <run-dir>/last.pt ignores it",
    )  # fmt: skip
    model_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="forward passes under bf16 autocast (weights, optimiser and losses stay fp32); "
        "auto: bf16 where the CPU runs it natively (avx512_bf16/AMX), fp32 elsewhere",
    )  # fmt: skip
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache (default: %(default)s)")
    p.add_argument("--name", default="", help=name_help)
    p.add_argument("--run-dir", type=Path, default=None, help="default: .cache/colorize-runs/<name>")
    p.add_argument("--out", type=Path, default=CHECKPOINTS_DIR, help="where the fp16 checkpoint goes")
    p.add_argument("--val-images", type=int, default=64, help="validation images scored periodically")
    p.add_argument("--val-every", type=float, default=5.0, help="minutes between validations")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between resumable checkpoints")
    p.add_argument("--fresh", action="store_true", help="ignore <run-dir>/last.pt and start over")
    # the knobs of the small-compute recipe study (colorizers.recipe); the defaults are the old behaviour
    p.add_argument("--val-steps", type=int, default=0, help="validate every N steps instead (0: by minutes)")
    p.add_argument("--val-crop", type=int, default=0, help="validation crop size (0: --crop)")
    p.add_argument(
        "--first-crop", type=int, default=0, help="low resolution first: this crop size at the start (0: off)"
    )
    p.add_argument(
        "--first-crop-fraction", type=float, default=0.5, help="share of the budget at --first-crop"
    )
    p.add_argument(
        "--augment", choices=AUGMENTATIONS, default="flip",
        help="training-crop augmentation: mirror half the time (flip), also rescale (flip-scale), none",
    )  # fmt: skip


def registry_source(
    *,
    name: str,
    arch_source: str,
    width: float,
    description: str,
    sha256: str,
    filename: str,
    meta: dict[str, str],
) -> str:
    """The `Checkpoint(...)` to paste into `colorizers/weights.py`; `arch_source` is the arch as it
    reads there, quotes included."""
    meta_text = ", ".join(f"{k!r}: {v!r}" for k, v in meta.items())
    return (
        "Checkpoint(\n"
        f"    name={name!r},\n"
        f"    arch={arch_source},\n"
        f"    width={width},\n"
        "    trained=True,\n"
        f'    description="{description}",\n'
        f"    sha256={sha256!r},\n"
        f"    filename={filename!r},\n"
        f"    meta={{{meta_text}}},\n"
        ")"
    )


class Recipe:
    """One model's part of a run. `run` builds it (`Build`), loads `last.pt` into its `model` and
    `optimizer`, then calls `prepare`, `summary`, `begin`, and per step `step`, `progress` (and
    `record` + `validate` at each validation), and at the end `registry_entry`."""

    arch: str  # the registry's architecture name (`--init-from` loads only its own)
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def prepare(self, run: RunState, val_lab: torch.Tensor) -> None:
        """After `last.pt` is loaded (or not: `run.step` is 0). `val_lab`: (N,3,S,S) fixed Lab
        validation crops on the CPU, to make once what `validate` scores."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """The validation metrics, added to the history entry."""
        raise NotImplementedError

    def summary(self) -> str:
        """The model's part of the 'training <name>: ...' log line (width, crop, batch, ...)."""
        raise NotImplementedError

    def begin(self, run: RunState, training: bool) -> None:
        """Just before the first step (`training` False: no step follows, only the shipping)."""

    def step(self, crops: torch.Tensor, run: RunState, fraction: float) -> Sequence[float] | None:
        """One optimiser step on (N,3,S,S) Lab training crops (CPU) at `fraction` of the budget;
        its losses, the first the one that must stay finite, or None to draw the crops again
        (no step taken, its time not counted)."""
        raise NotImplementedError

    def progress(self, running: np.ndarray) -> str:
        """The losses' part of the progress line; `running`: the moving average of `step`'s losses."""
        raise NotImplementedError

    def record(self, running: np.ndarray, rate: float) -> dict[str, Any]:
        """The history entry's fields between 'minutes' and the validation metrics."""
        raise NotImplementedError

    def registry_entry(self, sha256: str, filename: str, common: dict[str, str]) -> str:
        """The registry entry; `common`: the meta fields every trainer records (crop, batch, steps,
        minutes, lr, seed, data_manifest_sha256), in that order."""
        raise NotImplementedError


Build = Callable[[argparse.Namespace, torch.device, np.random.Generator], Recipe]


@contextmanager
def _logging_to(path: Path | None) -> Iterator[None]:
    """The `colorizers` loggers at INFO also to `path` (if any) for the duration."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    package_log = logging.getLogger("colorizers")
    level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(level)
        handler.close()


def run(
    args: argparse.Namespace, build: Build, *, ship_only: bool = False, log_file: Path | None = None
) -> Path:
    """Run (or resume) training as `args` (`add_common_arguments`' flags and the model's) configure
    it; returns the shipped checkpoint's path. `ship_only`: ship `last.pt` as it stands, no step;
    `log_file`: progress also goes there (the `colorizers` loggers at INFO)."""
    with _logging_to(log_file):
        return _run(args, build, ship_only)


def _run(args: argparse.Namespace, build: Build, ship_only: bool) -> Path:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.bf16 = resolve_bf16(args.precision, device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_images, val_images = LabImages(args.cache, "train"), LabImages(args.cache, "val")
    recipe = build(args, device, rng)
    checkpoint = Resumable(
        args.run_dir, recipe.model, recipe.optimizer, rng, {k: str(v) for k, v in vars(args).items()}
    )
    if ship_only and not checkpoint.path.is_file():
        raise FileNotFoundError(f"--ship-only: no {checkpoint.path}")
    state = checkpoint.load(fresh=args.fresh)
    start_from = args.init_from if state.step == 0 and not ship_only else ""
    if start_from:
        init_weights(recipe.model, start_from, recipe.arch)
        log.info("starting from the weights of %s", start_from)
    val_count = min(args.val_images, len(val_images))
    val_crop = args.val_crop or args.crop
    val_lab = torch.from_numpy(np.stack([val_images.centre_crop(i, val_crop) for i in range(val_count)]))
    recipe.prepare(state, val_lab)
    log.info(
        "training %s: %s, %d train / %d val images, %g min on %s, %s",
        args.name, recipe.summary(), len(train_images), len(val_images), args.minutes, device,
        "bf16 autocast" if args.bf16 else "fp32",
    )  # fmt: skip
    recipe.begin(state, training=not ship_only)
    if start_from:  # where the curve starts: the validation of the weights it continues
        state.history.append({"step": 0, "minutes": 0.0, "init_from": start_from, **recipe.validate()})
        log.info("%s", json.dumps(state.history[-1]))
    budget = state.elapsed if ship_only else args.minutes * 60  # ship-only: no step
    progress = Progress()
    pauses = PauseFilter()
    last_val, last_save, window = state.elapsed, state.elapsed, (time.monotonic(), state.step)
    running: np.ndarray | None = None
    while state.elapsed < budget and not (args.max_steps and state.step >= args.max_steps):
        started = time.monotonic()
        fraction = max(state.elapsed / budget, state.step / args.max_steps if args.max_steps else 0.0)
        for group in recipe.optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, fraction)
        crop = args.first_crop if args.first_crop and fraction < args.first_crop_fraction else args.crop
        crops = train_images.batch(rng, crop, args.batch, augment=args.augment)
        stepped = recipe.step(crops, state, fraction)
        if stepped is None:
            continue
        losses = np.array(stepped, dtype=np.float64)
        if not math.isfinite(losses[0]):
            raise RuntimeError(f"loss became {float(losses[0])} at step {state.step}; lower --lr")
        state.step += 1
        # the running loss starts at the first step of this process, also when the run resumed
        running = losses if running is None else 0.9 * running + 0.1 * losses
        if device.type == "cuda":
            torch.cuda.synchronize()
        state.elapsed += pauses.count(time.monotonic() - started)
        rate = (state.step - window[1]) * args.batch / max(1e-9, time.monotonic() - window[0])
        progress.show(
            f"step {state.step} | {state.elapsed / 60:5.1f}/{args.minutes:g} min | "
            f"{recipe.progress(running)} | {rate:.1f} img/s"
        )
        done = state.elapsed >= budget or bool(args.max_steps and state.step >= args.max_steps)
        if args.val_steps:
            due = state.step % args.val_steps == 0
        else:
            due = state.elapsed - last_val >= args.val_every * 60
        if due or done:
            state.history.append({"step": state.step, "minutes": round(state.elapsed / 60, 2),
                                  **recipe.record(running, rate), **recipe.validate()})  # fmt: skip
            log.info("%s", json.dumps(state.history[-1]))
            _write_history(args.run_dir, state.history)
            last_val, window = state.elapsed, (time.monotonic(), state.step)
        if state.elapsed - last_save >= args.save_every * 60 or done:
            checkpoint.save(state)
            last_save = state.elapsed
    progress.close()
    return _ship(args, recipe, state)


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """`<run-dir>/history.json`: the validations so far, readable without torch (colorizers.recipe)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")


def _ship(args: argparse.Namespace, recipe: Recipe, state: RunState) -> Path:
    """Write the fp16 weights and the registry entry; print both."""
    filename = f"{args.name}.pth"
    path = args.out / filename
    digest = save_shipped(recipe.model, path)
    size = path.stat().st_size
    common = {
        "crop": str(args.crop),
        "batch": str(args.batch),
        "steps": str(state.step),
        "minutes": f"{state.elapsed / 60:.1f}",
        "lr": f"{args.lr:g}",
        "seed": str(args.seed),
        "data_manifest_sha256": manifest_sha256(args.cache),
        **({"init_from": args.init_from} if args.init_from else {}),
    }
    entry = recipe.registry_entry(digest, filename, common)
    (args.run_dir / "registry_entry.txt").write_text(entry)
    print(f"wrote {path} ({size / 2**20:.2f} MB) sha256 {digest}")
    print("registry entry for colorizers/weights.py:")
    print(entry)
    return path


def init_weights(model: nn.Module, source: str, arch: str) -> None:
    """Load the weights of a registered checkpoint (by name) or of a .pth file into `model`."""
    if source in weights.REGISTRY:
        entry = weights.REGISTRY[source]
        if entry.arch != arch:
            raise ValueError(f"--init-from {source} is a {entry.arch} checkpoint, not {arch}")
        state = weights.load(entry).state_dict()
    else:
        state = torch.load(Path(source), map_location="cpu", weights_only=True)
        state = state.get("model", state)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=True)


def main(
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    train: Callable[[argparse.Namespace], Path],
    argv: list[str] | None,
) -> int:
    """A trainer's `main`: its arguments, INFO logging to stderr, the run."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train(args)
    return 0
