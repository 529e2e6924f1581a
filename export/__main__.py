"""`python -m export`: checkpoint -> ONNX (parity-gated) -> model_repository/<model>/<version>/.

Writes `<version>/model.onnx`, `<version>/model.py` (the Python-backend host) and
`configs/{cpu,gpu}.pbtxt`. The checkpoint is the project's default for the model unless
`--weights FILE` names another registered one (its SHA-256 must be in colorizers.weights), or
`--weights-from authors` asks for the authors' released ECCV16 and SIGGRAPH17 checkpoints: fetched
from their registered URLs into .cache/weights/ once (SHA-256 checked; `export.fetch`), used from
there after. Larsson16 has no such release and keeps the project's checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import onnx

from colorizers import weights
from contract import (
    ANNEALED_T_DEFAULT,
    ARCHITECTURE,
    HINT_MODEL,
    MODELS,
    PARAM_CHECKPOINT,
    PARAM_CHECKPOINT_SHA256,
    PARAM_SUGGEST_SOFTEN,
    PARAM_TEMPERATURE,
    PARAM_TRAINED,
)
from export.fetch import FetchError, fetch_authors
from export.onnx_export import export_model
from export.triton_config import cpu_config, gpu_config

log = logging.getLogger("export")

PARITY_SIZES = ((256, 256), (96, 160))  # square working size, and a non-square one


def export_to_repository(
    model_name: str, repository: Path, *, version: int = 1, weights_file: Path | None = None
) -> Path:
    spec = MODELS[model_name]
    checkpoint, model = weights.resolve(ARCHITECTURE[model_name], weights_file)
    log.info("exporting %s from checkpoint %s (trained=%s)", model_name, checkpoint.name, checkpoint.trained)
    onnx_model, parity = export_model(model, spec, parity_sizes=PARITY_SIZES)
    for p in parity:
        log.info("parity %s: max |onnx - torch| = %.3g", p.shape, p.max_abs_diff)
    model_dir = repository / spec.name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "configs").mkdir(exist_ok=True)
    onnx.save(onnx_model, version_dir / "model.onnx")
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), version_dir / "model.py")
    params = {
        PARAM_CHECKPOINT: checkpoint.name,
        PARAM_CHECKPOINT_SHA256: checkpoint.sha256 or "none",
        PARAM_TRAINED: "true" if checkpoint.trained else "false",
        PARAM_TEMPERATURE: checkpoint.meta.get("temperature", f"{ANNEALED_T_DEFAULT:g}"),
    }
    if model_name == HINT_MODEL:  # the model SuggestColors samples
        params[PARAM_SUGGEST_SOFTEN] = f"{checkpoint.suggest_soften:g}"
    (model_dir / "configs" / "cpu.pbtxt").write_text(cpu_config(spec, params))
    (model_dir / "configs" / "gpu.pbtxt").write_text(gpu_config(spec, params))
    return version_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", choices=sorted(MODELS), action="append", help="default: every model")
    parser.add_argument("--weights", type=Path, help="a registered checkpoint file (only with one --model)")
    parser.add_argument(
        "--weights-from",
        choices=("project", "authors"),
        default="project",
        help="authors: the authors' ECCV16/SIGGRAPH17 releases (fetched once into .cache/weights/)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="with --weights-from authors: use .cache/weights/ only, no request",
    )
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    models = args.model or sorted(MODELS)
    if args.weights is not None and len({ARCHITECTURE[m] for m in models}) != 1:
        parser.error("--weights belongs to one architecture: name its --model(s)")
    if args.weights is not None and args.weights_from != "project":
        parser.error("--weights and --weights-from authors name different checkpoints: give one")
    if args.weights is not None:
        try:  # before anything is written: a wrong file leaves the repository as it was
            weights.identify(args.weights)
        except (OSError, ValueError) as exc:
            parser.error(f"--weights: {exc}")
    files = {arch: args.weights for arch in {ARCHITECTURE[m] for m in models}}
    if args.weights_from == "authors":
        # Every file is fetched and verified before anything is written: a failure leaves the
        # repository as it was (the project's own checkpoints, or the last export).
        try:
            fetched = fetch_authors(set(files), offline=args.offline)
        except FetchError as exc:
            print(f"priorlab export: {exc}; {args.repository}/ left as it was", file=sys.stderr)
            return 1
        files.update({arch: path for arch, (_, path) in fetched.items()})
    for name in models:
        path = export_to_repository(
            name, args.repository, version=args.version, weights_file=files[ARCHITECTURE[name]]
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
