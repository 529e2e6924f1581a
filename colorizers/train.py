"""Train the ECCV16 or SIGGRAPH17 colorizer on the cached photos (`python -m colorizers.data` first).

Both models: random crops mirrored half the time; the run stops after `--minutes` of training (or
`--max-steps`), the learning rate following a cosine from `--lr` down to `--lr`/10 over that budget.

ECCV16 (`--model eccv16`): recipe of docs/colorization.md §3.1, scaled to a CPU budget: the
L channel in, 313 logits at H/4 out, soft-encoded targets (10 nearest bins, σ = 5) of the ab
point-sampled every 4th pixel, per-pixel class rebalancing with λ = `--lambda-rebal` from our own
training prior, gray images masked out, Adam (β = 0.9, 0.99).

SIGGRAPH17 (`--model siggraph17`): colorization-pytorch's recipe (docs/colorization.md §3.2) on
the same crops, loop and schedule. Images with too little colour are dropped from the batch
(`hint_sim.colourful`); targets are the 529-class a-major grid index of the ab at H/4 and the ab
itself. The authors' four stages (classification 115 epochs, then regression with hints 15) are
compressed to two over the time budget:

1. the first `--classification-fraction` of it: no hints, loss = CE(529 logits). The regression
   branch would read detached features and has no loss term, so it is not computed at all;
2. the rest: simulated hints (`hint_sim`, P(none) = 1/8), loss = CE + 10·L1(ab/110); the class head
   reads the detached trunk, so the trunk learns from the L1 term only, as upstream.

Adam follows colorization-pytorch (β = 0.9, 0.999, no weight decay). The hint mask is centred
(mask_offset 0.5, colorization-pytorch's `mask_cent`); the registry entry records it.

Class rebalancing for SIGGRAPH17 (`--lambda-rebal` below 1; upstream has none): each pixel's CE and
L1 terms are weighted by the ECCV16 rebalancing weight of its true colour's bin (λ as in
docs/colorization.md §3.1, from our training prior), the cure the ECCV16 paper gives for the
desaturated, sepia-toned output a plain loss yields.

Hint locality (`--locality-weight W`, 0 = upstream's recipe; issue #15's halo): in the regression
stage, each step also runs the batch without hints and adds W · mean |ab − ab_no_hints| / 110 over the
pixels farther than a quarter of the crop from every hinted pixel (the evaluation's 64 px of a 256²
crop, scaled), so hints stop recolouring the far side of the image. Both passes get the gradient:
with the no-hint output detached (a moving target of the same weights) a 20-minute trial ran away,
the hinted output pulled towards a no-hint output that the shared weights then pushed further
(no-hint chroma 15 -> 38 against the truth's 20, ab L1 11 -> 25), while the far change fell 7.3 -> 1.1.
It costs a second forward and backward pass per step.

Continuing from a shipped checkpoint: `--init-from NAME` (a registry name or a .pth file) loads its
weights when the run starts fresh; a fine-tuning run of a checkpoint that already went through both
stages uses `--classification-fraction 0`.

Everything needed to resume is in `<run-dir>/last.pt` (model, optimiser, step, elapsed time, RNG
states), written every `--save-every` minutes; starting the same command again resumes it (`--fresh`
starts over; a larger `--minutes` continues a finished run, the cosine picking up where that budget
puts it). At the end the weights are written as an fp16 state_dict to
`colorizers/checkpoints/<name>.pth`, and the registry entry to paste into `colorizers/weights.py` is
printed with the file's SHA-256; `--ship-only` does that for `last.pt` as it stands, without training.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from colorizers import harness, hint_sim, quantize
from colorizers.eccv16 import ECCVGenerator
from colorizers.harness import DEFAULT_RUNS
from colorizers.run_state import RunState
from colorizers.siggraph17 import SIGGRAPHGenerator
from contract import AB_NORM, L_CENT, L_NORM

log = logging.getLogger(__name__)

MASK_OFFSET = 0.5  # our SIGGRAPH17 checkpoints see mask - 0.5, as colorization-pytorch's retrained ones
L1_WEIGHT = 10.0  # colorization-pytorch: loss_G = CE + 10 · mean L1 in ab/110 units
HALO_FRACTION = 0.25  # "far from every hint": the evaluation's 64 px of 256, as a share of the crop
# Adam (betas, weight decay) per model: the Caffe ECCV16 solver; colorization-pytorch's optimiser.
PAPER_LAMBDA = 0.5  # the ECCV16 paper's rebalancing: a validation loss comparable across runs' λ
ADAM = {"eccv16": ((0.9, 0.99), 1e-3), "siggraph17": ((0.9, 0.999), 0.0)}


@dataclass
class Batch:
    """One training batch: input L, soft target over the bins, per-pixel loss weights."""

    lightness: torch.Tensor  # (N,1,S,S), L in [0, 100]
    target: torch.Tensor  # (N,313,S/4,S/4)
    weights: torch.Tensor  # (N,S/4,S/4): rebalancing weight x non-gray mask


def make_bin_weights(cache: Path, lambda_rebal: float, device: torch.device) -> torch.Tensor:
    """The 313 rebalancing weights at `lambda_rebal` from the cache's training prior."""
    prior = np.load(cache / "prior.npy")
    return torch.from_numpy(quantize.rebalance_weights(prior, lambda_rebal)).float().to(device)


