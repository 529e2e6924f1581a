"""The command-line client (stdlib + grpc), run as `priorlab <command>`; every command takes
`--target HOST:PORT` (default `$PRIORLAB_TARGET`, else 127.0.0.1:50051, where `make run` serves):

priorlab colorize IN OUT [--hint X,Y,#RRGGBB]
priorlab suggest IN X Y
priorlab restore denoise IN OUT --sigma 25                  # live progress bar; Ctrl-C cancels
priorlab restore inpaint IN OUT --mask MASK --iterations 3000
priorlab restore super_resolve IN OUT --factor 4 --detach   # prints the job id
priorlab watch JOB_ID [OUT]                                 # re-attach (replays from the start)
priorlab cancel JOB_ID

Security (README "Security"): `--tls` (or `--tls-ca CA.pem`, `$PRIORLAB_TLS_CA`) speaks TLS to the gateway,
`--tls-cert/--tls-key` (`$PRIORLAB_CLIENT_CERT`/`$PRIORLAB_CLIENT_KEY`) add a client certificate (mutual
TLS), and a bearer token is sent from `$PRIORLAB_TOKEN` or `--token-file` (`$PRIORLAB_TOKEN_FILE`): never
on the command line, where other users could read it in the process list.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import grpc

from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc, restore_pb2, restore_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"  # `make run`'s gateway
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
_STYLES = {
    "text": restore_pb2.INPAINT_STYLE_TEXT,
    "large_hole": restore_pb2.INPAINT_STYLE_LARGE_HOLE,
    "region": restore_pb2.INPAINT_STYLE_REGION,
    "pixels": restore_pb2.INPAINT_STYLE_PIXELS,
}

_FORMATS = {
    ".png": colorize_pb2.IMAGE_FORMAT_PNG,
    ".jpg": colorize_pb2.IMAGE_FORMAT_JPEG,
    ".jpeg": colorize_pb2.IMAGE_FORMAT_JPEG,
    ".webp": colorize_pb2.IMAGE_FORMAT_WEBP,
}


def _setting(args: argparse.Namespace, name: str, env: str) -> str:
    value = getattr(args, name, None) or os.environ.get(env, "")
    return str(value)


def connect(args: argparse.Namespace, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
    """A channel to `args.target`: TLS when asked for (a CA or client certificate implies it), else plain."""
    options = _CHANNEL_OPTIONS if options is None else options
    ca, cert = _setting(args, "tls_ca", "PRIORLAB_TLS_CA"), _setting(args, "tls_cert", "PRIORLAB_CLIENT_CERT")
    key = _setting(args, "tls_key", "PRIORLAB_CLIENT_KEY")
    if not (getattr(args, "tls", False) or ca or cert):
        return grpc.insecure_channel(args.target, options=options)
    if bool(cert) != bool(key):
        raise SystemExit("priorlab: --tls-cert and --tls-key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,  # None: the system's roots
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    return grpc.secure_channel(args.target, credentials, options=options)


def call_metadata(args: argparse.Namespace, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...] | None:
    """The call's metadata: `authorization: Bearer <token>` when a token is set, and `extra`."""
    token_file = getattr(args, "token_file", None)  # the flag, then $PRIORLAB_TOKEN, then the file variable
    token = Path(token_file).read_text().strip() if token_file else os.environ.get("PRIORLAB_TOKEN", "")
    if not token and os.environ.get("PRIORLAB_TOKEN_FILE"):
        token = Path(os.environ["PRIORLAB_TOKEN_FILE"]).read_text().strip()
    pairs = ((("authorization", f"Bearer {token}"),) if token else ()) + extra
    return pairs or None


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
    with connect(args) as channel:
        try:
            stub = colorize_pb2_grpc.ColorizerStub(channel)
            response = stub.Colorize(request, timeout=args.timeout, metadata=call_metadata(args))
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    args.output.write_bytes(response.image)
    t = response.timings
    applied = f" T={response.temperature:.2f}" if response.HasField("temperature") else ""
    print(
        f"{args.output} {response.width}x{response.height} model={response.model} v{response.model_version} "
        f"checkpoint={response.checkpoint}{'' if response.trained else ' (UNTRAINED)'}"
        f"{applied}\n  decode {t.decode_ms:.1f} ms, triton {t.triton_ms:.1f} ms, "
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
    with connect(args, [("grpc.max_send_message_length", 64 << 20)]) as channel:
        try:
            stub = colorize_pb2_grpc.ColorizerStub(channel)
            response = stub.SuggestColors(request, timeout=args.timeout, metadata=call_metadata(args))
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


def restore_request(args: argparse.Namespace) -> restore_pb2.RestoreRequest:
    request = restore_pb2.RestoreRequest(
        image=args.input.read_bytes(),
        seed=args.seed,
        priority=args.priority,
        idempotency_key=args.idempotency_key,
        progress_every=args.progress_every,
        preview=False,
    )
    if args.task == "denoise":
        request.denoise.SetInParent()
        if args.sigma is not None:
            request.denoise.sigma = args.sigma
    elif args.task == "inpaint":
        if args.mask is None:
            raise SystemExit("inpaint needs --mask (white = known pixels)")
        request.inpaint.mask = args.mask.read_bytes()
        request.inpaint.style = _STYLES[args.style]
    elif args.task == "super_resolve":
        request.super_resolve.factor = args.factor
    else:
        request.jpeg.SetInParent()
    if args.iterations:
        request.fixed_iterations = args.iterations
    else:
        request.auto_stop.max_iterations = args.max_iterations
    return request


def _bar(progress: restore_pb2.Progress) -> str:
    width = max(10, min(40, shutil.get_terminal_size().columns - 50))
    done = round(width * progress.iteration / max(progress.max_iterations, 1))
    return (
        f"\r[{'#' * done}{'.' * (width - done)}] {progress.iteration}/{progress.max_iterations}"
        f" loss {progress.loss:.5f} eta {progress.eta_s:.0f}s "
    )


def follow(events: Iterable[restore_pb2.RestoreEvent], output: Path | None) -> int:
    """Draw the job's events on stderr (a `\\r`-redrawn bar); write the result to `output`."""
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "queued":
            q = event.queued
            print(f"job {event.job_id}: queued at {q.position} of {q.queue_length}", file=sys.stderr)
        elif kind == "started":
            s = event.started
            print(f"started on {s.worker} ({s.device}), attempt {s.attempt}", file=sys.stderr)
        elif kind == "progress":
            print(_bar(event.progress), end="", file=sys.stderr, flush=True)
        elif kind == "result":
            r = event.result
            if output is not None:
                output.write_bytes(r.image)
            stop = restore_pb2.StopReason.Name(r.stop_reason).removeprefix("STOP_REASON_").lower()
            print(
                f"\n{output or '(not written)'} {r.width}x{r.height}: iterate {r.chosen_iteration} of "
                f"{r.iterations_run} ({stop}) on {r.worker}, queued {r.timings.queued_ms / 1e3:.1f}s, "
                f"restore {r.timings.restore_ms / 1e3:.1f}s, total {r.timings.total_ms / 1e3:.1f}s",
                file=sys.stderr,
            )
            return 0
    return 1


def restore(args: argparse.Namespace) -> int:
    request = restore_request(args)
    metadata = call_metadata(args, *((("x-client-id", args.client_id),) if args.client_id else ()))
    with connect(args) as channel:
        stub = restore_pb2_grpc.RestorerStub(channel)
        try:
            if args.detach:
                reply = stub.SubmitRestore(request, timeout=args.timeout, metadata=metadata)
                print(reply.job_id)
                return 0
            # No deadline by default: DIP jobs run for minutes on a CPU. Ctrl-C cancels the job.
            events = stub.RestoreStream(request, timeout=args.job_timeout, metadata=metadata)
            return follow(events, args.output)
        except grpc.RpcError as e:
            print(f"\n{e.code().name}: {e.details()}", file=sys.stderr)
            return 1


def watch(args: argparse.Namespace) -> int:
    with connect(args) as channel:
        request = restore_pb2.WatchRestoreRequest(job_id=args.job_id)
        try:
            events = restore_pb2_grpc.RestorerStub(channel).WatchRestore(
                request, metadata=call_metadata(args)
            )
            return follow(events, args.output)
        except grpc.RpcError as e:
            print(f"\n{e.code().name}: {e.details()}", file=sys.stderr)
            return 1


def cancel(args: argparse.Namespace) -> int:
    with connect(args) as channel:
        request = restore_pb2.CancelRestoreRequest(job_id=args.job_id)
        try:
            stub = restore_pb2_grpc.RestorerStub(channel)
            reply = stub.CancelRestore(request, timeout=args.timeout, metadata=call_metadata(args))
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print("cancelled" if reply.cancelled else "already finished")
    return 0


def build_parser(default_target: str = DEFAULT_TARGET) -> argparse.ArgumentParser:
    """The client's command line (the README's command lines are checked against it)."""
    # Connection options after the command (`priorlab colorize --target HOST:PORT ...`): one parent
    # parser for every command, so they are defined once.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--target",
        default=default_target,
        help="gateway HOST:PORT (default: $PRIORLAB_TARGET, else %(default)s)",
    )
    connection.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    connection.add_argument("--tls", action="store_true", help="TLS with the system's CA roots")
    connection.add_argument("--tls-ca", help="TLS, trusting this PEM CA bundle (default: $PRIORLAB_TLS_CA)")
    connection.add_argument("--tls-cert", help="client certificate, PEM (mutual TLS; $PRIORLAB_CLIENT_CERT)")
    connection.add_argument("--tls-key", help="client certificate's key, PEM ($PRIORLAB_CLIENT_KEY)")
    connection.add_argument(
        "--token-file", help="file holding the bearer token (default: $PRIORLAB_TOKEN, $PRIORLAB_TOKEN_FILE)"
    )
    parser = argparse.ArgumentParser(prog="priorlab")
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("colorize", parents=[connection], help="colorize one image")
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
    r = commands.add_parser(
        "restore", parents=[connection], help="restore one image by Deep Image Prior (live progress)"
    )
    r.add_argument("task", choices=["denoise", "inpaint", "super_resolve", "jpeg"])
    r.add_argument("input", type=Path)
    r.add_argument("output", type=Path)
    r.add_argument("--sigma", type=float, help="denoise: noise std in 0..255 units (omit: blind)")
    r.add_argument("--mask", type=Path, help="inpaint: mask image, white = known pixels")
    r.add_argument("--style", choices=sorted(_STYLES), default="text", help="inpaint configuration")
    r.add_argument("--factor", type=int, default=4, help="super_resolve: 2, 4 or 8")
    r.add_argument("--iterations", type=int, default=0, help="fixed iteration count (default: auto stop)")
    r.add_argument("--max-iterations", type=int, default=0, help="cap of the auto stop")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--priority", type=int, default=0, help="> 0 high, 0 normal, < 0 low")
    r.add_argument("--progress-every", type=int, default=10)
    r.add_argument(
        "--client-id", default="", help="sent as x-client-id (the quota key when the gateway has no auth)"
    )
    r.add_argument("--job-timeout", type=float, default=None, help="deadline in seconds (cancels the job)")
    r.add_argument("--detach", action="store_true", help="submit, print the job id and exit")
    r.add_argument(
        "--idempotency-key", default="", help="a retried submit with the same key gets the same job back"
    )
    r.set_defaults(run=restore)
    w = commands.add_parser(
        "watch", parents=[connection], help="re-attach to a Restore job (replays it from the start)"
    )
    w.add_argument("job_id")
    w.add_argument("output", type=Path, nargs="?")
    w.set_defaults(run=watch)
    k = commands.add_parser("cancel", parents=[connection], help="cancel a Restore job")
    k.add_argument("job_id")
    k.set_defaults(run=cancel)
    s = commands.add_parser(
        "suggest", parents=[connection], help="suggest colours for one pixel (SIGGRAPH17)"
    )
    s.add_argument("input", type=Path)
    s.add_argument("x", type=int)
    s.add_argument("y", type=int)
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=suggest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(os.environ.get("PRIORLAB_TARGET", DEFAULT_TARGET)).parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
