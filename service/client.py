"""A small command-line client: `python -m service.client colorize IN OUT [--target HOST:PORT]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc

_FORMATS = {
    ".png": colorize_pb2.IMAGE_FORMAT_PNG,
    ".jpg": colorize_pb2.IMAGE_FORMAT_JPEG,
    ".jpeg": colorize_pb2.IMAGE_FORMAT_JPEG,
    ".webp": colorize_pb2.IMAGE_FORMAT_WEBP,
}


def colorize(args: argparse.Namespace) -> int:
    suffix = args.output.suffix.lower()
    if suffix not in _FORMATS:
        print(f"output must end in one of {sorted(_FORMATS)}, got {args.output.name}", file=sys.stderr)
        return 2
    request = colorize_pb2.ColorizeRequest(
        image=args.input.read_bytes(),
        model=args.model,
        working_size=args.working_size,
        output_format=_FORMATS[suffix],
        quality=args.quality,
    )
    if args.temperature is not None:
        request.temperature = args.temperature
    request.hints.extend(args.hint)
    with grpc.insecure_channel(
        args.target,
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    ) as channel:
        try:
            response = colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    args.output.write_bytes(response.image)
    t = response.timings
    print(
        f"{args.output} {response.width}x{response.height} model={response.model} v{response.model_version} "
        f"checkpoint={response.checkpoint}{'' if response.trained else ' (UNTRAINED)'} "
        f"T={response.temperature:.2f}\n  decode {t.decode_ms:.1f} ms, triton {t.triton_ms:.1f} ms, "
        f"post {t.postprocess_ms:.1f} ms, total {t.total_ms:.1f} ms"
    )
    return 0


def parse_hint(text: str) -> colorize_pb2.ColorHint:
    """`X,Y,#RRGGBB[,PATCH]` -> a ColorHint."""
    parts = text.split(",")
    if len(parts) not in (3, 4) or not parts[2].startswith("#") or len(parts[2]) != 7:
        raise argparse.ArgumentTypeError(f"hint {text!r} is not X,Y,#RRGGBB[,PATCH]")
    try:
        x, y = int(parts[0]), int(parts[1])
        rgb = [int(parts[2][i : i + 2], 16) for i in (1, 3, 5)]
        patch = int(parts[3]) if len(parts) == 4 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"hint {text!r} is not X,Y,#RRGGBB[,PATCH]") from None
    return colorize_pb2.ColorHint(
        x=x, y=y, color=colorize_pb2.Rgb(r=rgb[0], g=rgb[1], b=rgb[2]), patch_size=patch
    )


def suggest(args: argparse.Namespace) -> int:
    request = colorize_pb2.SuggestColorsRequest(
        image=args.input.read_bytes(), x=args.x, y=args.y, k=args.k, seed=args.seed
    )
    with grpc.insecure_channel(args.target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        try:
            response = colorize_pb2_grpc.ColorizerStub(channel).SuggestColors(request, timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    for c in response.colors:
        print(
            f"#{c.color.r:02x}{c.color.g:02x}{c.color.b:02x} ab=({c.a:6.1f}, {c.b:6.1f}) {c.confidence:6.1%}"
        )
    print(
        f"model={response.model} checkpoint={response.checkpoint}{'' if response.trained else ' (UNTRAINED)'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--timeout", type=float, default=60.0)
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("colorize", help="colorize one image")
    c.add_argument("input", type=Path)
    c.add_argument("output", type=Path)
    c.add_argument("--model", default="")
    c.add_argument("--temperature", type=float)
    c.add_argument("--working-size", type=int, default=0)
    c.add_argument("--quality", type=int, default=0)
    c.add_argument(
        "--hint", type=parse_hint, action="append", default=[], help="X,Y,#RRGGBB[,PATCH] (repeatable)"
    )
    c.set_defaults(run=colorize)
    s = commands.add_parser("suggest", help="suggest colours for one pixel (SIGGRAPH17)")
    s.add_argument("input", type=Path)
    s.add_argument("x", type=int)
    s.add_argument("y", type=int)
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=suggest)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