def make_batch(lab: torch.Tensor, centres: torch.Tensor, bin_weights: torch.Tensor) -> Batch:
    """(N,3,S,S) Lab crops -> Batch. ab is point-sampled at stride 4 like the Caffe data layer."""
    ab = lab[:, 1:, ::4, ::4]
    target = quantize.soft_encode(ab, centres)
    # The weight of each pixel's most likely bin: the nearest (the target's argmax, without a pass over Q).
    weights = bin_weights[quantize.nearest_bin(ab, centres)] * quantize.nongray_mask(ab)[:, None, None]
    return Batch(lab[:, :1], target, weights)


def train_step(
    model: ECCVGenerator, optimizer: torch.optim.Optimizer, batch: Batch, *, bf16: bool = False
) -> tuple[float, float]:
    """One Adam step (the forward under bf16 autocast if `bf16`); returns (rebalanced loss, plain CE)."""
    model.train()
    with harness.mixed_precision(bf16, batch.lightness.device):
        logits = model.logits(batch.lightness)
    loss, plain = quantize.rebalanced_cross_entropy(logits.float(), batch.target, batch.weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(plain)


@torch.no_grad()
def validate(
    model: ECCVGenerator, batches: list[Batch], centres: torch.Tensor, paper_weights: list[torch.Tensor]
) -> dict[str, float]:
    """Mean plain and rebalanced CE on the fixed validation crops, the rebalanced CE at the paper's
    λ = 0.5 whatever the run's (`paper_weights`, per batch: comparable across λ), and of the T=0.38
    decode the ab L2 and the mean chroma (against the truth's: the sepia symptom)."""
    model.eval()
    totals = np.zeros(6)
    for batch, paper in zip(batches, paper_weights, strict=True):
        logits = model.logits(batch.lightness)
        loss, plain = quantize.rebalanced_cross_entropy(logits, batch.target, batch.weights)
        at_paper, _ = quantize.rebalanced_cross_entropy(logits, batch.target, paper)
        ab = quantize.annealed_mean(logits, centres, 0.38)
        truth = (batch.target.permute(0, 2, 3, 1) @ centres).permute(0, 3, 1, 2)  # soft-target mean ≈ ab
        totals += (
            float(plain), float(loss), float(at_paper), float((ab - truth).norm(dim=1).mean()),
            float(ab.norm(dim=1).mean()), float(truth.norm(dim=1).mean()),
        )  # fmt: skip
    names = ("val_ce", "val_ce_rebal", "val_ce_rebal_paper", "val_ab_l2", "val_chroma", "val_chroma_truth")
    return dict(zip(names, (totals / max(1, len(batches))).tolist(), strict=True))


@dataclass
class HintBatch:
    """One SIGGRAPH17 batch: inputs (L, hints, 0/1 mask) and targets (ab, 529-class index at H/4)."""

    lightness: torch.Tensor  # (N,1,S,S), L in [0, 100]
    hint: torch.Tensor  # (N,2,S,S) ab hints in Lab units, 0 off the hints
    mask: torch.Tensor  # (N,1,S,S) 1 on the hints
    ab: torch.Tensor  # (N,2,S,S) ground truth
    target: torch.Tensor  # (N,S/4,S/4) int64 grid index
    weights: torch.Tensor | None = None  # (N,S/4,S/4) rebalancing weight of each pixel's true bin


def make_hint_batch(
    lab: torch.Tensor,
    rng: np.random.Generator,
    *,
    hints: bool,
    centres: torch.Tensor | None = None,
    bin_weights: torch.Tensor | None = None,
) -> HintBatch | None:
    """(N,3,S,S) Lab crops -> HintBatch of the colourful ones (None if none is), hints if asked.

    With the 313 `centres` and their `bin_weights`, each H/4 pixel gets the weight of its nearest bin.
    """
    lab = lab[hint_sim.colourful(lab[:, 1:])]
    if len(lab) == 0:
        return None
    ab = lab[:, 1:]
    if hints:
        hint, mask = hint_sim.sample_hints(ab, rng)
    else:
        hint, mask = torch.zeros_like(ab), torch.zeros_like(lab[:, :1])
    small = ab[:, :, ::4, ::4]
    pixel_weights = None
    if centres is not None and bin_weights is not None:
        pixel_weights = bin_weights[quantize.nearest_bin(small, centres)]
    return HintBatch(lab[:, :1], hint, mask, ab, hint_sim.ab_class_index(small), pixel_weights)


def siggraph_forward(
    model: SIGGRAPHGenerator, batch: HintBatch, *, classification: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`model.forward_both` with colorization-pytorch's training detaches -> (ab or None, logits).

    Classification: only the trunk and class head (the regression branch would get no gradient).
    Regression: the class head reads the detached trunk, so only the L1 term trains the trunk.
    Same layers and arithmetic as `forward_both` (a test checks they agree).
    """
    x = torch.cat(
        ((batch.lightness - L_CENT) / L_NORM, batch.hint / AB_NORM, batch.mask - model.mask_offset), 1
    )
    conv1_2 = model.model1(x)
    conv2_2 = model.model2(conv1_2[:, :, ::2, ::2])
    conv3_3 = model.model3(conv2_2[:, :, ::2, ::2])
    conv4_3 = model.model4(conv3_3[:, :, ::2, ::2])
    conv7_3 = model.model7(model.model6(model.model5(conv4_3)))
    conv8_3 = model.model8(model.model8up(conv7_3) + model.model3short8(conv3_3))
    if classification:
        return None, model.model_class(conv8_3)
    conv9_3 = model.model9(model.model9up(conv8_3) + model.model2short9(conv2_2))
    conv10_2 = model.model10(model.model10up(conv9_3) + model.model1short10(conv1_2))
    return model.model_out(conv10_2) * AB_NORM, model.model_class(conv8_3.detach())


def siggraph_loss(
    ab: torch.Tensor | None, logits: torch.Tensor, batch: HintBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (CE + 10·L1(ab/110), or CE alone without `ab`; the plain CE term).

    With `batch.weights`, both terms are means of per-pixel losses times the pixel's rebalancing
    weight (the L1 weights are the H/4 ones, repeated over each 4x4 block).
    """
    if batch.weights is None:
        ce = F.cross_entropy(logits, batch.target)
        if ab is None:
            return ce, ce
        return ce + L1_WEIGHT * (ab - batch.ab).abs().mean() / AB_NORM, ce
    per_pixel = F.cross_entropy(logits, batch.target, reduction="none")  # (N,S/4,S/4)
    ce = (batch.weights * per_pixel).mean()
    if ab is None:
        return ce, per_pixel.mean().detach()
    full = batch.weights.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    l1 = (full * (ab - batch.ab).abs()).mean() / AB_NORM
    return ce + L1_WEIGHT * l1, per_pixel.mean().detach()


def far_from_hints(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(N,1,S,S) 0/1 hint mask -> 1 where no hinted pixel lies within `radius` (Chebyshev: a square
    around each hint, which holds the Euclidean disc, so "far" here is also far for the evaluation)."""
    # The square's max as a row max then a column max: 2k comparisons a pixel instead of k². At crops
    # of 192² (k = 97) one k x k pooling took 2.5 s, and training ran at 0.8 crops/s instead of 1.1.
    k = 2 * radius + 1
    near = F.max_pool2d(mask, kernel_size=(1, k), stride=1, padding=(0, radius))
    near = F.max_pool2d(near, kernel_size=(k, 1), stride=1, padding=(radius, 0))
    return 1.0 - near


def locality_loss(
    model: SIGGRAPHGenerator, ab: torch.Tensor, batch: HintBatch, *, bf16: bool = False
) -> torch.Tensor:
    """Mean |ab − ab without hints| / 110 over the pixels far from every hint (0 if there are none).

    The no-hint pass keeps its gradient, so the two outputs meet rather than one chasing the other
    (see the module docstring for the run-away a detached target gave). It runs under bf16 autocast
    if `bf16`, as the step's forward."""
    with harness.mixed_precision(bf16, batch.lightness.device):
        plain, _ = model.forward_both(
            batch.lightness, torch.zeros_like(batch.hint), torch.zeros_like(batch.mask)
        )
    plain = plain.float()
    far = far_from_hints(batch.mask, max(1, round(HALO_FRACTION * batch.mask.shape[-1])))
    far = far * (batch.mask.flatten(1).amax(1) > 0).view(-1, 1, 1, 1)  # images with hints only
    return (far * (ab - plain).abs()).sum() / (2 * far.sum()).clamp(min=1.0) / AB_NORM


def siggraph_step(
    model: SIGGRAPHGenerator,
    optimizer: torch.optim.Optimizer,
    batch: HintBatch,
    *,
    classification: bool,
    locality_weight: float = 0.0,
    bf16: bool = False,
) -> tuple[float, float]:
    """One Adam step of the given stage (forward passes under bf16 autocast if `bf16`); returns
    (loss, CE)."""
    model.train()
    with harness.mixed_precision(bf16, batch.lightness.device):
        ab, logits = siggraph_forward(model, batch, classification=classification)
    ab = None if ab is None else ab.float()
    loss, ce = siggraph_loss(ab, logits.float(), batch)
    if ab is not None and locality_weight > 0:
        loss = loss + locality_weight * locality_loss(model, ab, batch, bf16=bf16)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(ce.detach())


@torch.no_grad()
def validate_siggraph(
    model: SIGGRAPHGenerator, auto: list[HintBatch], hinted: list[HintBatch]
) -> dict[str, float]:
    """CE and ab L1 (Lab units) without hints, ab L1 with the fixed simulated hints, the mean
    chroma of the no-hint output and of the truth (the sepia symptom: the first far below the second),
    and the halo: the mean ab change the hints cause far from every hint (`HALO_FRACTION` of the crop)."""
    model.eval()
    totals = np.zeros(6)
    for plain, with_hints in zip(auto, hinted, strict=True):
        ab, logits = model.forward_both(plain.lightness, plain.hint, plain.mask)
        ab_hinted, _ = model.forward_both(with_hints.lightness, with_hints.hint, with_hints.mask)
        far = far_from_hints(with_hints.mask, max(1, round(HALO_FRACTION * with_hints.mask.shape[-1])))
        far = far * (with_hints.mask.flatten(1).amax(1) > 0).view(-1, 1, 1, 1)
        change = (ab_hinted - ab).norm(dim=1, keepdim=True)
        totals += (
            float(F.cross_entropy(logits, plain.target)),
            float((ab - plain.ab).abs().mean()),
            float((ab_hinted - with_hints.ab).abs().mean()),
            float(ab.norm(dim=1).mean()),
            float(plain.ab.norm(dim=1).mean()),
            float((far * change).sum() / far.sum().clamp(min=1.0)),
        )
    names = ("val_ce", "val_l1_auto", "val_l1_hints", "val_chroma_auto", "val_chroma_truth", "val_halo")
    return dict(zip(names, (totals / max(1, len(auto))).tolist(), strict=True))


def registry_entry(
    name: str, width: float, sha256: str, filename: str, meta: dict[str, str], arch: str = "eccv16"
) -> str:
    recipe = f"λ={meta['lambda']}" if arch == "eccv16" else f"hints, mask offset {meta['mask_offset']}"
    if arch != "eccv16" and meta.get("lambda", "1") != "1":
        recipe += f", λ={meta['lambda']}"
    if meta.get("init_from"):
        recipe += f", from {meta['init_from']}"
    return harness.registry_source(
        name=name,
        arch_source=f'"{arch}"',
        width=width,
        description=f"trained by colorizers.train on the colorizers.data photos ({recipe})",
        sha256=sha256,
        filename=filename,
        meta=meta,
    )


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lambda-rebal",
        type=float,
        default=None,
        help="rebalancing λ: 1 = none, 0 = full 1/p (default: eccv16 0.5 as the paper, siggraph17 1)",
    )
    p.add_argument(
        "--ship-only", action="store_true", help="write the fp16 checkpoint of <run-dir>/last.pt and stop"
    )
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="Adam L2 (default: eccv16 1e-3 as Caffe, siggraph17 0)",
    )
    p.add_argument(
        "--locality-weight",
        type=float,
        default=0.0,
        help="siggraph17: weight of the far-from-hints change penalty (0: upstream recipe)",
    )
    p.add_argument(
        "--classification-fraction",
        type=float,
        default=0.3,
        help="siggraph17: share of the budget for stage 1 (CE only, no hints) (default: %(default)s)",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m colorizers.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("eccv16", "siggraph17"), default="eccv16")
    harness.add_common_arguments(
        p,
        width=0.25,
        crop_help="square crop size, a multiple of 8",
        name_help="checkpoint name (default: eccv16-w<width>-l<λ>, siggraph17-w<width>)",
        model_arguments=_model_arguments,
    )
    args = p.parse_args(argv)
    if args.lambda_rebal is None:
        args.lambda_rebal = 0.5 if args.model == "eccv16" else 1.0
    sizes = {"--crop": args.crop, "--first-crop": args.first_crop, "--val-crop": args.val_crop}
    for flag, size in sizes.items():
        if (size or flag == "--crop") and (size % 8 or size < 32):
            p.error(f"{flag} must be a multiple of 8 and at least 32, got {size}")
    if not 0 <= args.lambda_rebal <= 1:
        p.error(f"--lambda-rebal must be in [0, 1], got {args.lambda_rebal}")
    if args.locality_weight < 0:
        p.error(f"--locality-weight must be at least 0, got {args.locality_weight}")
    if not 0 <= args.classification_fraction <= 1:
        p.error(f"--classification-fraction must be in [0, 1], got {args.classification_fraction}")
    if args.weight_decay is None:
        args.weight_decay = ADAM[args.model][1]
    if not args.name:
        args.name = (
            f"eccv16-w{args.width:g}-l{args.lambda_rebal:g}"
            if args.model == "eccv16"
            else f"siggraph17-w{args.width:g}" + (f"-l{args.lambda_rebal:g}" if args.lambda_rebal < 1 else "")
        )
    args.run_dir = args.run_dir or DEFAULT_RUNS / args.name
    return args


class _Colorizer(harness.Recipe):
    """What both models share: rebalancing weights from our training prior, Adam, `--init-from`,
    the log fields and the registry entry."""

    def __init__(
        self,
        args: argparse.Namespace,
        device: torch.device,
        rng: np.random.Generator,
        model: ECCVGenerator | SIGGRAPHGenerator,
    ) -> None:
        self.args, self.device, self.rng = args, device, rng
        self.arch = args.model
        self.centres = torch.from_numpy(quantize.bin_centres()).to(device)
        self.bin_weights = make_bin_weights(args.cache, args.lambda_rebal, device)
        self.model = model.to(device)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=args.lr,
            betas=ADAM[args.model][0],
            weight_decay=args.weight_decay,
        )

    def prepare(self, run: RunState, val_lab: torch.Tensor) -> None:
        self.prepare_validation(val_lab)

    def prepare_validation(self, val_lab: torch.Tensor) -> None:
        raise NotImplementedError

    def summary(self) -> str:
        a = self.args
        return f"width {a.width:g}, crop {a.crop}, batch {a.batch}, λ {a.lambda_rebal:g}"

    def progress(self, running: np.ndarray) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        return f"loss {running[0]:.3f} (ce {running[1]:.3f}) | lr {lr:.2e}"

    def record(self, running: np.ndarray, rate: float) -> dict[str, Any]:
        return {"loss": float(running[0]), "ce": float(running[1]), "img_per_s": round(rate, 1)}

    def registry_entry(self, sha256: str, filename: str, common: dict[str, str]) -> str:
        a = self.args
        recipe = (
            {"lambda": f"{a.lambda_rebal:g}"}
            if a.model == "eccv16"
            else {
                "mask_offset": f"{MASK_OFFSET:g}",
                "classification_fraction": f"{a.classification_fraction:g}",
                **({"lambda": f"{a.lambda_rebal:g}"} if a.lambda_rebal < 1 else {}),
                **({"locality_weight": f"{a.locality_weight:g}"} if a.locality_weight > 0 else {}),
            }
        )
        return registry_entry(a.name, a.width, sha256, filename, {**recipe, **common}, a.model)


class EccvRecipe(_Colorizer):
    model: ECCVGenerator

    def __init__(self, args: argparse.Namespace, device: torch.device, rng: np.random.Generator) -> None:
        super().__init__(args, device, rng, ECCVGenerator(width=args.width))

    def prepare_validation(self, val_lab: torch.Tensor) -> None:
        self.val_batches = [
            make_batch(chunk.to(self.device), self.centres, self.bin_weights)
            for chunk in val_lab.split(self.args.batch)
        ]
        paper = make_bin_weights(self.args.cache, PAPER_LAMBDA, self.device)
        self.val_paper_weights = [
            make_batch(chunk.to(self.device), self.centres, paper).weights
            for chunk in val_lab.split(self.args.batch)
        ]

    def validate(self) -> dict[str, float]:
        return validate(self.model, self.val_batches, self.centres, self.val_paper_weights)

    def step(self, crops: torch.Tensor, run: RunState, fraction: float) -> tuple[float, float]:
        batch = make_batch(crops.to(self.device), self.centres, self.bin_weights)
        return train_step(self.model, self.optimizer, batch, bf16=self.args.bf16)


class SiggraphRecipe(_Colorizer):
    model: SIGGRAPHGenerator

    def __init__(self, args: argparse.Namespace, device: torch.device, rng: np.random.Generator) -> None:
        super().__init__(args, device, rng, SIGGRAPHGenerator(width=args.width, mask_offset=MASK_OFFSET))
        self.rebalance = args.lambda_rebal < 1

    def prepare_validation(self, val_lab: torch.Tensor) -> None:
        # Own generator: the validation hints are the same whatever the training RNG has done.
        val_rng = np.random.default_rng(self.args.seed + 1)
        made = [
            (
                make_hint_batch(
                    chunk, val_rng, hints=False, centres=self.centres, bin_weights=self.bin_weights
                ),
                make_hint_batch(
                    chunk, val_rng, hints=True, centres=self.centres, bin_weights=self.bin_weights
                ),
            )
            for chunk in val_lab.to(self.device).split(self.args.batch)
        ]
        self.val_auto = [a for a, _ in made if a is not None]
        self.val_hinted = [h for _, h in made if h is not None]

    def validate(self) -> dict[str, float]:
        return validate_siggraph(self.model, self.val_auto, self.val_hinted)

    def begin(self, run: RunState, training: bool) -> None:
        log.info("siggraph17: classification (no hints) for the first %g of the budget, then hints",
                 self.args.classification_fraction)  # fmt: skip

    def step(self, crops: torch.Tensor, run: RunState, fraction: float) -> tuple[float, float] | None:
        classification = fraction < self.args.classification_fraction
        hint_batch = make_hint_batch(
            crops.to(self.device),
            self.rng,
            hints=not classification,
            centres=self.centres if self.rebalance else None,
            bin_weights=self.bin_weights if self.rebalance else None,
        )
        if hint_batch is None:  # every crop gray: draw again
            return None
        if not classification and not any(h.get("stage") == "regression" for h in run.history):
            run.history.append(
                {"step": run.step, "minutes": round(run.elapsed / 60, 2), "stage": "regression"}
            )
            log.info("siggraph17: regression with hints from step %d", run.step)
        return siggraph_step(self.model, self.optimizer, hint_batch, classification=classification,
                             locality_weight=self.args.locality_weight, bf16=self.args.bf16)  # fmt: skip


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training as configured; returns the shipped checkpoint's path.

    Progress also goes to `<run-dir>/train.log` (the `colorizers` loggers at INFO).
    """
    recipe = EccvRecipe if args.model == "eccv16" else SiggraphRecipe
    return harness.run(args, recipe, ship_only=args.ship_only, log_file=args.run_dir / "train.log")


def main(argv: list[str] | None = None) -> int:
    return harness.main(parse_args, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
